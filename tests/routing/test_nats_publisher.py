"""The pipelined JetStream publisher against the real NATS server: acknowledgements matched to
their messages, every way a publish can fail reported as Unavailable naming the problem, and
no future left hanging when the connection goes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, StreamConfig

from ironcore.errors import Unavailable
from ironcore.routing.nats import JetStreamSink, stream_name, subject
from tests.conftest import need_service

NATS_URL = "nats://127.0.0.1:4222"


def new_topic() -> str:
    return f"projects/ironcore-test/topics/pub-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    need_service("NATS", "127.0.0.1", 4222)
    connection = await nats.connect(NATS_URL)
    yield connection
    await connection.close()


@pytest.fixture
async def topic(client: Client) -> AsyncIterator[str]:
    """A topic whose stream the test may create; deleted afterwards either way."""
    name = new_topic()
    yield name
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await client.jetstream().delete_stream(stream_name(name))


async def started(
    url: str = NATS_URL, ack_timeout: float = 5.0, max_in_flight: int = 4000
) -> JetStreamSink:
    sink = JetStreamSink(url, timeout=ack_timeout, max_in_flight=max_in_flight)
    await sink.start()
    return sink


async def test_concurrent_publishes_are_acked_in_order_with_their_headers(
    client: Client, topic: str
) -> None:
    # Fewer slots than messages: the rest wait for acknowledgements to free room.
    sink = await started(max_in_flight=50)
    try:
        await sink.ensure_stream(topic)
        futures = [
            sink.submit(topic, f"event-{i}".encode(), {"deviceId": f"dev-{i}", "subFolder": "s"})
            for i in range(2000)
        ]
        sequences = await asyncio.gather(*futures)
    finally:
        await sink.close()
    assert sequences == list(range(1, 2001))

    consumer = await client.jetstream().pull_subscribe(
        subject(topic), durable=None, stream=stream_name(topic)
    )
    stored: list[Msg] = []
    while len(stored) < 2000:
        batch = await consumer.fetch(500, timeout=5)
        for message in batch:
            await message.ack()  # the consumer delivers at most 1,000 unacknowledged
        stored += batch
    assert [m.data for m in stored] == [f"event-{i}".encode() for i in range(2000)]
    expected = [{"deviceId": f"dev-{i}", "subFolder": "s"} for i in range(2000)]
    assert [m.headers for m in stored] == expected
    assert [m.metadata.sequence.stream for m in stored] == sequences


async def test_subject_without_a_stream_is_unavailable(topic: str) -> None:
    sink = await started()
    try:
        with pytest.raises(Unavailable) as failed:
            await sink.publish(topic, b"nobody stores this", {})
    finally:
        await sink.close()
    assert f"no stream listens on subject {subject(topic)}" in failed.value.message
    assert "503" in failed.value.message and topic in failed.value.message


async def test_jetstream_error_is_unavailable(client: Client, topic: str) -> None:
    await client.jetstream().add_stream(
        StreamConfig(
            name=stream_name(topic),
            subjects=[subject(topic)],
            max_msgs=1,
            discard=DiscardPolicy.NEW,
        )
    )
    sink = await started()
    try:
        assert await sink.submit(topic, b"fits", {}) == 1
        with pytest.raises(Unavailable) as failed:
            await sink.publish(topic, b"does not fit", {})
    finally:
        await sink.close()
    assert "JetStream error" in failed.value.message
    assert "maximum messages exceeded" in failed.value.message


async def test_reply_that_is_not_an_ack_is_unavailable(client: Client, topic: str) -> None:
    async def impostor(msg: Msg) -> None:
        await msg.respond(b"not json" if msg.data == b"one" else b'{"ok": true}')

    await client.subscribe(subject(topic), cb=impostor)
    await client.flush()
    sink = await started()
    try:
        with pytest.raises(Unavailable) as not_json:
            await sink.publish(topic, b"one", {})
        with pytest.raises(Unavailable) as no_seq:
            await sink.publish(topic, b"two", {})
    finally:
        await sink.close()
    assert "the acknowledgement is not JSON: b'not json'" in not_json.value.message
    assert "has no stream and seq" in no_seq.value.message


async def test_missing_ack_times_out(client: Client, topic: str) -> None:
    # A responder that never answers: no 503, no ack, only the timeout sweep can end it.
    await client.subscribe(subject(topic))
    await client.flush()
    sink = await started(ack_timeout=0.5)
    try:
        with pytest.raises(Unavailable) as failed:
            await asyncio.wait_for(sink.publish(topic, b"unheard", {}), 10)
    finally:
        await sink.close()
    assert f"did not acknowledge the event for {topic} within 0.5 s" in failed.value.message


class Proxy:
    """A TCP relay to NATS whose connections the test can cut, as a network failure would."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"nats://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 4222)
        self.writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                sink.write(data)
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


async def test_lost_connection_fails_pending_publishes_then_recovers(
    client: Client, topic: str
) -> None:
    silent = new_topic()
    # A responder that never answers keeps these publishes waiting for their ack.
    silent_sub = await client.subscribe(subject(silent))
    await client.flush()
    proxy = Proxy()
    sink = await started(await proxy.start(), ack_timeout=60)
    try:
        await sink.ensure_stream(topic)
        pending = [sink.submit(silent, b"in flight", {}) for _ in range(10)]
        for _ in pending:  # all sent
            await silent_sub.next_msg(timeout=5)
        assert not any(f.done() for f in pending)
        proxy.cut()
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 10)
        for result in results:
            assert isinstance(result, Unavailable), result
            assert "connection to NATS was lost" in result.message
            assert silent in result.message

        # The reply subscription comes back with the connection: publishing works again.
        for _ in range(100):
            try:
                await sink.publish(topic, b"after", {})
                break
            except Unavailable as error:
                assert "NATS is not connected" in error.message
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the sink did not reconnect")
    finally:
        await sink.close()
        await proxy.stop()


async def test_closing_fails_what_is_still_pending(client: Client) -> None:
    silent = new_topic()
    await client.subscribe(subject(silent))  # never answers
    await client.flush()
    sink = await started(ack_timeout=0.3, max_in_flight=1)
    pending = [sink.submit(silent, b"never acked", {}) for _ in range(20)]
    await sink.close()
    reasons = set()
    for future in pending:
        assert future.done()
        error = future.exception()
        assert isinstance(error, Unavailable), error
        assert silent in error.message
        reasons.add(error.message.split(";")[0])
    # Sent ones time out (or fail with the connection), the ones still queued are refused.
    assert "ironcore is shutting down" in reasons, reasons
    with pytest.raises(Unavailable, match="NATS is not connected"):
        await sink.publish(silent, b"after close", {})
