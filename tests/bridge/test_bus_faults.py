"""Servers joined over NATS (`--bus`) through faults: a server that joins late or dies, and NATS
itself going away and coming back. Real `ironcore serve` processes on PostgreSQL, real NATS
(the outage on a nats-server of the test's own), paho-mqtt devices; leases of 1 s.
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from tests.bridge.devices import (
    Device,
    admin,
    block_device,
    create_device,
    create_registry,
    new_key,
    next_on,
    online,
    send_command,
)
from tests.conftest import (
    Database,
    PrivateNats,
    Server,
    need_service,
    start_peer,
    start_server,
    stop_server,
    wait_for,
)

SHARED_NATS = "nats://127.0.0.1:4222"
REG = "reg-faults"
LEASE = ["--bus-lease", "1"]


pytestmark = pytest.mark.databases("postgresql")


def gauge(server: Server, name: str) -> float | None:
    for line in httpx.get(f"{server.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def ready(server: Server) -> int:
    return httpx.get(f"{server.url}/readyz", timeout=5).status_code


def not_connected(server: Server, device_id: str) -> bool:
    r = send_command(server, REG, device_id, b"anyone?")
    if r.status_code == 200:
        return False
    error = r.json()["error"]
    assert error["status"] == "FAILED_PRECONDITION", r.text
    assert "is not connected" in error["message"]
    return True


def set_config(server: Server, device_id: str, data: bytes) -> None:
    with admin(server) as api:
        r = api.post(
            f"/registries/{REG}/devices/{device_id}:modifyCloudToDeviceConfig",
            json={"binaryData": base64.b64encode(data).decode()},
        )
    assert r.status_code == 200, r.text


def test_a_server_started_after_devices_connected_elsewhere_reaches_them(
    tmp_path: Path, database: Database
) -> None:
    """As in a rolling restart: the restarted server is a new one, which heard no device
    connect. The devices are on either process of a."""
    need_service("NATS", "127.0.0.1", 4222)
    a = start_server(
        tmp_path / "a", database, ["--bus", SHARED_NATS, *LEASE, "--mqtt-workers", "2"]
    )
    b: Server | None = None
    devices: list[Device] = []
    try:
        create_registry(a, REG)
        key = new_key()
        for index in range(3):
            create_device(a, REG, f"dev{index}", key)
            devices.append(online(a, REG, f"dev{index}", key))
        b = start_peer(a, tmp_path / "b", database, ["--bus", SHARED_NATS, *LEASE])
        for index, device in enumerate(devices):
            r = send_command(b, REG, f"dev{index}", b"from the newcomer")
            assert r.status_code == 200, r.text
            assert next_on(device, "/commands").payload == b"from the newcomer"
    finally:
        for device in devices:
            device.close()
        if b is not None:
            stop_server(b)
        stop_server(a)


def test_a_killed_server_stops_being_named_as_its_devices_holder(
    tmp_path: Path, database: Database
) -> None:
    need_service("NATS", "127.0.0.1", 4222)
    a = start_server(tmp_path / "a", database, ["--bus", SHARED_NATS, *LEASE])
    b: Server | None = None
    try:
        b = start_peer(a, tmp_path / "b", database, ["--bus", SHARED_NATS, *LEASE])
        create_registry(a, REG)
        key = new_key()
        create_device(a, REG, "dev", key)
        device = online(b, REG, "dev", key)
        wait_for(lambda: send_command(a, REG, "dev", b"x").status_code == 200, what="delivery")
        assert gauge(a, "ironcore_bus_servers") == 1.0
        b.process.kill()  # no word to anyone: its device's connection just breaks
        b.process.wait(timeout=10)
        device.client.loop_stop()
        wait_for(lambda: gauge(a, "ironcore_bus_servers") == 0.0, what="b's lease to expire")
        assert not_connected(a, "dev")
        assert "its 1 devices are taken as not connected" in a.log.read_text()
    finally:
        if b is not None and b.process.poll() is None:
            stop_server(b)
        stop_server(a)


def test_after_a_nats_outage_configs_blocks_and_duplicate_sessions_are_settled(
    tmp_path: Path, database: Database, private_nats: PrivateNats
) -> None:
    bus = ["--bus", private_nats.url, *LEASE]
    a = start_server(tmp_path / "a", database, bus)
    b: Server | None = None
    devices: list[Device] = []
    try:
        b = start_peer(a, tmp_path / "b", database, [*bus, "--mqtt-workers", "2"])
        create_registry(a, REG)
        key = new_key()
        for device_id in ("cfg", "blk", "dup"):
            create_device(a, REG, device_id, key)
        cfg, blk = online(b, REG, "cfg", key), online(b, REG, "blk", key)
        dup_on_a = online(a, REG, "dup", key)
        devices += [cfg, blk, dup_on_a]
        assert next_on(cfg, "/config").payload == b""
        wait_for(lambda: send_command(a, REG, "cfg", b"x").status_code == 200)
        wait_for(lambda: send_command(a, REG, "blk", b"x").status_code == 200)
        wait_for(lambda: send_command(b, REG, "dup", b"x").status_code == 200)

        private_nats.kill()
        wait_for(lambda: ready(a) == ready(b) == 503, what="/readyz to say the bus is down")
        for server in (a, b):
            r = httpx.get(f"{server.url}/readyz", timeout=5)
            assert r.status_code == 503 and r.json()["components"]["bus"] != "ok", r.text
        # Accepted (stored) but not heard by b: a command for b's device fails, saying why.
        set_config(a, "cfg", b"v2")
        block_device(a, REG, "blk")
        r = send_command(a, REG, "cfg", b"during the outage")
        assert r.status_code == 503, r.text
        assert "NATS" in r.json()["error"]["message"]
        # The same device on b too: a does not hear of it, so both sessions live on.
        dup_on_b = online(b, REG, "dup", key)
        devices.append(dup_on_b)
        assert dup_on_a.disconnects.empty()

        private_nats.start()
        wait_for(lambda: ready(a) == ready(b) == 200, what="/readyz once NATS is back")
        assert next_on(cfg, "/config").payload == b"v2"
        blk.wait_disconnect(timeout=10)
        dup_on_a.wait_disconnect(timeout=10)  # the older session
        dup_on_b.publish("/devices/dup/events", b"still here")
        assert dup_on_b.disconnects.empty()
        r = send_command(a, REG, "dup", b"to the newer session")
        assert r.status_code == 200, r.text
        assert next_on(dup_on_b, "/commands").payload == b"to the newer session"
        assert not_connected(a, "blk")
    finally:
        for device in devices:
            device.client.loop_stop()
        if b is not None:
            stop_server(b)
        stop_server(a)
