"""`Database.write_sync`: a write transaction run with a synchronous connection (on a SQLite
file, in one thread call), which carries the acting call's audit entry as `write()` does, on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from sqlalchemy import Connection, func, insert, select

from ironcore.registry.store import Store, audit
from ironcore.registry.store.schema import audit_log, registries


def actor() -> audit.Actor:
    return audit.Actor(
        wire="rest",
        principal="adminToken:t1",
        authentication="adminToken",
        address="127.0.0.1",
        method="CreateDeviceRegistry",
        resource="projects/p1/locations/us-central1/registries",
        fields={"body": {"id": "r1", "privateKey": "secret"}},
    )


def add_registry(registry_id: str) -> Any:
    def work(conn: Connection) -> int:
        row = {
            "project": "p1",
            "location": "us-central1",
            "registry_id": registry_id,
            "body": {},
            "created_at": 1,
        }
        return int(conn.execute(insert(registries).returning(registries.c.pk), row).scalar_one())

    return work


async def count(store: Store, table: Any) -> int:
    async with store.read() as conn:
        found = await conn.scalar(select(func.count()).select_from(table))
    assert isinstance(found, int)
    return found


async def test_the_work_and_its_entry_commit_together(store: Store) -> None:
    token = audit.acting(actor())
    try:
        pk = await store.write_sync(add_registry("r1"))
    finally:
        audit.done(token)
    assert pk >= 1
    assert await count(store, registries) == 1
    async with store.read() as conn:
        [entry] = (await conn.execute(select(audit_log))).all()
    assert (entry.method, entry.project, entry.status) == ("CreateDeviceRegistry", "p1", "OK")
    detail = entry.detail if isinstance(entry.detail, dict) else json.loads(entry.detail)
    assert detail["request"] == {"body": {"id": "r1"}}
    # Nobody acting: a change without an entry (the server's own bookkeeping).
    await store.write_sync(add_registry("r2"))
    assert (await count(store, registries), await count(store, audit_log)) == (2, 1)


async def test_a_failed_work_leaves_neither_its_change_nor_an_entry(store: Store) -> None:
    def fails(conn: Connection) -> None:
        add_registry("r1")(conn)
        raise ValueError("refused after its insert")

    token = audit.acting(actor())
    try:
        with pytest.raises(ValueError, match="refused after its insert"):
            await store.write_sync(fails)
    finally:
        audit.done(token)
    assert (await count(store, registries), await count(store, audit_log)) == (0, 0)


@pytest.mark.databases("sqlite")
async def test_a_cancelled_caller_holds_the_writers_turn_until_its_thread_ends(
    store: Store,
) -> None:
    """A thread cannot be stopped: the next writer must not begin while it still works."""
    release, started = threading.Event(), threading.Event()

    def slow(conn: Connection) -> int:
        started.set()
        assert release.wait(10)
        return int(add_registry("r1")(conn))

    first = asyncio.ensure_future(store.write_sync(slow))
    assert await asyncio.to_thread(started.wait, 10)
    first.cancel()
    second = asyncio.ensure_future(store.write_sync(add_registry("r2")))
    await asyncio.sleep(0.2)
    assert not first.done() and not second.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first, 10)
    await asyncio.wait_for(second, 10)
    # The cancelled caller's transaction still committed: its thread ran to the end.
    assert await count(store, registries) == 2
