"""Restarting and killing servers under load loses nothing acknowledged (issue 13).

Simulated devices publish QoS 1 events through HAProxy (deploy/haproxy/haproxy.cfg) to three
servers sharing PostgreSQL and the bus, while the test restarts the servers one after another
with SIGTERM, or kills one with SIGKILL; and to one SQLite server with MQTT workers whose
primary is killed. Afterwards every PUBACKed event is in the log and was delivered exactly once
to a pull subscription created before the load, and every device is publishing again.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bridge.devices import create_registry
from tests.conftest import (
    Database,
    Server,
    events_in_log,
    service_up,
    start_server,
    stop_server,
    wait_for,
)
from tests.ops.cluster import Cluster, Haproxy, start_haproxy
from tests.ops.load import Load, check_durable, create_devices, drain, subscribe

REG = "reg-load"
DEVICES = 60
SUBSCRIPTION = "before-the-run"


@pytest.fixture
def cluster(tmp_path: Path, database: Database) -> Iterator[Cluster]:
    running = Cluster(tmp_path, database, 3)
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


def load_through(haproxy: Haproxy, cluster: Cluster) -> tuple[Server, Load]:
    """The registry, devices and subscription made through HAProxy, and the load started."""
    front = haproxy.front(cluster)
    create_registry(front, REG)
    keys = create_devices(front, REG, DEVICES)
    subscribe(front, SUBSCRIPTION)
    load = Load("127.0.0.1", haproxy.mqtt_port, front.ca_file, REG, keys)
    load.start()
    load.wait_acked(DEVICES * 3)
    return front, load


def logged(server: Server, database: Database) -> set[bytes]:
    return {data for _, data, _ in events_in_log(server, database)}


@pytest.mark.databases("postgresql")
def test_a_rolling_restart_loses_nothing_acknowledged(
    cluster: Cluster, haproxy: Haproxy, database: Database
) -> None:
    front, load = load_through(haproxy, cluster)
    try:
        for index in range(cluster.count):
            name = f"ironcore{index + 1}"
            before = len(load.acked())
            assert stop_server(cluster.servers[index]) == 0
            haproxy.wait_status(name, "DOWN")
            # The devices of the stopped server go on through the others.
            load.wait_acked(before + DEVICES)
            cluster.start(index)
            haproxy.wait_status(name, "UP")
        load.wait_all_acked_since(time.monotonic())
    finally:
        load.stop()
    acked = load.acked()
    # Devices moved: more connects than devices, through HAProxy, to the servers left.
    assert sum(load.connects.values()) > DEVICES
    check_durable(acked, logged(cluster.servers[0], database), drain(front, SUBSCRIPTION))


@pytest.mark.databases("postgresql")
def test_sigkill_of_one_server_loses_nothing_acknowledged(
    cluster: Cluster, haproxy: Haproxy, database: Database
) -> None:
    front, load = load_through(haproxy, cluster)
    try:
        killed = cluster.servers[1]
        killed.process.send_signal(signal.SIGKILL)
        killed.process.wait(timeout=10)
        haproxy.wait_status("ironcore2", "DOWN")
        load.wait_all_acked_since(time.monotonic())
    finally:
        load.stop()
    assert sum(load.connects.values()) > DEVICES, "no device had to move"
    check_durable(load.acked(), logged(cluster.servers[0], database), drain(front, SUBSCRIPTION))


def test_sigkill_of_the_primary_with_workers_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, None, ["--mqtt-workers", "2"])
    try:
        create_registry(server, REG)
        keys = create_devices(server, REG, DEVICES)
        subscribe(server, SUBSCRIPTION)
        load = Load("127.0.0.1", server.mqtt_port, server.ca_file, REG, keys)
        load.start()
        try:
            load.wait_acked(DEVICES * 5)
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(timeout=10)
            # The workers stop with their primary and the port closes: nobody answers the
            # devices until the server is started again.
            port = server.mqtt_port
            wait_for(lambda: not service_up("127.0.0.1", port), 15, "the workers to close the port")
            server = start_server(data_dir, None, ["--mqtt-workers", "2"], (server.port, port))
            load.wait_all_acked_since(time.monotonic())
        finally:
            load.stop()
        sqlite = Database(f"sqlite:///{data_dir / 'ironcore.db'}", None)
        check_durable(load.acked(), logged(server, sqlite), drain(server, SUBSCRIPTION))
    finally:
        if server.process.poll() is None:
            stop_server(server)
