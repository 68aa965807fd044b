"""The official `google-cloud-pubsub` clients on their default transport, gRPC, against a real
ironcore process over TLS (`--grpc-port`): topics and `publish()` futures, the messages landing
in the embedded log (read back with a REST pull), the Subscriber's unary methods (pull, ack,
nack), refusals as their exception class."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest
from google.api_core import exceptions
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

from tests.conftest import Server
from tests.interop.iot_clients import StaticToken

pytestmark = pytest.mark.databases("sqlite")
PROJECT = "pubsub-project"


def publisher_for(server: Server, token: str) -> PublisherClient:
    return PublisherClient(
        credentials=StaticToken(token=token),
        client_options={"api_endpoint": f"127.0.0.1:{server.grpc_port}"},
    )


@pytest.fixture
def publisher(grpc_server: Server) -> Iterator[PublisherClient]:
    client = publisher_for(grpc_server, grpc_server.token)
    yield client
    client.stop()


def rest(server: Server, method: str, path: str, body: object = None) -> httpx.Response:
    return httpx.request(
        method,
        f"{server.url}/v1/projects/{PROJECT}/{path}",
        json=body,
        headers={"Authorization": f"Bearer {server.token}"},
    )


def test_topics_and_publish(publisher: PublisherClient, grpc_server: Server) -> None:
    topic = f"projects/{PROJECT}/topics/telemetry"
    assert publisher.create_topic(name=topic).name == topic
    with pytest.raises(exceptions.AlreadyExists):
        publisher.create_topic(name=topic)
    assert publisher.get_topic(topic=topic).name == topic
    publisher.create_topic(name=f"projects/{PROJECT}/topics/other")
    listed = [t.name for t in publisher.list_topics(project=f"projects/{PROJECT}")]
    assert sorted(listed) == [f"projects/{PROJECT}/topics/other", topic]

    created = rest(grpc_server, "PUT", "subscriptions/backend", {"topic": topic})
    assert created.status_code == 200, created.text
    futures = [publisher.publish(topic, f"m{i}".encode(), deviceId=f"d{i}") for i in range(3)]
    ids = [future.result(timeout=30) for future in futures]
    assert len(set(ids)) == 3

    pulled = rest(grpc_server, "POST", "subscriptions/backend:pull", {"maxMessages": 10})
    messages = [m["message"] for m in pulled.json()["receivedMessages"]]
    assert sorted((base64.b64decode(m["data"]), m["attributes"]["deviceId"]) for m in messages) == [
        (b"m0", "d0"),
        (b"m1", "d1"),
        (b"m2", "d2"),
    ]
    assert sorted(m["messageId"] for m in messages) == sorted(ids)

    publisher.delete_topic(topic=topic)
    with pytest.raises(exceptions.NotFound):
        publisher.get_topic(topic=topic)
    with pytest.raises(exceptions.NotFound):
        publisher.publish(topic, b"to nowhere").result(timeout=30)
    with pytest.raises(exceptions.InvalidArgument):
        publisher.create_topic(name="topics/no-project")


def test_roles_apply_to_topics(grpc_server: Server) -> None:
    created = httpx.post(
        f"{grpc_server.url}/ironcore/v1/tokens",
        json={"role": "viewer", "name": "pubsub viewer"},
        headers={"Authorization": f"Bearer {grpc_server.token}"},
    )
    viewer = publisher_for(grpc_server, created.json()["token"])
    with pytest.raises(exceptions.PermissionDenied) as denied:
        viewer.create_topic(name=f"projects/{PROJECT}/topics/nope")
    assert "pubsub.topics.create" in str(denied.value.message)
    assert list(viewer.list_topics(project=f"projects/{PROJECT}")) == []
    viewer.stop()
    anonymous = publisher_for(grpc_server, "ic_not_a_token")
    with pytest.raises(exceptions.Unauthenticated):
        anonymous.get_topic(topic=f"projects/{PROJECT}/topics/any")
    anonymous.stop()


def test_subscriber_unary_methods(publisher: PublisherClient, grpc_server: Server) -> None:
    topic = f"projects/{PROJECT}/topics/events"
    name = f"projects/{PROJECT}/subscriptions/backend"
    publisher.create_topic(name=topic)
    subscriber = SubscriberClient(
        credentials=StaticToken(token=grpc_server.token),
        client_options={"api_endpoint": f"127.0.0.1:{grpc_server.grpc_port}"},
    )
    try:
        created = subscriber.create_subscription(name=name, topic=topic, ack_deadline_seconds=30)
        assert (created.name, created.topic, created.ack_deadline_seconds) == (name, topic, 30)
        with pytest.raises(exceptions.AlreadyExists):
            subscriber.create_subscription(name=name, topic=topic)
        with pytest.raises(exceptions.InvalidArgument):
            subscriber.create_subscription(
                name=f"projects/{PROJECT}/subscriptions/push",
                topic=topic,
                push_config={"push_endpoint": "https://example.com/hook"},
            )
        assert subscriber.get_subscription(subscription=name).topic == topic
        listed = subscriber.list_subscriptions(project=f"projects/{PROJECT}")
        assert [s.name for s in listed] == [name]

        sent = publisher.publish(topic, b"hello", deviceId="dev-1").result(timeout=30)
        first = subscriber.pull(subscription=name, max_messages=10)
        [received] = first.received_messages
        assert received.message.data == b"hello" and received.message.message_id == sent
        assert received.message.attributes["deviceId"] == "dev-1"
        assert received.message.publish_time.timestamp() > 0
        # A nack (deadline 0) makes it deliverable again at once.
        subscriber.modify_ack_deadline(
            subscription=name, ack_ids=[received.ack_id], ack_deadline_seconds=0
        )
        [again] = subscriber.pull(subscription=name, max_messages=10).received_messages
        assert again.message.message_id == sent
        subscriber.acknowledge(subscription=name, ack_ids=[again.ack_id])
        assert list(subscriber.pull(subscription=name, max_messages=10).received_messages) == []
        with pytest.raises(exceptions.InvalidArgument):
            subscriber.acknowledge(subscription=name, ack_ids=["not-an-ack-id"])

        with pytest.raises(exceptions.InvalidArgument):
            subscriber.get_subscription(subscription="subscriptions/backend")
        subscriber.delete_subscription(subscription=name)
        with pytest.raises(exceptions.NotFound):
            subscriber.get_subscription(subscription=name)
    finally:
        subscriber.close()
