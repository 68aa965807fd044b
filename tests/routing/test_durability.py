"""Acknowledged means durable: SIGKILL the server in the middle of a QoS 1 load, restart it,
and find every event that got a PUBACK in the log."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from tests.bridge.devices import connect, create_device, create_registry, make_jwt, new_key
from tests.conftest import Database, events_in_log, start_server, stop_server


def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir)
    create_registry(server, "reg-kill")
    keys = [new_key() for _ in range(4)]
    for i, key in enumerate(keys):
        create_device(server, "reg-kill", f"dev-kill-{i}", key)

    acknowledged: set[bytes] = set()
    lock = threading.Lock()
    devices = []
    for i, key in enumerate(keys):
        device = connect(server, "reg-kill", f"dev-kill-{i}", make_jwt(key), subscribe=False)
        device.client.reconnect_delay_set(60, 120)
        devices.append(device)

    stop = threading.Event()

    def publisher(index: int, device_client: mqtt.Client) -> None:
        sent = 0
        while not stop.is_set():
            payload = f"dev{index}-msg{sent}".encode()
            info = device_client.publish(f"/devices/dev-kill-{index}/events", payload, qos=1)
            sent += 1
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                return
            if info.is_published():
                with lock:
                    acknowledged.add(payload)
            else:
                return

    threads = [
        threading.Thread(target=publisher, args=(i, d.client), daemon=True)
        for i, d in enumerate(devices)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if len(acknowledged) >= 300:
                break
        time.sleep(0.05)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    for device in devices:
        device.client.loop_stop()
    with lock:
        acked = set(acknowledged)
    assert len(acked) >= 300, f"the load only got {len(acked)} acknowledgements before the kill"

    restarted = start_server(data_dir)
    try:
        logged = {data for _, data, _ in events_in_log(restarted, Database("sqlite://", None))}
    finally:
        stop_server(restarted)
    missing = acked - logged
    assert not missing, f"{len(missing)} acknowledged events were lost, e.g. {sorted(missing)[:3]}"
