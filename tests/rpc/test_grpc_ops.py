"""The gRPC ports as an operator sees them: calls by method and status code on /metrics
(after real calls of the official clients), and the caps that keep a client from opening
connections and streams until the process runs out of descriptors."""

from __future__ import annotations

import queue
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.api_core import exceptions
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from google.pubsub_v1 import types as pubsub
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, start_server, stop_server, wait_for
from tests.interop.iot_clients import StaticToken
from tests.interop.test_google_cloud_pubsub_grpc import publisher_for

pytestmark = pytest.mark.databases("sqlite")
PROJECT = "ops-project"
TOPIC = f"projects/{PROJECT}/topics/telemetry"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/backend"
PUBLISHER = "/google.pubsub.v1.Publisher"
STREAMING_PULL = "/google.pubsub.v1.Subscriber/StreamingPull"


def samples(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    scrape = httpx.get(f"{server.url}/metrics", timeout=10)
    assert scrape.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scrape.text)
        for s in family.samples
    }


def calls(found: dict[Any, float], method: str, code: str) -> float:
    return found.get(("ironcore_grpc_calls_total", (("code", code), ("method", method))), 0.0)


def rest(server: Server, method: str, path: str, body: object = None) -> httpx.Response:
    response = httpx.request(
        method,
        f"{server.url}/v1/projects/{PROJECT}/{path}",
        json=body,
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert response.status_code == 200, response.text
    return response


def test_calls_in_metrics(grpc_server: Server) -> None:
    publisher: PublisherClient = publisher_for(grpc_server, grpc_server.token)
    subscriber = SubscriberClient(
        credentials=StaticToken(token=grpc_server.token),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": f"127.0.0.1:{grpc_server.grpc_port}"},
    )
    try:
        publisher.create_topic(name=TOPIC)
        subscriber.create_subscription(name=SUBSCRIPTION, topic=TOPIC)
        for i in range(3):
            publisher.publish(TOPIC, f"m{i}".encode()).result(timeout=30)
        with pytest.raises(exceptions.NotFound):
            publisher.get_topic(topic=f"projects/{PROJECT}/topics/missing")

        received: queue.Queue[bytes] = queue.Queue()

        def take(message: Any) -> None:
            received.put(message.data)
            message.ack()

        future = subscriber.subscribe(SUBSCRIPTION, take)
        try:
            got = sorted(received.get(timeout=30) for _ in range(3))
            assert got == [b"m0", b"m1", b"m2"]
            opened = samples(grpc_server)
            streams = ("ironcore_grpc_streams_open", (("method", STREAMING_PULL),))
            assert opened[streams] >= 1
        finally:
            future.cancel()
            future.result(timeout=30)

        def after_close() -> dict[Any, float] | None:
            found = samples(grpc_server)
            return found if found[streams] == 0 else None

        closed = wait_for(after_close, timeout=30, what="the stream to close")
    finally:
        publisher.stop()
        subscriber.close()

    assert calls(closed, f"{PUBLISHER}/CreateTopic", "OK") == 1
    assert calls(closed, f"{PUBLISHER}/Publish", "OK") >= 1
    assert calls(closed, f"{PUBLISHER}/GetTopic", "NOT_FOUND") == 1
    assert calls(closed, f"{PUBLISHER}/GetTopic", "OK") == 0
    publish_latency = ("ironcore_grpc_call_seconds_count", (("method", f"{PUBLISHER}/Publish"),))
    assert closed[publish_latency] == calls(closed, f"{PUBLISHER}/Publish", "OK")
    ended = sum(
        v
        for (name, labels), v in closed.items()
        if name == "ironcore_grpc_calls_total" and ("method", STREAMING_PULL) in labels
    )
    assert ended >= 1
    delivered = closed[("ironcore_pubsub_messages_total", (("event", "delivered"),))]
    acked = closed[("ironcore_pubsub_messages_total", (("event", "acked"),))]
    assert delivered >= 3 and acked >= 3
    # The REST API's figures are on the same page.
    assert any(name == "ironcore_api_requests_total" for name, _ in closed)

    # A method the server does not have is counted under one label, whatever its name.
    root = grpc_server.data_dir.joinpath("tls", "ca.crt").read_bytes()
    with grpc.secure_channel(
        f"127.0.0.1:{grpc_server.grpc_port}", grpc.ssl_channel_credentials(root)
    ) as channel:
        for name in ("/no.Such/Method", "/google.pubsub.v1.Publisher/Nope"):
            with pytest.raises(grpc.RpcError) as caught:
                unknown: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(name)
                unknown(b"", timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert calls(samples(grpc_server), "unknown", "UNIMPLEMENTED") == 2


@pytest.fixture
def capped(tmp_path: Path, local_ca: Path) -> Iterator[Server]:
    """A server whose gRPC API holds 3 connections and runs 2 calls at once."""
    data = tmp_path / "data"
    (data / "tls").mkdir(parents=True)
    for name in ("ca.crt", "ca.key"):
        shutil.copy(local_ca / name, data / "tls" / name)
    extra = ["--grpc-max-concurrent-rpcs", "2", "--http-max-connections", "3"]
    running = start_server(data, grpc=True, extra=extra)
    yield running
    stop_server(running)


class Stream:
    """A StreamingPull held open from a plain channel, its requests fed from a queue."""

    def __init__(self, channel: grpc.Channel, server: Server, subscription: str) -> None:
        self.requests: queue.Queue[bytes | None] = queue.Queue()
        first = pubsub.StreamingPullRequest(
            subscription=subscription, stream_ack_deadline_seconds=60
        )
        self.requests.put(pubsub.StreamingPullRequest.serialize(first))
        method: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(STREAMING_PULL)
        self.responses: Any = method(
            iter(self.requests.get, None),
            metadata=(("authorization", f"Bearer {server.token}"),),
            timeout=60,
        )

    def next_messages(self) -> list[bytes]:
        while True:
            response = pubsub.StreamingPullResponse.deserialize(next(self.responses))
            if response.received_messages:
                return [m.message.data for m in response.received_messages]

    def close(self) -> None:
        self.requests.put(None)
        self.responses.cancel()


def channel_to(server: Server) -> grpc.Channel:
    root = server.data_dir.joinpath("tls", "ca.crt").read_bytes()
    # A channel of its own: Python's channels to one address otherwise share a connection.
    return grpc.secure_channel(
        f"127.0.0.1:{server.grpc_port}",
        grpc.ssl_channel_credentials(root),
        options=[("grpc.use_local_subchannel_pool", 1)],
    )


def get_topic(channel: grpc.Channel, server: Server) -> None:
    request = pubsub.GetTopicRequest.serialize(pubsub.GetTopicRequest(topic=TOPIC))
    method: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        f"{PUBLISHER}/GetTopic"
    )
    method(request, metadata=(("authorization", f"Bearer {server.token}"),), timeout=10)


def test_calls_beyond_the_cap_are_refused_and_streams_go_on(capped: Server) -> None:
    rest(capped, "PUT", "topics/telemetry", {})
    names = [f"projects/{PROJECT}/subscriptions/backend-{i}" for i in range(2)]
    for name in names:
        rest(capped, "PUT", name.removeprefix(f"projects/{PROJECT}/"), {"topic": TOPIC})
    with channel_to(capped) as channel:
        streams = [Stream(channel, capped, name) for name in names]
        try:
            rest(capped, "POST", "topics/telemetry:publish", {"messages": [{"data": "YQ=="}]})
            assert [s.next_messages() for s in streams] == [[b"a"], [b"a"]]
            # Two streams are all the port runs at once: a third call is refused at once.
            with pytest.raises(grpc.RpcError) as refused:
                get_topic(channel, capped)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # The streams already open keep delivering.
            rest(capped, "POST", "topics/telemetry:publish", {"messages": [{"data": "Yg=="}]})
            assert [s.next_messages() for s in streams] == [[b"b"], [b"b"]]
        finally:
            streams[1].close()
        # With one stream closed there is room again.
        wait_for(lambda: _succeeds(channel, capped), timeout=30, what="room for a call")
        streams[0].close()


def _succeeds(channel: grpc.Channel, server: Server) -> bool:
    try:
        get_topic(channel, server)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return False
    return True


def test_connections_beyond_the_cap_are_closed(capped: Server) -> None:
    rest(capped, "PUT", "topics/telemetry", {})
    held = [channel_to(capped) for _ in range(3)]
    try:
        for channel in held:
            get_topic(channel, capped)
        with channel_to(capped) as extra:
            with pytest.raises(grpc.RpcError) as refused:
                get_topic(extra, capped)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # The connections held still serve.
        for channel in held:
            get_topic(channel, capped)
        held.pop().close()
        with channel_to(capped) as extra:
            wait_for(lambda: _connects(extra, capped), timeout=30, what="room for a connection")
    finally:
        for channel in held:
            channel.close()


def _connects(channel: grpc.Channel, server: Server) -> bool:
    try:
        get_topic(channel, server)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        return False
    return True
