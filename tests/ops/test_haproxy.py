"""deploy/haproxy/haproxy.cfg in front of two real servers (PostgreSQL, the NATS bus, one
certificate, --mqtt-proxy-protocol): devices connect through HAProxy and each server records
the device's own address, the admin API answers through it, and a stopped server leaves the
rotation so that new devices reach the other."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.bridge.devices import (
    Device,
    admin,
    client_id,
    connect,
    create_device,
    create_registry,
    make_jwt,
    new_key,
    next_on,
)
from tests.conftest import Database, Server, stop_server, wait_for
from tests.keys import PrivateKey
from tests.ops.cluster import Cluster, Haproxy, start_haproxy

pytestmark = pytest.mark.databases("postgresql")
REG = "reg-balanced"


@pytest.fixture
def cluster(tmp_path: Path, database: Database) -> Iterator[Cluster]:
    # Debug: each server logs every device it accepts, with the address it recorded.
    running = Cluster(tmp_path, database, 2, ["--log-level", "debug"])
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()


@pytest.fixture
def haproxy(cluster: Cluster) -> Iterator[Haproxy]:
    running = start_haproxy(cluster)
    yield running
    running.stop()


def serving(cluster: Cluster, device: Device, device_id: str) -> int:
    """Which server (index) accepted the device, found by the address it logged: the device's
    own source port, not one of HAProxy's."""
    sock = device.client.socket()
    assert isinstance(sock, socket.socket)
    line = f"{client_id(REG, device_id)} connected from 127.0.0.1:{sock.getsockname()[1]}\n"

    def found() -> list[int]:
        return [i for i, s in enumerate(cluster.servers) if line in s.log.read_text()]

    where = wait_for(found, what=f"a server to log {line.strip()!r}")
    assert len(where) == 1, where
    return where[0]


def online(front: Server, device_id: str, key: PrivateKey) -> Device:
    device = connect(front, REG, device_id, make_jwt(key))
    assert next_on(device, "/config").payload == b""  # the subscription's current config
    return device


def test_devices_and_the_api_through_haproxy(cluster: Cluster, haproxy: Haproxy) -> None:
    front = haproxy.front(cluster)
    assert httpx.get(f"{front.url}/readyz", timeout=5).status_code == 200
    create_registry(front, REG)
    keys = {f"dev-{i}": new_key() for i in range(8)}
    for device_id, key in keys.items():
        create_device(front, REG, device_id, key)

    devices = {device_id: online(front, device_id, keys[device_id]) for device_id in list(keys)[:4]}
    try:
        where = {device_id: serving(cluster, d, device_id) for device_id, d in devices.items()}
        assert set(where.values()) == {0, 1}, f"HAProxy used one server only: {where}"
        for device_id, device in devices.items():
            device.publish(f"/devices/{device_id}/events", b"through the balancer")
        with admin(front) as api:
            listed = api.get(f"/registries/{REG}/devices").json()["devices"]
        assert {d["id"] for d in listed} == set(keys)

        stop_server(cluster.servers[0])
        haproxy.wait_status("ironcore1", "DOWN")
        for device_id in list(keys)[4:]:
            devices[device_id] = online(front, device_id, keys[device_id])
            assert serving(cluster, devices[device_id], device_id) == 1
        # The admin API still answers, from the server that is left.
        with admin(front) as api:
            got = api.get(f"/registries/{REG}/devices/dev-7")
        assert got.status_code == 200, got.text
    finally:
        for device in devices.values():
            device.close()
