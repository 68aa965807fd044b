"""The embedded Pub/Sub through its REST API (in process, on SQLite and PostgreSQL)."""

from __future__ import annotations

import base64

from tests.conftest import Api

P = "/v1/projects/proj"


async def make_topic(api: Api, topic: str = "events") -> None:
    r = await api.client.put(f"{P}/topics/{topic}", json={})
    assert r.status_code == 200, r.text


async def publish(api: Api, topic: str, *payloads: bytes) -> list[str]:
    body = {
        "messages": [
            {"data": base64.b64encode(p).decode(), "attributes": {"n": str(i)}}
            for i, p in enumerate(payloads)
        ]
    }
    r = await api.client.post(f"{P}/topics/{topic}:publish", json=body)
    assert r.status_code == 200, r.text
    ids: list[str] = r.json()["messageIds"]
    return ids


async def pull(api: Api, sub: str, n: int = 100) -> list[dict]:  # type: ignore[type-arg]
    r = await api.client.post(f"{P}/subscriptions/{sub}:pull", json={"maxMessages": n})
    assert r.status_code == 200, r.text
    received: list[dict] = r.json().get("receivedMessages", [])  # type: ignore[type-arg]
    return received


async def test_pull_acknowledge_and_redelivery(api: Api) -> None:
    await make_topic(api)
    before = await publish(api, "events", b"before the subscription")
    r = await api.client.put(
        f"{P}/subscriptions/sub-1", json={"topic": "projects/proj/topics/events"}
    )
    assert r.status_code == 200 and r.json()["ackDeadlineSeconds"] == 10
    ids = await publish(api, "events", b"one", b"two", b"three")
    assert before[0] not in ids

    got = await pull(api, "sub-1", 2)
    assert [base64.b64decode(m["message"]["data"]) for m in got] == [b"one", b"two"]
    assert got[0]["message"]["attributes"] == {"n": "0"}
    assert got[0]["message"]["messageId"] == ids[0] and got[0]["deliveryAttempt"] == 1
    assert got[0]["message"]["publishTime"].endswith("Z")
    rest = await pull(api, "sub-1")
    assert [base64.b64decode(m["message"]["data"]) for m in rest] == [b"three"]
    assert await pull(api, "sub-1") == []

    r = await api.client.post(
        f"{P}/subscriptions/sub-1:acknowledge", json={"ackIds": [got[0]["ackId"]]}
    )
    assert (r.status_code, r.json()) == (200, {})
    # A deadline of 0 hands the message back at once (as a nack does in Pub/Sub).
    r = await api.client.post(
        f"{P}/subscriptions/sub-1:modifyAckDeadline",
        json={"ackIds": [got[1]["ackId"]], "ackDeadlineSeconds": 0},
    )
    assert r.status_code == 200
    again = await pull(api, "sub-1")
    assert [(base64.b64decode(m["message"]["data"]), m["deliveryAttempt"]) for m in again] == [
        (b"two", 2)
    ]


async def test_dead_letter_after_max_attempts(api: Api) -> None:
    await make_topic(api)
    await make_topic(api, "dead")
    r = await api.client.put(
        f"{P}/subscriptions/sub-2",
        json={
            "topic": "projects/proj/topics/events",
            "deadLetterPolicy": {
                "deadLetterTopic": "projects/proj/topics/dead",
                "maxDeliveryAttempts": 5,
            },
        },
    )
    assert r.status_code == 200, r.text
    r = await api.client.put(
        f"{P}/subscriptions/dead-sub", json={"topic": "projects/proj/topics/dead"}
    )
    assert r.status_code == 200
    await publish(api, "events", b"poison")
    for attempt in range(1, 6):
        got = await pull(api, "sub-2")
        assert [m["deliveryAttempt"] for m in got] == [attempt]
        await api.client.post(
            f"{P}/subscriptions/sub-2:modifyAckDeadline",
            json={"ackIds": [got[0]["ackId"]], "ackDeadlineSeconds": 0},
        )
    assert await pull(api, "sub-2") == []
    dead = await pull(api, "dead-sub")
    assert base64.b64decode(dead[0]["message"]["data"]) == b"poison"
    assert (
        dead[0]["message"]["attributes"]["sourceSubscription"]
        == "projects/proj/subscriptions/sub-2"
    )


async def test_bad_requests(api: Api) -> None:
    async def status(method: str, path: str, **kwargs: object) -> tuple[int, str]:
        r = await api.client.request(method, path, **kwargs)  # type: ignore[arg-type]
        return r.status_code, r.json()["error"]["status"]

    assert await status("PUT", f"{P}/topics/x", json={}) == (400, "INVALID_ARGUMENT")
    assert await status("PUT", f"{P}/topics/googthing", json={}) == (400, "INVALID_ARGUMENT")
    await make_topic(api)
    assert await status("PUT", f"{P}/topics/events", json={}) == (409, "ALREADY_EXISTS")
    assert await status("PUT", f"{P}/topics/other", json={"backend": "kafka"}) == (
        400,
        "INVALID_ARGUMENT",
    )
    missing_topic = {"topic": "projects/proj/topics/missing"}
    assert await status("PUT", f"{P}/subscriptions/sub", json=missing_topic) == (404, "NOT_FOUND")
    assert await status("PUT", f"{P}/subscriptions/sub", json={"topic": "events"}) == (
        400,
        "INVALID_ARGUMENT",
    )
    too_long = {"topic": "projects/proj/topics/events", "ackDeadlineSeconds": 601}
    assert await status("PUT", f"{P}/subscriptions/sub", json=too_long) == (400, "INVALID_ARGUMENT")
    assert await status("POST", f"{P}/subscriptions/none:pull", json={"maxMessages": 1}) == (
        404,
        "NOT_FOUND",
    )
    r = await api.client.put(
        f"{P}/subscriptions/sub", json={"topic": "projects/proj/topics/events"}
    )
    assert r.status_code == 200
    assert await status("POST", f"{P}/subscriptions/sub:pull", json={"maxMessages": 0}) == (
        400,
        "INVALID_ARGUMENT",
    )
    assert await status("POST", f"{P}/subscriptions/sub:acknowledge", json={"ackIds": ["x1"]}) == (
        400,
        "INVALID_ARGUMENT",
    )
    assert await status("POST", f"{P}/topics/events:publish", json={"messages": []}) == (
        400,
        "INVALID_ARGUMENT",
    )
    assert await status(
        "POST", f"{P}/topics/events:publish", json={"messages": [{"data": "!!"}]}
    ) == (
        400,
        "INVALID_ARGUMENT",
    )
    viewer = await api.as_role("viewer")
    r = await viewer.post(f"{P}/subscriptions/sub:pull", json={"maxMessages": 1})
    assert r.status_code == 403
    r = await viewer.get(f"{P}/subscriptions")
    assert (
        r.status_code == 200
        and r.json()["subscriptions"][0]["name"] == "projects/proj/subscriptions/sub"
    )
    await viewer.aclose()


async def test_registry_topics_are_created(api: Api) -> None:
    r = await api.client.post(
        "/v1/projects/proj/locations/us-central1/registries",
        json={
            "id": "reg-topics",
            "eventNotificationConfigs": [{"pubsubTopicName": "projects/proj/topics/telemetry"}],
            "stateNotificationConfig": {"pubsubTopicName": "projects/proj/topics/states"},
        },
    )
    assert r.status_code == 200, r.text
    names = {t["name"] for t in (await api.client.get(f"{P}/topics")).json()["topics"]}
    assert names == {"projects/proj/topics/telemetry", "projects/proj/topics/states"}
