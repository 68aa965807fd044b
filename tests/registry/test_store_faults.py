"""Storage faults as callers see them (`registry/store/faults.py`), the modes of the files the
server keeps its data in, and the pieces the outage tests (tests/test_storage_faults.py) rely
on: the rate-limited log and /readyz's bounded checks."""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
import stat
from pathlib import Path

import httpx
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from ironcore.api.ops import READY_SECONDS
from ironcore.errors import NotFound, ResourceExhausted, Unavailable
from ironcore.logs import RateLimited
from ironcore.registry.service import DeviceManager
from ironcore.registry.store import Store
from ironcore.registry.store.faults import storage_fault
from ironcore.runtime.inprocess import admin_api
from ironcore.runtime.primary import make_data_dir, private_key_files
from ironcore.settings import Settings


def sqlite_error(code: int, message: str) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code
    return error


def test_storage_faults_are_named() -> None:
    full = OperationalError("INSERT", {}, sqlite_error(13, "database or disk is full"))
    assert isinstance(storage_fault(full), ResourceExhausted)
    assert isinstance(storage_fault(OSError(errno.ENOSPC, "No space left")), ResourceExhausted)
    refused = OperationalError("SELECT 1", {}, ConnectionRefusedError(111, "refused"))
    assert isinstance(storage_fault(refused), Unavailable)
    assert isinstance(storage_fault(sqlite_error(5, "database is locked")), Unavailable)

    class PostgresDiskFull(Exception):
        sqlstate = "53100"

    class AdminShutdown(Exception):
        sqlstate = "57P01"

    assert isinstance(storage_fault(PostgresDiskFull("disk full")), ResourceExhausted)
    assert isinstance(storage_fault(AdminShutdown("terminating connection")), Unavailable)
    # Rules and bugs are not storage faults: they keep their own answer.
    duplicate = sqlite3.IntegrityError("UNIQUE constraint failed")
    duplicate.sqlite_errorcode = 19
    assert storage_fault(IntegrityError("INSERT", {}, duplicate)) is None
    assert storage_fault(NotFound("Device x not found")) is None
    assert storage_fault(ValueError("bad")) is None


async def test_sqlite_files_are_private(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'ironcore.db'}")
    await store.bridge.append_events([("t", b"x", "{}", 1)])
    await store.close()
    for name in ("ironcore.db", "ironcore.db-wal", "ironcore.db-shm"):
        if (tmp_path / name).exists():
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((tmp_path / "ironcore.db").stat().st_mode) == 0o600

    # A database made before (by an older ironcore) is tightened when it is opened.
    (tmp_path / "ironcore.db").chmod(0o644)
    store = await Store.open(f"sqlite:///{tmp_path / 'ironcore.db'}")
    await store.close()
    assert stat.S_IMODE((tmp_path / "ironcore.db").stat().st_mode) == 0o600


def test_data_directory_is_private(tmp_path: Path) -> None:
    made = tmp_path / "new" / "data"
    make_data_dir(made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    older = tmp_path / "older"
    older.mkdir(mode=0o755)
    older.chmod(0o755)
    make_data_dir(older)
    assert stat.S_IMODE(older.stat().st_mode) == 0o700


def test_key_files_are_private(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "tls").mkdir()
    ours = [tmp_path / "secret-key", tmp_path / "admin-token", tmp_path / "tls" / "ca.key"]
    operators = tmp_path / "elsewhere.key"
    for path in (*ours, operators):
        path.write_text("secret")
        path.chmod(0o644)
    settings = Settings(data_dir=tmp_path, tls_cert=tmp_path / "c.crt", tls_key=operators)
    with caplog.at_level(logging.WARNING):
        private_key_files(settings)
    for path in ours:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert f"{path} was mode 0644; made it 0600" in caplog.text
    # The operator's own file is theirs: said, not changed.
    assert stat.S_IMODE(operators.stat().st_mode) == 0o644
    assert f"{operators} is mode 0644" in caplog.text


def test_rate_limited_log_says_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.rate_limited")
    quiet = RateLimited(logger, interval=3600)
    with caplog.at_level(logging.WARNING, logger.name):
        assert quiet.warning("db", "database down: %s", "refused")
        assert not any(quiet.warning("db", "database down: %s", "refused") for _ in range(99))
        assert quiet.warning("disk", "disk full")  # another cause has its own line
    assert [r.getMessage() for r in caplog.records] == ["database down: refused", "disk full"]

    caplog.clear()
    every = RateLimited(logger, interval=0)
    with caplog.at_level(logging.WARNING, logger.name):
        every.warning("db", "one")
        every.warning("db", "two")
    assert [r.getMessage() for r in caplog.records] == ["one", "two"]

    caplog.clear()
    quiet._next["db"] = 0.0  # the interval is over
    with caplog.at_level(logging.WARNING, logger.name):
        quiet.warning("db", "database down again")
    assert caplog.records[0].getMessage() == (
        "database down again (99 more like it in the last 3600 s not logged)"
    )


@pytest.mark.databases("sqlite")
async def test_readyz_names_each_component_and_does_not_wait_for_a_hung_one(
    manager: DeviceManager,
) -> None:
    async def ok() -> None:
        return None

    async def hung() -> None:
        await asyncio.Event().wait()

    async def broken() -> None:
        raise Unavailable("the bus is unreachable")

    app = admin_api(
        manager,
        readiness={"database": manager.store.ping, "disk": ok, "mqtt": hung, "bus": broken},
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ironcore"
    ) as client:
        ready = await asyncio.wait_for(client.get("/readyz"), READY_SECONDS * 5)
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "unavailable",
        "components": {
            "database": "ok",
            "disk": "ok",
            "mqtt": f"no answer within {READY_SECONDS:g} s",
            "bus": "the bus is unreachable",
        },
    }
