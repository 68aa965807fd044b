"""`ironcore serve --mqtt-workers 2`: two processes accept MQTT connections on one port, and
everything a device and an operator see is the same as with one.

A real server (SQLite and PostgreSQL), real TLS, paho-mqtt 2 devices. Which process serves a
connection is read from /proc: the server-side socket whose peer is the device's local port,
and the process that holds it. The kernel spreads connections by a hash of their addresses, so
tests that need a device on a given process connect devices until one lands there.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

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
from tests.bridge.test_enforcement import issue_server_certificate, served_serial
from tests.conftest import (
    Database,
    Server,
    events_in_log,
    service_up,
    start_server,
    stop_server,
    wait_for,
)
from tests.keys import PrivateKey

REG = "reg-workers"
# Devices a test connects before it gives up on seeing both processes (chance 2^-(n-1)).
SPREAD_ATTEMPTS = 40


@pytest.fixture
def workers(tmp_path: Path, database: Database) -> Iterator[Server]:
    server = start_server(tmp_path / "data", database, ["--mqtt-workers", "2"])
    wait_for(lambda: len(processes(server)) == 2, what="the worker process")
    yield server
    stop_server(server)


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    fields = file.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def processes(server: Server) -> list[int]:
    """The server's processes that accept MQTT connections: the primary and its workers."""
    return [server.process.pid, *children(server.process.pid)]


def serving(server: Server, device: Device) -> int:
    """The pid of the server process holding this device's connection."""
    sock = device.client.socket()
    assert isinstance(sock, socket.socket)
    client_port = sock.getsockname()[1]
    inode = None
    with open("/proc/net/tcp") as file:
        for line in file.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (
                int(local.split(":")[1], 16) == server.mqtt_port
                and int(remote.split(":")[1], 16) == client_port
            ):
                inode = fields[9]
    assert inode is not None, "no server socket for the device's connection"
    for pid in processes(server):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError("no server process holds the device's connection")


def on_process(server: Server, device_id: str, key: PrivateKey, pid: int) -> Device:
    """The device connected, on the process `pid` (connecting again until it lands there)."""
    for _ in range(SPREAD_ATTEMPTS):
        device = online(server, REG, device_id, key)
        if serving(server, device) == pid:
            return device
        device.close()
        device.wait_disconnect()
    raise AssertionError(f"{device_id} never landed on process {pid}")


def metric(server: Server, name: str) -> float:
    scrape = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
        if sample.name == name
    )


def set_config(server: Server, device_id: str, data: bytes) -> dict[str, Any]:
    with admin(server) as api:
        response = api.post(
            f"/registries/{REG}/devices/{device_id}:modifyCloudToDeviceConfig",
            json={"binaryData": base64.b64encode(data).decode()},
        )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_devices_on_every_process_get_events_configs_commands_and_metrics(
    workers: Server, database: Database
) -> None:
    create_registry(workers, REG)
    key = new_key()
    devices: dict[str, Device] = {}
    pids: set[int] = set()
    try:
        for n in range(SPREAD_ATTEMPTS):
            device_id = f"dev-{n}"
            create_device(workers, REG, device_id, key)
            devices[device_id] = online(workers, REG, device_id, key)
            pids.add(serving(workers, devices[device_id]))
            if len(pids) == 2 and len(devices) >= 6:
                break
        assert pids == set(processes(workers)), "both processes serve devices"

        for device_id, device in devices.items():
            first = device.next_message()  # the current config, at once on SUBSCRIBE
            assert (first.topic, first.payload) == (f"/devices/{device_id}/config", b"")
            device.publish(f"/devices/{device_id}/events", device_id.encode())
        published = {data for _, data, _ in events_in_log(workers, database)}
        assert published == {device_id.encode() for device_id in devices}

        for device_id, device in devices.items():
            version = set_config(workers, device_id, b"v2 " + device_id.encode())["version"]
            message = device.next_message()
            assert (message.topic, message.payload) == (
                f"/devices/{device_id}/config",
                b"v2 " + device_id.encode(),
            )
            data = b"reboot " + device_id.encode()
            response = send_command(workers, REG, device_id, data, "ops")
            assert response.status_code == 200, response.text
            message = device.next_message()
            assert (message.topic, message.payload) == (
                f"/devices/{device_id}/commands/ops",
                b"reboot " + device_id.encode(),
            )

            def acked(device_id: str = device_id, version: str = version) -> bool:
                with admin(workers) as api:
                    got = api.get(f"/registries/{REG}/devices/{device_id}").json()
                return bool(
                    got["config"]["version"] == version and "deviceAckTime" in got["config"]
                )

            wait_for(acked, what=f"{device_id} acknowledging its config")

        # Each process writes its own devices' bookkeeping behind (about a second late).
        def booked() -> bool:
            epoch = "1970-01-01T00:00:00Z"
            with admin(workers) as api:
                got = [api.get(f"/registries/{REG}/devices/{d}").json() for d in devices]
            return all(
                g["lastEventTime"] != epoch and g["lastConfigSendTime"] != epoch for g in got
            )

        wait_for(booked, what="lastEventTime and lastConfigSendTime of every device")

        # /metrics adds the worker's figures to the primary's.
        assert metric(workers, "ironcore_mqtt_connected_devices") == len(devices)
        assert metric(workers, "ironcore_mqtt_messages_in_total") >= len(devices)
        assert metric(workers, "ironcore_mqtt_connects_total") >= len(devices)
    finally:
        for device in devices.values():
            device.close()


def test_a_device_connecting_to_the_other_process_closes_its_older_connection(
    workers: Server,
) -> None:
    create_registry(workers, REG)
    key = new_key()
    create_device(workers, REG, "dev", key)
    for first_pid in processes(workers):
        older = on_process(workers, "dev", key, first_pid)
        other = next(pid for pid in processes(workers) if pid != first_pid)
        newer: Device | None = None
        try:
            for _ in range(SPREAD_ATTEMPTS):
                newer = online(workers, REG, "dev", key)
                if serving(workers, newer) == other:
                    break
                # Same process: the plain hub already closed `older`; start over from `newer`.
                older.wait_disconnect(timeout=5)
                older.client.loop_stop()
                older, newer = newer, None
            assert newer is not None, "the device never landed on the other process"
            assert older.wait_disconnect(timeout=5) is not None
            last_error(workers, REG, "dev", "another active connection with the same device ID")
            newer.publish("/devices/dev/events", b"still here")
            assert newer.disconnects.empty()
            assert send_command(workers, REG, "dev", b"to the newer", "ops").status_code == 200
            assert next_on(newer, "/commands").payload == b"to the newer"
        finally:
            older.client.loop_stop()
            if newer is not None:
                newer.close()
                newer.wait_disconnect()


def test_blocking_and_disabling_mqtt_reach_devices_on_the_worker(workers: Server) -> None:
    create_registry(workers, REG)
    key = new_key()
    worker = next(pid for pid in processes(workers) if pid != workers.process.pid)
    for device_id in ("blocked", "other", "on-primary"):
        create_device(workers, REG, device_id, key)
    blocked = on_process(workers, "blocked", key, worker)
    other = on_process(workers, "other", key, worker)
    primary = on_process(workers, "on-primary", key, workers.process.pid)
    try:
        started = time.monotonic()
        block_device(workers, REG, "blocked")
        blocked.wait_disconnect(timeout=5)
        assert time.monotonic() - started < 1.0
        other.publish("/devices/other/events", b"not blocked")

        # The worker's cached registry is forgotten too: a device refused at once.
        started = time.monotonic()
        disable_mqtt(workers, REG)
        other.wait_disconnect(timeout=5)
        primary.wait_disconnect(timeout=5)
        assert time.monotonic() - started < 1.0
        for _ in range(6):  # some of these land on each process
            assert_refused(workers, REG, "other", key)
    finally:
        for device in (blocked, other, primary):
            device.client.loop_stop()


def test_a_worker_that_dies_is_started_again_and_its_devices_come_back(workers: Server) -> None:
    create_registry(workers, REG)
    key = new_key()
    create_device(workers, REG, "dev", key)
    worker = next(pid for pid in processes(workers) if pid != workers.process.pid)
    device = on_process(workers, "dev", key, worker)
    try:
        os.kill(worker, signal.SIGKILL)
        device.wait_disconnect(timeout=5)
        # The primary forgot the dead worker's devices: no command waits for it.
        r = send_command(workers, REG, "dev", b"anyone?", "ops")
        assert r.status_code == 400 and r.json()["error"]["status"] == "FAILED_PRECONDITION"
        restarted = wait_for(
            lambda: [pid for pid in processes(workers) if pid not in (workers.process.pid, worker)],
            timeout=15,
            what="a new worker",
        )
        assert "exited with status -9" in workers.log.read_text()
        device.client.loop_stop()
        back = on_process(workers, "dev", key, restarted[0])
        try:
            assert send_command(workers, REG, "dev", b"welcome back", "ops").status_code == 200
            assert next_on(back, "/commands").payload == b"welcome back"
        finally:
            back.close()
    finally:
        device.client.loop_stop()


def test_sighup_and_sigterm_reach_every_process(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", None, ["--mqtt-workers", "2"])
    try:
        wait_for(lambda: len(processes(server)) == 2, what="the worker process")
        all_pids = processes(server)
        create_registry(server, REG)
        key = new_key()
        devices = []
        for pid in all_pids:
            create_device(server, REG, f"dev-{pid}", key)
            devices.append(on_process(server, f"dev-{pid}", key, pid))

        new = issue_server_certificate(server.data_dir / "tls")
        os.kill(server.process.pid, signal.SIGHUP)
        # Every handshake, whichever process takes it, gets the new certificate.
        wait_for(
            lambda: all(served_serial(server) == new for _ in range(12)),
            what="the new certificate on every process",
        )
        for device, pid in zip(devices, all_pids, strict=True):
            device.publish(f"/devices/dev-{pid}/events", b"after the reload")

        assert stop_server(server) == 0
        for device in devices:
            device.wait_disconnect(timeout=5)
            device.client.loop_stop()
        assert not [pid for pid in all_pids if os.path.exists(f"/proc/{pid}")]
        log = server.log.read_text()
        assert "exited with status" not in log  # stopping workers is not a crash
        restarted = start_server(tmp_path / "data")
        try:
            for pid in all_pids:
                last_error(restarted, REG, f"dev-{pid}", "shutting down")
        finally:
            stop_server(restarted)
    finally:
        if server.process.poll() is None:
            stop_server(server)


def test_workers_flag_is_checked(tmp_path: Path) -> None:
    serve = [sys.executable, "-m", "ironcore", "serve", "--data-dir", str(tmp_path)]
    for bad in ("0", "65", "two"):
        result = subprocess.run(
            [*serve, "--mqtt-workers", bad],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2
        assert "--mqtt-workers" in result.stderr


def test_the_port_is_shared_only_with_workers(tmp_path: Path) -> None:
    """Without --mqtt-workers the port is not opened with SO_REUSEPORT: a second server on the
    same port fails to start instead of silently taking half the devices."""
    server = start_server(tmp_path / "one")
    try:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError):
                probe.bind(("127.0.0.1", server.mqtt_port))
    finally:
        stop_server(server)


def test_no_workers_without_an_mqtt_port(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", None, ["--mqtt-workers", "3", "--mqtt-port", "0"])
    try:
        assert children(server.process.pid) == []
        assert "no MQTT port is open, so no worker is started" in server.log.read_text()
    finally:
        assert stop_server(server) == 0


def test_workers_stop_and_the_ports_close_when_the_primary_is_killed(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", None, ["--mqtt-workers", "3"])
    try:
        wait_for(lambda: len(processes(server)) == 3, what="the worker processes")
        workers = children(server.process.pid)
        server.process.kill()
        server.process.wait(timeout=10)
        wait_for(
            lambda: not [pid for pid in workers if os.path.exists(f"/proc/{pid}")],
            timeout=15,
            what="the workers to exit",
        )
        assert "the primary process is gone" in server.log.read_text()
        # Nothing restarts it (that is the supervisor's job, docs/operations.md): the MQTT
        # and API ports are closed.
        assert not service_up("127.0.0.1", server.mqtt_port)
        assert not service_up("127.0.0.1", server.port)
    finally:
        if server.process.poll() is None:
            stop_server(server)
