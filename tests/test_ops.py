"""Operating a real `ironcore serve` process: health, readiness, metrics, logs, the first
admin token, bad flags, and draining on SIGTERM without losing an acknowledged write."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ironcore.runtime.primary import DRAIN_SECONDS
from tests.conftest import Database, Server, free_port, start_server, stop_server

DEVICES = "/v1/projects/ops/locations/us-central1/registries/{registry}/devices"


def admin(server: Server) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=10
    )


def create_registry(client: httpx.Client, registry: str) -> str:
    response = client.post(
        "/v1/projects/ops/locations/us-central1/registries", json={"id": registry}
    )
    assert response.status_code == 200, response.text
    return DEVICES.format(registry=registry)


def log_entries(server: Server) -> list[dict[str, object]]:
    """Every line the process wrote, each parsed as a JSON object (fails on any other line)."""
    entries = []
    for line in server.log.read_text().splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


def test_healthz_readyz_and_metrics(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        # No token needed for probes and scrapers.
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready",
            "components": {"database": "ok", "disk": "ok", "mqtt": "ok"},
        }

        with admin(server) as client:
            devices = create_registry(client, "metered")
            assert client.post(devices, json={"id": "meter-1"}).status_code == 200
            for _ in range(5):
                assert client.get(f"{devices}/meter-1").status_code == 200
            assert client.get(f"{devices}/meter-2").status_code == 404
            assert client.post(devices, json={"id": "meter-1"}).status_code == 409
            unauthenticated = httpx.get(f"{server.url}{devices}/meter-1")
            assert unauthenticated.status_code == 401

        scrape = httpx.get(f"{server.url}/metrics")
        assert scrape.status_code == 200
        assert scrape.headers["content-type"].startswith("text/plain")
        samples = [
            s for family in text_string_to_metric_families(scrape.text) for s in family.samples
        ]

        def requests(method: str, code: str) -> float:
            return sum(
                s.value
                for s in samples
                if s.name == "ironcore_api_requests_total"
                and s.labels == {"method": method, "code": code}
            )

        assert requests("GetDevice", "200") == 5
        assert requests("GetDevice", "404") == 1
        assert requests("GetDevice", "401") == 1
        # POST routes are labelled by their method too (not "unmatched").
        assert requests("CreateDevice", "200") == 1
        assert requests("CreateDevice", "409") == 1
        assert requests("CreateDeviceRegistry", "200") == 1

        histogram = {
            (s.name, s.labels.get("le")): s.value
            for s in samples
            if s.name.startswith("ironcore_api_request_seconds")
            and s.labels.get("method") == "GetDevice"
        }
        assert histogram[("ironcore_api_request_seconds_count", None)] == 7
        assert histogram[("ironcore_api_request_seconds_bucket", "+Inf")] == 7
        assert 0 < histogram[("ironcore_api_request_seconds_sum", None)] < 7 * 5
        buckets = sorted(
            (float(le), v)
            for (name, le), v in histogram.items()
            if name.endswith("_bucket") and le is not None
        )
        assert len(buckets) > 5
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    finally:
        stop_server(server)


def test_json_logs_and_the_first_admin_token(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert not data_dir.exists()
    first = start_server(data_dir, extra=["--log-format", "json"])
    token_file = data_dir / "admin-token"
    try:
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert token_file.read_text().strip() == first.token
        with admin(first) as client:
            tokens = client.get("/ironcore/v1/tokens").json()["tokens"]
        assert [t["role"] for t in tokens] == ["owner"]
    finally:
        assert stop_server(first) == 0

    entries = log_entries(first)
    assert len(entries) >= 5
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        assert datetime.fromisoformat(str(entry["time"])).tzinfo is not None
        assert entry["level"] in ("debug", "info", "warning", "error", "critical")
    # (Migration 0014's name mentions admin tokens too.)
    [created] = [
        e
        for e in entries
        if "admin token" in str(e["message"]) and not str(e["logger"]).startswith("alembic")
    ]
    # It says where the token is.
    assert str(token_file) in str(created["message"]) and created["level"] == "warning"
    assert entries[-1]["message"] == "ironcore stopped"

    # A second start on the same data directory keeps the token and makes no other.
    before = token_file.stat()
    second = start_server(data_dir)
    try:
        assert second.token == first.token
        after = token_file.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        with admin(second) as client:
            tokens = client.get("/ironcore/v1/tokens").json()["tokens"]
        assert [(t["id"], t["role"]) for t in tokens] == [(tokens[0]["id"], "owner")]
        assert first.token.startswith(f"ic_{tokens[0]['id']}_")
        assert "admin token" not in second.log.read_text()
    finally:
        assert stop_server(second) == 0


def serve_with_bad_flag(tmp_path: Path, *flag: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONCORE_")}
    command = [sys.executable, "-m", "ironcore", "serve", "--data-dir", str(tmp_path / "data")]
    command += ["--api-port", str(free_port()), "--mqtt-port", str(free_port()), *flag]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        (("--log-format", "xml"), "must be text or json"),
        (("--log-level", "loud"), "must be debug, info, warning"),
    ],
)
def test_bad_log_flags_are_refused(tmp_path: Path, flag: tuple[str, str], says: str) -> None:
    done = serve_with_bad_flag(tmp_path, *flag)
    assert done.returncode != 0
    assert flag[0] in done.stderr and says in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr
    # Refused before anything was created.
    assert not (tmp_path / "data").exists()


# Draining


@dataclass
class Outcome:
    create: bool
    device_id: str
    status: int | None
    error: BaseException | None
    finished: float


# What a client may see from a server that is going away: no response at all. A timeout or any
# HTTP status other than 200 is a failure.
NO_RESPONSE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
CONCURRENCY = 200


async def load(server: Server, devices: str, seeds: int) -> tuple[list[Outcome], float]:
    """Keep CONCURRENCY GetDevice/CreateDevice requests in flight; SIGTERM the server once it is
    busy; stop each worker at its first request without a response."""
    outcomes: list[Outcome] = []
    busy = asyncio.Event()
    numbers = itertools.count()
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.token}"},
        limits=limits,
        timeout=DRAIN_SECONDS + 10,
    ) as client:

        async def worker() -> None:
            while (n := next(numbers)) < 20 * CONCURRENCY:
                create = n % 2 == 0
                device_id = f"new-{n}" if create else f"seed-{n % seeds}"
                try:
                    if create:
                        response = await client.post(devices, json={"id": device_id})
                    else:
                        response = await client.get(f"{devices}/{device_id}")
                except NO_RESPONSE as error:
                    outcomes.append(Outcome(create, device_id, None, error, time.time()))
                    return
                outcomes.append(Outcome(create, device_id, response.status_code, None, time.time()))
                if len(outcomes) >= CONCURRENCY:
                    busy.set()

        workers = [asyncio.create_task(worker()) for _ in range(CONCURRENCY)]
        await asyncio.wait_for(busy.wait(), timeout=30)
        signalled = time.time()
        server.process.send_signal(signal.SIGTERM)
        await asyncio.gather(*workers)
    return outcomes, signalled


def test_sigterm_drains_and_acknowledged_writes_survive(tmp_path: Path, database: Database) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, database, extra=["--log-format", "json"])
    seeds = 20
    try:
        with admin(server) as client:
            devices = create_registry(client, "drain")
            for i in range(seeds):
                assert client.post(devices, json={"id": f"seed-{i}"}).status_code == 200

        outcomes, signalled = asyncio.run(load(server, devices, seeds))
        code = server.process.wait(timeout=DRAIN_SECONDS + 10)
        stopped = time.time()
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert code == 0
    assert stopped - signalled < DRAIN_SECONDS

    statuses = {o.status for o in outcomes}
    assert statuses <= {200, None}, [
        (o.device_id, o.status) for o in outcomes if o.status not in (200, None)
    ]
    assert all(o.error is None or isinstance(o.error, NO_RESPONSE) for o in outcomes)
    # The server was busy when it was told to stop, and requests it had taken still finished.
    entries = log_entries(server)
    shutdown_began = min(
        datetime.fromisoformat(str(e["time"])).timestamp()
        for e in entries
        if e["message"] == "Shutting down"  # uvicorn's, when it stops accepting
    )
    assert any(o.status == 200 and o.finished > shutdown_began for o in outcomes)
    assert any(o.status is None for o in outcomes)  # and then it stopped taking new ones

    acknowledged = {o.device_id for o in outcomes if o.create and o.status == 200}
    assert len(acknowledged) >= CONCURRENCY // 4

    restarted = start_server(data_dir, database)
    try:
        with admin(restarted) as client:
            stored: set[str] = set()
            token = ""
            while True:
                page = client.get(devices, params={"pageSize": 500, "pageToken": token}).json()
                stored |= {d["id"] for d in page.get("devices", [])}
                token = page.get("nextPageToken", "")
                if not token:
                    break
        assert acknowledged <= stored, sorted(acknowledged - stored)[:10]
        assert {f"seed-{i}" for i in range(seeds)} <= stored
    finally:
        assert stop_server(restarted) == 0
