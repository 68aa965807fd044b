"""Events from MQTT and HTTP devices reach a pull subscription and `ironcore events tail`."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import httpx

from tests.bridge.devices import PROJECT, connect, create_device, create_registry, make_jwt, new_key
from tests.conftest import Server


def test_device_events_reach_subscription_and_tail(server: Server) -> None:
    create_registry(server, "reg-pubsub")
    key = new_key()
    create_device(server, "reg-pubsub", "dev-pubsub", key)
    headers = {"Authorization": f"Bearer {server.token}"}
    api = f"{server.url}/v1/projects/{PROJECT}"
    r = httpx.put(
        f"{api}/subscriptions/all-events",
        json={"topic": f"projects/{PROJECT}/topics/events"},
        headers=headers,
    )
    assert r.status_code == 200, r.text

    env = {**os.environ, "IRONCORE_TOKEN": server.token}
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ironcore",
            "--server",
            server.url,
            "--project",
            PROJECT,
            "events",
            "tail",
            "events",
            "--count",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    # The tail starts from "now": publish only once it says it is listening.
    assert tail.stderr is not None
    assert "tailing" in tail.stderr.readline().decode()

    device = connect(server, "reg-pubsub", "dev-pubsub", make_jwt(key))
    try:
        device.publish("/devices/dev-pubsub/events", b"from-mqtt")
    finally:
        device.close()
    registry = f"{server.url}/v1/projects/{PROJECT}/locations/us-central1/registries/reg-pubsub"
    url = f"{registry}/devices/dev-pubsub"
    r = httpx.post(
        f"{url}:publishEvent",
        json={"binary_data": base64.b64encode(b"from-http").decode()},
        headers={"Authorization": f"Bearer {make_jwt(key)}"},
    )
    assert r.status_code == 200, r.text

    stdout, stderr = tail.communicate(timeout=20)
    lines = stdout.decode().strip().splitlines()
    assert tail.returncode == 0, stderr.decode()
    assert [line.split(" ", 2)[1:] for line in lines] == [
        ["dev-pubsub", "from-mqtt"],
        ["dev-pubsub", "from-http"],
    ]

    r = httpx.post(
        f"{api}/subscriptions/all-events:pull", json={"maxMessages": 10}, headers=headers
    )
    received = r.json()["receivedMessages"]
    assert [base64.b64decode(m["message"]["data"]) for m in received] == [
        b"from-mqtt",
        b"from-http",
    ]
    assert received[0]["message"]["attributes"]["deviceId"] == "dev-pubsub"
    assert received[0]["message"]["attributes"]["deviceRegistryId"] == "reg-pubsub"
    r = httpx.post(
        f"{api}/subscriptions/all-events:acknowledge",
        json={"ackIds": [m["ackId"] for m in received]},
        headers=headers,
    )
    assert r.status_code == 200
    r = httpx.post(
        f"{api}/subscriptions/all-events:pull", json={"maxMessages": 10}, headers=headers
    )
    assert r.json() == {}
