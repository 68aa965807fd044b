"""Topics backed by NATS JetStream: events from devices are stored in the stream (with Cloud
IoT Core's attributes as headers) before the device gets its acknowledgement."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from ironcore.routing.nats import stream_name, subject
from tests.bridge.devices import PROJECT, connect, create_device, create_registry, make_jwt, new_key
from tests.conftest import Server, need_service, start_server, stop_server

NATS_URL = "nats://127.0.0.1:4222"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    need_service("NATS", "127.0.0.1", 4222)
    running = start_server(tmp_path / "data", extra=["--nats-url", NATS_URL])
    yield running
    stop_server(running)


async def read_stream(topic: str, count: int) -> list[tuple[bytes, dict[str, str]]]:
    client = await nats.connect(NATS_URL)
    try:
        js = client.jetstream()
        consumer = await js.pull_subscribe(subject(topic), durable=None, stream=stream_name(topic))
        messages = await consumer.fetch(count, timeout=5)
        for message in messages:
            await message.ack()
        return [(m.data, dict(m.headers or {})) for m in messages]
    finally:
        await client.close()


async def delete_stream(topic: str) -> None:
    client = await nats.connect(NATS_URL)
    try:
        await client.jetstream().delete_stream(stream_name(topic))
    finally:
        await client.close()


def test_device_events_land_in_jetstream(server: Server) -> None:
    topic_id = f"nats-{uuid.uuid4().hex[:8]}"
    topic = f"projects/{PROJECT}/topics/{topic_id}"
    headers = {"Authorization": f"Bearer {server.token}"}
    r = httpx.put(f"{server.url}/v1/{topic}", json={"backend": "nats"}, headers=headers)
    assert r.status_code == 200, r.text
    try:
        create_registry(server, "reg-nats", eventNotificationConfigs=[{"pubsubTopicName": topic}])
        key = new_key()
        created = create_device(server, "reg-nats", "dev-nats", key)
        device = connect(server, "reg-nats", "dev-nats", make_jwt(key))
        try:
            device.publish("/devices/dev-nats/events/sensors", b"from-mqtt")
        finally:
            device.close()
        location = f"{server.url}/v1/projects/{PROJECT}/locations/us-central1"
        r = httpx.post(
            f"{location}/registries/reg-nats/devices/dev-nats:publishEvent",
            json={"binary_data": base64.b64encode(b"from-http").decode()},
            headers={"Authorization": f"Bearer {make_jwt(key)}"},
        )
        assert r.status_code == 200, r.text

        messages = asyncio.run(read_stream(topic, 2))
        assert [data for data, _ in messages] == [b"from-mqtt", b"from-http"]
        assert messages[0][1] == {
            "deviceId": "dev-nats",
            "deviceNumId": created["numId"],
            "deviceRegistryId": "reg-nats",
            "deviceRegistryLocation": "us-central1",
            "projectId": PROJECT,
            "subFolder": "sensors",
        }
        r = httpx.put(
            f"{server.url}/v1/projects/{PROJECT}/subscriptions/pull-nats",
            json={"topic": topic},
            headers=headers,
        )
        assert r.status_code == 400 and r.json()["error"]["status"] == "FAILED_PRECONDITION"
    finally:
        asyncio.run(delete_stream(topic))


def test_nats_topic_needs_nats_url(tmp_path: Path) -> None:
    server = start_server(tmp_path / "plain")
    try:
        r = httpx.put(
            f"{server.url}/v1/projects/{PROJECT}/topics/wants-nats",
            json={"backend": "nats"},
            headers={"Authorization": f"Bearer {server.token}"},
        )
        assert r.status_code == 400 and r.json()["error"]["status"] == "FAILED_PRECONDITION"
        assert "--nats-url" in r.json()["error"]["message"]
    finally:
        stop_server(server)


def test_sink_down_means_503_and_no_puback(server: Server) -> None:
    """Back-pressure, not loss: when JetStream cannot store an event, the HTTP bridge answers
    503 and the MQTT bridge withholds the PUBACK (the device keeps the message)."""
    topic_id = f"nats-down-{uuid.uuid4().hex[:8]}"
    topic = f"projects/{PROJECT}/topics/{topic_id}"
    headers = {"Authorization": f"Bearer {server.token}"}
    r = httpx.put(f"{server.url}/v1/{topic}", json={"backend": "nats"}, headers=headers)
    assert r.status_code == 200, r.text
    create_registry(server, "reg-down", eventNotificationConfigs=[{"pubsubTopicName": topic}])
    key = new_key()
    create_device(server, "reg-down", "dev-down", key)
    # The stream goes away: JetStream can no longer acknowledge anything for this topic.
    asyncio.run(delete_stream(topic))

    location = f"{server.url}/v1/projects/{PROJECT}/locations/us-central1"
    r = httpx.post(
        f"{location}/registries/reg-down/devices/dev-down:publishEvent",
        json={"binary_data": base64.b64encode(b"lost?").decode()},
        headers={"Authorization": f"Bearer {make_jwt(key)}"},
        timeout=30,
    )
    assert r.status_code == 503 and r.json()["error"]["status"] == "UNAVAILABLE"

    device = connect(server, "reg-down", "dev-down", make_jwt(key))
    device.client.reconnect_delay_set(60, 120)
    try:
        info = device.client.publish("/devices/dev-down/events", b"lost?", qos=1)
        info.wait_for_publish(timeout=15)
    except RuntimeError:
        pass
    finally:
        device.client.loop_stop()
    assert not info.is_published(), "a PUBACK was sent for an event nobody stored"
