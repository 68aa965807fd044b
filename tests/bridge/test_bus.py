"""Two separate `ironcore serve` processes sharing one PostgreSQL database, joined over NATS
(`--bus`): what an operator does through one server reaches devices connected to the other.

Real PostgreSQL, real NATS, real TLS and paho-mqtt 2 devices. Each server has a data directory
(and so a local CA) of its own; a device trusts the CA of the server it connects to.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bridge.devices import (
    Device,
    admin,
    assert_refused,
    block_device,
    create_device,
    create_registry,
    disable_mqtt,
    last_error,
    new_key,
    next_on,
    online,
    send_command,
)
from tests.conftest import (
    Database,
    Server,
    free_port,
    need_service,
    start_peer,
    start_server,
    stop_server,
    wait_for,
)

NATS_URL = "nats://127.0.0.1:4222"
REG = "reg-bus"


pytestmark = pytest.mark.databases("postgresql")


@pytest.fixture(params=[1, 2], ids=["b-1-process", "b-2-processes"])
def servers(
    tmp_path: Path, database: Database, request: pytest.FixtureRequest
) -> Iterator[tuple[Server, Server]]:
    """Servers a and b; b with `--mqtt-workers 2` too, where a device lands on either of its
    processes (b's primary answers for its worker)."""
    need_service("NATS", "127.0.0.1", 4222)
    first = start_server(tmp_path / "a", database, ["--bus", NATS_URL])
    second: Server | None = None
    try:
        workers = ["--mqtt-workers", str(request.param)]
        second = start_peer(first, tmp_path / "b", database, ["--bus", NATS_URL, *workers])
        yield first, second
    finally:
        if second is not None:
            stop_server(second)
        stop_server(first)


def test_commands_and_configs_through_one_server_reach_devices_on_the_other(
    servers: tuple[Server, Server],
) -> None:
    a, b = servers
    create_registry(a, REG)
    key = new_key()
    create_device(a, REG, "dev", key)
    create_device(a, REG, "offline", key)
    device = online(b, REG, "dev", key)
    try:
        assert next_on(device, "/config").payload == b""
        # The connect reaches the other server over NATS a moment later; until then the
        # command is refused (and not delivered), as for a device not connected yet.
        wait_for(lambda: send_command(a, REG, "dev", b"reboot").status_code == 200, what="delivery")
        assert next_on(device, "/commands").payload == b"reboot"

        r = send_command(a, REG, "offline", b"reboot")
        assert r.status_code == 400 and r.json()["error"]["status"] == "FAILED_PRECONDITION"

        with admin(a) as api:
            r = api.post(
                f"/registries/{REG}/devices/dev:modifyCloudToDeviceConfig",
                json={"binaryData": base64.b64encode(b"v2").decode()},
            )
        assert r.status_code == 200, r.text
        assert next_on(device, "/config").payload == b"v2"
    finally:
        device.close()


def test_a_device_connecting_to_the_other_server_closes_its_older_connection(
    servers: tuple[Server, Server],
) -> None:
    a, b = servers
    create_registry(a, REG)
    key = new_key()
    create_device(a, REG, "dev", key)
    older = online(a, REG, "dev", key)
    newer: Device | None = None
    try:
        newer = online(b, REG, "dev", key)
        older.wait_disconnect(timeout=5)
        last_error(a, REG, "dev", "another active connection with the same device ID")
        newer.publish("/devices/dev/events", b"still here")
        assert newer.disconnects.empty()
        # The older connection closed when the first server heard of the newer one.
        r = send_command(a, REG, "dev", b"to the newer")
        assert r.status_code == 200, r.text
        assert next_on(newer, "/commands").payload == b"to the newer"
    finally:
        older.client.loop_stop()
        if newer is not None:
            newer.close()


def test_blocking_and_disabling_through_one_server_disconnect_on_the_other(
    servers: tuple[Server, Server],
) -> None:
    a, b = servers
    create_registry(a, REG)
    key = new_key()
    create_device(a, REG, "blocked", key)
    create_device(a, REG, "other", key)
    blocked, other = online(b, REG, "blocked", key), online(b, REG, "other", key)
    try:
        started = time.monotonic()
        block_device(a, REG, "blocked")
        blocked.wait_disconnect(timeout=5)
        assert time.monotonic() - started < 1.0
        other.publish("/devices/other/events", b"not blocked")

        started = time.monotonic()
        disable_mqtt(a, REG)
        other.wait_disconnect(timeout=5)
        assert time.monotonic() - started < 1.0
        # The other server's cached registry was forgotten too: refused at once.
        assert_refused(b, REG, "other", key)
    finally:
        blocked.client.loop_stop()
        other.client.loop_stop()


@pytest.mark.parametrize("flag", ["--bus", "--nats-url"])
def test_no_nats_at_start_is_a_clear_error(tmp_path: Path, flag: str) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    ports = ["--api-port", str(free_port()), "--mqtt-port", str(free_port())]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ironcore",
            "serve",
            "--data-dir",
            str(tmp_path),
            flag,
            dead,
            *ports,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"ironcore cannot start: no NATS answers at {flag} {dead}" in result.stderr
    assert "Traceback" not in result.stderr
