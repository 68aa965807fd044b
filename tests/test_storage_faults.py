"""Storage faults with real servers: a PostgreSQL outage (a private server the test stops,
restarts and freezes) and a full disk under SQLite (a small tmpfs), then recovery.

What must hold: nothing is acknowledged (PUBACK, HTTP 200) that was not committed; the answers
say what failed (CONNACK 3, UNAVAILABLE 503, RESOURCE_EXHAUSTED 429) instead of 500 or a
silent close; /readyz answers in bounded time and names the component; the log has one line
per cause, not a traceback per device; everything recovers on its own.
"""

from __future__ import annotations

import base64
import errno
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ironcore.errors import ResourceExhausted
from ironcore.firmware.rollout import _write_durably
from tests.bridge.devices import (
    LOCATION,
    PROJECT,
    Device,
    admin,
    connect,
    create_device,
    create_registry,
    last_error,
    make_jwt,
    new_key,
)
from tests.conftest import (
    REQUIRE_SERVICES,
    Database,
    Server,
    free_port,
    start_server,
    stop_server,
    wait_for,
)
from tests.keys import PrivateKey
from tests.private_pg import PrivatePostgres

# Connect attempts while the database is down; their refusals must not each log a line.
ATTEMPTS = 8


def device_url(server: Server, registry: str, device: str) -> str:
    location = f"{server.url}/v1/projects/{PROJECT}/locations/{LOCATION}"
    return f"{location}/registries/{registry}/devices/{device}"


def publish_http(server: Server, registry: str, device: str, key: PrivateKey) -> httpx.Response:
    return httpx.post(
        f"{device_url(server, registry, device)}:publishEvent",
        json={"binaryData": base64.b64encode(b"over http").decode()},
        headers={"authorization": f"Bearer {make_jwt(key)}"},
        timeout=10,
    )


def readyz(server: Server) -> httpx.Response:
    return httpx.get(f"{server.url}/readyz", timeout=10)


def publish_event(device: Device, device_id: str, payload: bytes) -> None:
    """Publish a QoS 1 event and wait for its PUBACK."""
    device.publish(f"/devices/{device_id}/events", payload)


def dropped_unacknowledged(device: Device, device_id: str, payload: bytes) -> None:
    """Publish a QoS 1 event that cannot be stored: the server closes the connection, and no
    PUBACK came before."""
    info = device.client.publish(f"/devices/{device_id}/events", payload, qos=1)
    device.wait_disconnect()
    assert not info.is_published()


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()["error"]
    assert body["code"] == response.status_code, body
    return response.status_code, str(body["status"])


def test_postgresql_outage(tmp_path: Path, private_postgres: PrivatePostgres) -> None:
    server = start_server(tmp_path / "data", Database(private_postgres.url, None))
    try:
        create_registry(server, "outage")
        key = new_key()
        create_device(server, "outage", "steady", key)
        for n in range(ATTEMPTS):
            create_device(server, "outage", f"late-{n}", key)
        steady = connect(server, "outage", "steady", make_jwt(key))
        steady.client.reconnect_delay_set(60, 120)  # stays down once dropped: we look at it
        publish_event(steady, "steady", b"before")
        assert publish_http(server, "outage", "steady", key).status_code == 200

        private_postgres.stop()

        # No PUBACK for what could not be stored: the device is disconnected instead.
        dropped_unacknowledged(steady, "steady", b"during")
        # The HTTP bridge and the admin API say UNAVAILABLE.
        assert error_of(publish_http(server, "outage", "steady", key)) == (503, "UNAVAILABLE")
        with admin(server) as api:
            assert error_of(api.get("/registries/outage/devices/late-0")) == (503, "UNAVAILABLE")
        # Devices the server cannot check are told "server unavailable", once each.
        for n in range(ATTEMPTS):
            late = connect(server, "outage", f"late-{n}", make_jwt(key), wait=False)
            try:
                assert late.wait_connack() == 3
            finally:
                late.client.loop_stop()
        ready = readyz(server)
        assert ready.status_code == 503
        components = ready.json()["components"]
        assert "unavailable" in components["database"]
        assert (components["disk"], components["mqtt"]) == ("ok", "ok")
        assert server.process.poll() is None

        private_postgres.start()

        wait_for(lambda: readyz(server).status_code == 200, timeout=30, what="ready again")
        again = connect(server, "outage", "steady", make_jwt(key))
        publish_event(again, "steady", b"after")
        again.close()
        assert publish_http(server, "outage", "steady", key).status_code == 200
        # Why the device was dropped, kept through the outage and written once it was over.
        assert last_error(server, "outage", "steady", "unavailable")["code"] == 14
    finally:
        stop_server(server)
    log = server.log.read_text()
    refusals = log.count("CONNACK 3 (server unavailable)")
    assert 1 <= refusals < ATTEMPTS / 2, log
    assert "Traceback" not in log, log


def test_readyz_answers_when_the_database_hangs(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    server = start_server(tmp_path / "data", Database(private_postgres.url, None))
    try:
        private_postgres.freeze()
        try:
            ready = readyz(server)  # times out (httpx.ReadTimeout) if /readyz hangs
        finally:
            private_postgres.thaw()
        assert ready.status_code == 503
        assert ready.json() == {
            "status": "unavailable",
            "components": {"database": "no answer within 2 s", "disk": "ok", "mqtt": "ok"},
        }
        wait_for(lambda: readyz(server).status_code == 200, timeout=30, what="ready again")
    finally:
        stop_server(server)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, to fill up; the test is root (CI is) or it cannot mount one."""
    mount = tmp_path / "data"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        message = f"cannot mount a tmpfs: {done.stderr.decode().strip()}"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no room left."""
    ballast = directory / "ballast"
    with ballast.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    return ballast


def test_full_disk_under_sqlite(small_disk: Path) -> None:
    server = start_server(small_disk)
    try:
        # The data directory and the database's files are the server user's alone.
        assert stat.S_IMODE(small_disk.stat().st_mode) == 0o700
        for name in ("ironcore.db", "ironcore.db-wal", "ironcore.db-shm"):
            assert stat.S_IMODE((small_disk / name).stat().st_mode) == 0o600, name

        create_registry(server, "full")
        key = new_key()
        create_device(server, "full", "meter", key)
        meter = connect(server, "full", "meter", make_jwt(key))
        meter.client.reconnect_delay_set(60, 120)
        publish_event(meter, "meter", b"before")

        ballast = fill(small_disk)

        dropped_unacknowledged(meter, "meter", b"during")
        exhausted = (429, "RESOURCE_EXHAUSTED")
        assert error_of(publish_http(server, "full", "meter", key)) == exhausted
        with admin(server) as api:
            assert error_of(api.post("/registries/full/devices", json={"id": "new"})) == exhausted
            # Reads still work.
            assert api.get("/registries/full/devices/meter").status_code == 200
        ready = readyz(server)
        assert ready.status_code == 503
        components = ready.json()["components"]
        assert components["disk"] != "ok" and components["database"] == "ok", components
        assert server.process.poll() is None

        os.remove(ballast)

        with admin(server) as api:
            assert api.post("/registries/full/devices", json={"id": "new"}).status_code == 200
        wait_for(lambda: readyz(server).status_code == 200, timeout=10, what="ready again")
        again = connect(server, "full", "meter", make_jwt(key))
        publish_event(again, "meter", b"after")
        again.close()
        assert publish_http(server, "full", "meter", key).status_code == 200
    finally:
        stop_server(server)
    assert "Traceback" not in server.log.read_text()


def test_firmware_image_on_a_full_disk(small_disk: Path) -> None:
    ballast = fill(small_disk)
    with pytest.raises(ResourceExhausted, match="the disk is full"):
        _write_durably(small_disk / "firmware", "ab" * 32, b"\0" * 1_000_000)
    assert list((small_disk / "firmware").iterdir()) == []  # no partial file left taking room
    os.remove(ballast)
    _write_durably(small_disk / "firmware", "ab" * 32, b"\0" * 1_000_000)
    assert (small_disk / "firmware" / ("ab" * 32)).stat().st_size == 1_000_000


def test_a_server_started_with_the_database_out_of_reach_says_so(tmp_path: Path) -> None:
    """Exit status 1 and one line naming the unreachable database, not a traceback: the
    supervisor's log is where an operator looks first."""
    nobody = free_port()  # nothing listens there
    url = f"postgresql://postgres@127.0.0.1:{nobody}/test"
    args = [sys.executable, "-m", "ironcore", "serve", "--data-dir", str(tmp_path / "data")]
    args += ["--database-url", url, "--api-port", str(free_port())]
    args += ["--mqtt-port", str(free_port()), "--grpc-port", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONCORE_")}
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "ironcore cannot start: the database cannot be used" in output, output
    assert str(nobody) in output, output
    assert "Traceback" not in output, output
