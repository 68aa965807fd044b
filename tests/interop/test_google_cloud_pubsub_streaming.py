"""`google-cloud-pubsub`'s `SubscriberClient.subscribe()` (StreamingPull) against a real
ironcore process over TLS: device telemetry from a real MQTT device, ack, nack, redelivery after
the ack deadline, flow control, two subscribers sharing a subscription; and, on a plain gRPC
stream, what no client library sends (malformed first requests, in-stream acks)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from google.cloud.pubsub_v1.subscriber.message import Message
from google.cloud.pubsub_v1.types import FlowControl
from google.pubsub_v1 import types as pubsub
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.bridge import devices
from tests.conftest import Server, stop_server, wait_for
from tests.interop.iot_clients import StaticToken
from tests.interop.test_google_cloud_pubsub_grpc import publisher_for

PROJECT = "stream-project"
TOPIC = f"projects/{PROJECT}/topics/telemetry"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/backend"
METHOD = "/google.pubsub.v1.Subscriber/StreamingPull"
# The longest any test waits for one thing to happen; the ack deadline (10 s at least, as on
# Google) is the longest of them.
TIMEOUT = 30


def subscriber_for(server: Server) -> SubscriberClient:
    return SubscriberClient(
        credentials=StaticToken(token=server.token),
        client_options={"api_endpoint": f"127.0.0.1:{server.grpc_port}"},
    )


@pytest.fixture
def subscriber(grpc_server: Server) -> Iterator[SubscriberClient]:
    client = subscriber_for(grpc_server)
    yield client
    client.close()


@pytest.fixture
def publisher(grpc_server: Server) -> Iterator[PublisherClient]:
    client = publisher_for(grpc_server, grpc_server.token)
    yield client
    client.stop()


@pytest.fixture
def topic(publisher: PublisherClient, subscriber: SubscriberClient) -> str:
    publisher.create_topic(name=TOPIC)
    subscriber.create_subscription(name=SUBSCRIPTION, topic=TOPIC, ack_deadline_seconds=10)
    return TOPIC


def publish(publisher: PublisherClient, *payloads: bytes) -> list[str]:
    futures = [publisher.publish(TOPIC, payload) for payload in payloads]
    return [future.result(timeout=TIMEOUT) for future in futures]


def streaming(
    subscriber: SubscriberClient, callback: Callable[[Message], None], **flow: Any
) -> Any:
    return subscriber.subscribe(SUBSCRIPTION, callback, flow_control=FlowControl(**flow))


def settle(subscriber: SubscriberClient, ack_ids: list[str]) -> bool:
    """Whether none of these messages is leased any more: a nack (deadline 0) brings back one
    that still is, and the next pull would return it."""
    subscriber.modify_ack_deadline(
        subscription=SUBSCRIPTION, ack_ids=ack_ids, ack_deadline_seconds=0
    )
    pulled = subscriber.pull(subscription=SUBSCRIPTION, max_messages=100).received_messages
    return not pulled


def test_subscribe_receives_device_telemetry(
    grpc_server: Server, subscriber: SubscriberClient
) -> None:
    registry = "stream-registry"
    devices.create_registry(grpc_server, registry)
    key = devices.new_key()
    device = devices.create_device(grpc_server, registry, "dev-1", key)
    events = f"projects/{devices.PROJECT}/topics/events"
    name = f"projects/{devices.PROJECT}/subscriptions/telemetry"
    subscriber.create_subscription(name=name, topic=events)
    received: queue.Queue[Message] = queue.Queue()

    def callback(message: Message) -> None:
        received.put(message)
        message.ack()

    future = subscriber.subscribe(name, callback)
    mqtt = devices.online(grpc_server, registry, "dev-1", key, subscribe=False)
    try:
        mqtt.publish("/devices/dev-1/events", b"temp=21")
        mqtt.publish("/devices/dev-1/events/rooms/kitchen", b"temp=23")
        got = {}
        for _ in range(2):
            message = received.get(timeout=TIMEOUT)
            got[message.data] = message
    finally:
        mqtt.close()
        future.cancel()
        future.result(timeout=TIMEOUT)
    assert set(got) == {b"temp=21", b"temp=23"}
    common = {
        "deviceId": "dev-1",
        "deviceNumId": device["numId"],
        "deviceRegistryId": registry,
        "deviceRegistryLocation": devices.LOCATION,
        "projectId": devices.PROJECT,
    }
    assert dict(got[b"temp=21"].attributes) == common
    assert dict(got[b"temp=23"].attributes) == {**common, "subFolder": "rooms/kitchen"}
    for message in got.values():
        assert message.message_id.isdigit()
        assert message.publish_time.timestamp() > 0
    assert got[b"temp=21"].message_id != got[b"temp=23"].message_id


@pytest.mark.databases("sqlite")
def test_ack_nack_and_ack_deadline(
    topic: str, publisher: PublisherClient, subscriber: SubscriberClient
) -> None:
    deliveries: dict[bytes, list[str]] = {b"ack": [], b"nack": [], b"expire": []}
    lock = threading.Lock()

    def callback(message: Message) -> None:
        # Settled before it is counted, so that the ack is queued before the test closes the
        # stream (the client sends queued acks as it closes).
        first = not deliveries[message.data]
        if message.data == b"ack" or not first:
            message.ack()
        elif message.data == b"nack":
            message.nack()
        # b"expire" the first time: neither; the client stops extending its lease after
        # max_lease_duration, and the server hands it out again once the deadline passed.
        with lock:
            deliveries[message.data].append(message.ack_id)

    publish(publisher, b"ack", b"nack", b"expire")
    future = streaming(
        subscriber,
        callback,
        max_lease_duration=1,
        min_duration_per_lease_extension=10,
        max_duration_per_lease_extension=10,
    )
    try:
        wait_for(
            lambda: len(deliveries[b"nack"]) >= 2 and len(deliveries[b"expire"]) >= 2,
            timeout=TIMEOUT,
            what="the nacked and the expired message delivered again",
        )
    finally:
        future.cancel()
        future.result(timeout=TIMEOUT)
    assert [len(deliveries[data]) for data in (b"ack", b"nack", b"expire")] == [1, 2, 2]
    # Acknowledged: the leases are gone, so not even a nack brings the messages back.
    assert settle(subscriber, [ack_id for ids in deliveries.values() for ack_id in ids])


@pytest.mark.databases("sqlite")
def test_flow_control_bounds_outstanding_messages(
    topic: str, publisher: PublisherClient, subscriber: SubscriberClient
) -> None:
    ids = publish(publisher, *(f"m{i}".encode() for i in range(12)))
    lock = threading.Lock()
    outstanding: set[str] = set()
    most = 0
    done: set[str] = set()

    def callback(message: Message) -> None:
        nonlocal most
        with lock:
            outstanding.add(message.message_id)
            most = max(most, len(outstanding))
        # Held a moment so that messages would pile up if flow control let them.
        threading.Event().wait(0.05)
        with lock:
            outstanding.discard(message.message_id)
            done.add(message.message_id)
        message.ack()

    future = streaming(subscriber, callback, max_messages=3)
    try:
        wait_for(lambda: done == set(ids), timeout=TIMEOUT, what="all 12 messages")
    finally:
        future.cancel()
        future.result(timeout=TIMEOUT)
    assert 1 <= most <= 3


@pytest.mark.databases("sqlite")
def test_two_subscribers_share_the_messages(
    grpc_server: Server, topic: str, publisher: PublisherClient, subscriber: SubscriberClient
) -> None:
    other = subscriber_for(grpc_server)
    got: list[list[str]] = [[], []]
    lock = threading.Lock()
    both = threading.Event()
    acked: list[str] = []

    def receiver(index: int) -> Callable[[Message], None]:
        def callback(message: Message) -> None:
            with lock:
                got[index].append(message.message_id)
                if got[0] and got[1]:
                    both.set()
            # Each holds its first messages (up to its flow control) until the other has
            # some too: a server that gave one stream everything would never get here.
            both.wait(timeout=TIMEOUT)
            message.ack()
            with lock:
                acked.append(message.ack_id)

        return callback

    ids = publish(publisher, *(f"m{i}".encode() for i in range(20)))
    futures = [
        client.subscribe(SUBSCRIPTION, receiver(i), flow_control=FlowControl(max_messages=5))
        for i, client in enumerate((subscriber, other))
    ]
    try:
        wait_for(lambda: len(acked) >= len(ids), timeout=TIMEOUT, what="every message acked")
    finally:
        for future in futures:
            future.cancel()
            future.result(timeout=TIMEOUT)
        other.close()
    assert got[0] and got[1]
    assert set(got[0]) | set(got[1]) == set(ids)
    assert settle(subscriber, acked)


class Stream:
    """A raw StreamingPull on a plain gRPC channel: requests as they are put, responses as
    they arrive."""

    def __init__(self, channel: grpc.Channel, server: Server, token: str = "") -> None:
        """As the server's owner, or with `token`."""
        self.requests: queue.Queue[bytes | None] = queue.Queue()
        call: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(METHOD)
        self.responses: Any = call(
            iter(self.requests.get, None),
            metadata=(("authorization", f"Bearer {token or server.token}"),),
            timeout=TIMEOUT,
        )

    def send(self, **fields: Any) -> None:
        self.requests.put(pubsub.StreamingPullRequest.pb()(**fields).SerializeToString())

    def send_raw(self, raw: bytes) -> None:
        self.requests.put(raw)

    def next(self) -> Any:
        raw = next(self.responses)
        return pubsub.StreamingPullResponse.pb().FromString(raw)

    def close(self) -> None:
        self.requests.put(None)


@pytest.fixture
def channel(grpc_server: Server) -> Iterator[grpc.Channel]:
    root = grpc_server.ca_file.read_bytes()
    with grpc.secure_channel(
        f"127.0.0.1:{grpc_server.grpc_port}", grpc.ssl_channel_credentials(root)
    ) as opened:
        yield opened


@pytest.mark.databases("sqlite")
def test_in_stream_acks_and_server_side_flow_control(
    topic: str, publisher: PublisherClient, channel: grpc.Channel, grpc_server: Server
) -> None:
    ids = publish(publisher, *(f"m{i}".encode() for i in range(10)))
    stream = Stream(channel, grpc_server)
    stream.send(
        subscription=SUBSCRIPTION, stream_ack_deadline_seconds=60, max_outstanding_messages=3
    )
    received: list[str] = []
    try:
        while len(received) < len(ids):
            batch: list[str] = []
            while len(batch) < min(3, len(ids) - len(received)):
                batch += [m.ack_id for m in stream.next().received_messages]
                # Never more than 3 sent and not settled.
                assert len(batch) <= 3
            received += batch
            # Ack some, nack (deadline 0) the last of the first batch once: it comes again.
            if len(received) == 3:
                stream.send(
                    ack_ids=batch[:2],
                    modify_deadline_ack_ids=batch[2:],
                    modify_deadline_seconds=[0],
                )
                received.pop()
            else:
                stream.send(ack_ids=batch)
    finally:
        stream.close()
    assert sorted(received, key=int) == sorted(ids, key=int)


_Request = pubsub.StreamingPullRequest.pb()
MALFORMED = [
    (b"\x0a\x05ab", "is not a valid StreamingPullRequest"),
    (_Request(stream_ack_deadline_seconds=60), "subscription"),
    (_Request(subscription=SUBSCRIPTION), "stream_ack_deadline_seconds"),
    (_Request(subscription=SUBSCRIPTION, stream_ack_deadline_seconds=5), "between 10 and 600"),
    (
        _Request(
            subscription=SUBSCRIPTION, stream_ack_deadline_seconds=60, modify_deadline_ack_ids=["1"]
        ),
        "modify_deadline_seconds",
    ),
]


@pytest.mark.databases("sqlite")
def test_malformed_first_request_fails_only_its_stream(
    topic: str, publisher: PublisherClient, channel: grpc.Channel, grpc_server: Server
) -> None:
    good = Stream(channel, grpc_server)
    good.send(subscription=SUBSCRIPTION, stream_ack_deadline_seconds=60)
    try:
        for first, problem in MALFORMED:
            bad = Stream(channel, grpc_server)
            bad.send_raw(first if isinstance(first, bytes) else first.SerializeToString())
            with pytest.raises(grpc.RpcError) as caught:
                bad.next()
            bad.close()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, problem
            assert problem in str(caught.value.details())
            # The other stream on the same connection goes on.
            [sent] = publish(publisher, problem.encode())
            [got] = good.next().received_messages
            assert got.message.message_id == sent
            good.send(ack_ids=[got.ack_id])
    finally:
        good.close()


@pytest.mark.databases("sqlite")
def test_refused_streams_are_in_the_audit_log(
    topic: str, channel: grpc.Channel, grpc_server: Server
) -> None:
    owner = {"Authorization": f"Bearer {grpc_server.token}"}
    made = httpx.post(
        f"{grpc_server.url}/ironcore/v1/tokens", json={"role": "viewer"}, headers=owner
    )
    assert made.status_code == 200, made.text
    viewer = made.json()["token"]
    for token, code in [
        (viewer, grpc.StatusCode.PERMISSION_DENIED),
        ("ic_0123456789ab_not-a-token", grpc.StatusCode.UNAUTHENTICATED),
    ]:
        stream = Stream(channel, grpc_server, token)
        stream.send(subscription=SUBSCRIPTION, stream_ack_deadline_seconds=60)
        with pytest.raises(grpc.RpcError) as caught:
            stream.next()
        stream.close()
        assert caught.value.code() == code
    listed = httpx.get(
        f"{grpc_server.url}/ironcore/v1/projects/-/auditLogs",
        params={"filter": "method=StreamingPull"},
        headers=owner,
    )
    assert listed.status_code == 200, listed.text
    unauthenticated, denied = listed.json()["auditLogs"]
    assert (denied["status"], denied["resource"]) == ("PERMISSION_DENIED", SUBSCRIPTION)
    assert denied["principal"] == f"adminToken:{viewer.split('_')[1]}"
    assert "pubsub.subscriptions.consume" in denied["message"]
    assert (unauthenticated["status"], unauthenticated["principal"]) == ("UNAUTHENTICATED", "")
    assert viewer not in listed.text and "not-a-token" not in listed.text


@pytest.mark.databases("sqlite")
def test_streaming_pull_of_a_missing_subscription_is_not_found(
    channel: grpc.Channel, grpc_server: Server
) -> None:
    stream = Stream(channel, grpc_server)
    stream.send(
        subscription=f"projects/{PROJECT}/subscriptions/none", stream_ack_deadline_seconds=60
    )
    with pytest.raises(grpc.RpcError) as caught:
        stream.next()
    stream.close()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.databases("sqlite")
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first=st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda name, deadline, ids, seconds, most: _Request(
                subscription=name,
                stream_ack_deadline_seconds=deadline,
                modify_deadline_ack_ids=ids,
                modify_deadline_seconds=seconds,
                max_outstanding_messages=most,
            ).SerializeToString(),
            st.one_of(st.text(max_size=60), st.just(f"projects/{PROJECT}/subscriptions/none")),
            st.integers(-(2**31), 2**31 - 1),
            st.lists(st.text(max_size=25), max_size=3),
            st.lists(st.integers(-(2**31), 2**31 - 1), max_size=3),
            st.integers(-(2**63), 2**63 - 1),
        ),
    )
)
def test_any_first_request_gets_an_answer_not_a_crash(
    channel: grpc.Channel, grpc_server: Server, first: bytes
) -> None:
    stream = Stream(channel, grpc_server)
    stream.send_raw(first)
    with pytest.raises(grpc.RpcError) as caught:
        stream.next()
    stream.close()
    code = caught.value.code()
    assert code in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}, (
        code,
        caught.value.details(),
    )


@pytest.mark.databases("sqlite")
def test_a_stopping_server_ends_streams_as_unavailable(
    topic: str, publisher: PublisherClient, channel: grpc.Channel, grpc_server: Server
) -> None:
    stream = Stream(channel, grpc_server)
    stream.send(subscription=SUBSCRIPTION, stream_ack_deadline_seconds=60)
    [sent] = publish(publisher, b"before the restart")
    assert [m.message.message_id for m in stream.next().received_messages] == [sent]
    stop_server(grpc_server)
    # UNAVAILABLE is what the client library reconnects on; CANCELLED would end subscribe().
    with pytest.raises(grpc.RpcError) as caught:
        stream.next()
    stream.close()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
