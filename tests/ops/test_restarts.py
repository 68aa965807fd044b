"""Restarting and killing servers under load keeps every promise (issue 13).

Simulated devices publish QoS 1 events through HAProxy (deploy/haproxy/haproxy.cfg) to three
servers sharing PostgreSQL and the bus, and listen for their configs and commands, while the
test restarts the servers one after another with SIGTERM, or kills one with SIGKILL, and sends
commands, config changes and blocks through HAProxy (`tests.ops.orders`); and to one SQLite
server with MQTT workers whose primary is killed. Afterwards every PUBACKed event is in the log
and was delivered exactly once to a pull subscription created before the load, and every
device is publishing again; in the cluster, every command reached its device or got a clear
error, every device acknowledged its latest config, no blocked device is connected anywhere,
and every server reaches every connected device.

The two cluster tests share one cluster (starting it is a third of their time); each has a
registry, devices and subscription of its own and starts whatever server the other stopped.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bridge.devices import create_registry
from tests.conftest import (
    PG_URL,
    Database,
    Server,
    drop_schema,
    events_in_log,
    need_service,
    pg_host_port,
    service_up,
    start_server,
    stop_server,
    wait_for,
)
from tests.ops.cluster import Cluster, Haproxy, start_haproxy
from tests.ops.load import Load, check_durable, create_devices, drain, subscribe
from tests.ops.orders import (
    Orders,
    block,
    check_blocked,
    check_commands,
    check_configs,
    check_reached_everywhere,
)

REG = "reg-load"
DEVICES = 300
SUBSCRIPTION = "before-the-run"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Haproxy]]:
    """Three servers on a PostgreSQL schema of their own, with HAProxy in front."""
    need_service("PostgreSQL", *pg_host_port())
    schema = f"t_{uuid.uuid4().hex[:12]}"
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), Database(PG_URL, schema), 3)
    try:
        cluster.start_all()
        haproxy = start_haproxy(cluster)
        try:
            yield cluster, haproxy
        finally:
            haproxy.stop()
    finally:
        cluster.stop_all()
        drop_schema(schema)


@pytest.fixture
def cluster(shared: tuple[Cluster, Haproxy]) -> Cluster:
    """The shared cluster, every server running (one a test before stopped is started)."""
    cluster, haproxy = shared
    for index, server in enumerate(cluster.servers):
        if server.process.poll() is not None:
            cluster.start(index)
            haproxy.wait_status(f"ironcore{index + 1}", "UP")
    return cluster


@pytest.fixture
def haproxy(shared: tuple[Cluster, Haproxy]) -> Haproxy:
    return shared[1]


def load_through(haproxy: Haproxy, cluster: Cluster, registry: str) -> tuple[Server, Load]:
    """The registry, devices and subscription made through HAProxy, and the load started."""
    front = haproxy.front(cluster)
    create_registry(front, registry)
    keys = create_devices(front, registry, DEVICES)
    subscribe(front, registry)
    load = Load("127.0.0.1", haproxy.mqtt_port, front.ca_file, registry, keys)
    load.start()
    load.wait_acked(DEVICES * 3)
    return front, load


def logged(server: Server, database: Database) -> set[bytes]:
    return {data for _, data, _ in events_in_log(server, database)}


def check_orders(
    front: Server, live: list[Server], registry: str, orders: Orders, load: Load
) -> None:
    """What `tests.ops.orders` requires, once the orders stopped and the load goes on."""
    orders.stop()
    blocked = set(orders.unchanged)
    check_commands(orders.commands, load)
    check_configs(front, registry, set(load.keys) - blocked, orders.configs, load)
    check_blocked(live, registry, blocked, load)
    check_reached_everywhere(live, registry, load)


def test_a_rolling_restart_keeps_every_promise(cluster: Cluster, haproxy: Haproxy) -> None:
    registry = "reg-rolling"
    front, load = load_through(haproxy, cluster, registry)
    devices = sorted(load.keys)
    # One device is blocked while each server is down, one once all restarted.
    blocked = devices[-cluster.count - 1 :]
    orders = Orders(front, registry, devices, unchanged=blocked)
    try:
        for index in range(cluster.count):
            name = f"ironcore{index + 1}"
            before = len(load.acked())
            assert stop_server(cluster.servers[index]) == 0
            block(front, registry, blocked[index])
            haproxy.wait_status(name, "DOWN")
            # The devices of the stopped server go on through the others.
            load.wait_acked(before + DEVICES)
            cluster.start(index)
            haproxy.wait_status(name, "UP")
        # The last device to block is publishing (connected) too.
        load.wait_all_acked_since(time.monotonic(), but=blocked[:-1])
        block(front, registry, blocked[-1])
        check_orders(front, cluster.servers, registry, orders, load)
    finally:
        orders.stop()
        load.stop()
    # Devices moved: more connects than devices, through HAProxy, to the servers left.
    assert sum(load.connects.values()) > DEVICES
    events = logged(cluster.servers[0], cluster.database)
    check_durable(load.acked(), events, drain(front, registry))


def test_sigkill_of_one_server_keeps_every_promise(cluster: Cluster, haproxy: Haproxy) -> None:
    registry = "reg-killed"
    front, load = load_through(haproxy, cluster, registry)
    devices = sorted(load.keys)
    # One device is blocked while the killed server's devices move, one once they moved.
    blocked = devices[-2:]
    orders = Orders(front, registry, devices, unchanged=blocked)
    killed = cluster.servers[1]
    live = [cluster.servers[0], cluster.servers[2]]
    try:
        wait_for(lambda: len(orders.commands) >= 20, 30, "commands under way")
        # A command is QoS 0, at most once: one the killed server had written but the kernel
        # not yet sent dies with the process. None is under way at the moment of the kill.
        with orders.paused():
            check_commands(orders.commands, load)
            killed.process.send_signal(signal.SIGKILL)
            killed.process.wait(timeout=10)
        block(front, registry, blocked[0])
        haproxy.wait_status("ironcore2", "DOWN")
        load.wait_all_acked_since(time.monotonic(), but=blocked[:1])
        block(front, registry, blocked[1])
        check_orders(front, live, registry, orders, load)
    finally:
        orders.stop()
        load.stop()
    assert sum(load.connects.values()) > DEVICES, "no device had to move"
    events = logged(cluster.servers[0], cluster.database)
    check_durable(load.acked(), events, drain(front, registry))


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
