"""A NATS JetStream sink: topics whose events go to a JetStream stream instead of the
embedded log.

A topic `projects/{p}/topics/{t}` publishes to the subject `ironcore.{p}.{t}` (dots in ids are
escaped, since a dot separates subject tokens) in a stream of its own, with the Cloud IoT Core
attributes as message headers. An event is acknowledged to the device only after JetStream's
publish acknowledgement, i.e. after the stream has stored it.

Publishing is pipelined, as nats.go's `PublishAsync` does it: each message goes out with the
raw client and a reply subject of one wildcard subscription (`{inbox}.{token}`), the PubAck
that comes back on it resolves the message's future, and one periodic sweep fails the messages
whose acknowledgement is overdue. nats-py's `js.publish` instead makes a NUID, an inbox future
and a `wait_for` timer per message, which cost more than the rest of an event's routing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import deque
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError

from ironcore.errors import Unavailable

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT_SECONDS = 5.0
# Messages sent and not yet acknowledged; beyond this, publishes queue (their futures wait)
# until acknowledgements free room. nats.go's default for PublishAsync is 4,000.
MAX_IN_FLIGHT = 4000
_NO_RESPONDERS = "503"


async def reachable(url: str, seconds: float = 2.0) -> None:
    """OSError or TimeoutError unless the first server of `url` accepts a TCP connection.

    Checked before `nats.connect`: with reconnects unlimited (what a running server wants),
    nats-py also retries a failed first connect forever, and a server would hang at start."""
    first = urlsplit(url.split(",")[0].strip())
    async with asyncio.timeout(seconds):
        _, writer = await asyncio.open_connection(first.hostname or "127.0.0.1", first.port or 4222)
    writer.close()


def _token(value: str) -> str:
    return value.replace("%", "%25").replace(".", "%2E")


def subject(topic: str) -> str:
    """`projects/p/topics/t` → `ironcore.p.t`."""
    _, project, _, topic_id = topic.split("/")
    return f"ironcore.{_token(project)}.{_token(topic_id)}"


def stream_name(topic: str) -> str:
    # Stream names allow fewer characters than topic ids; a digest keeps them unique and valid.
    return "ironcore-" + hashlib.sha256(topic.encode()).hexdigest()[:20]


def ack_sequence(msg: Msg, subject: str) -> int:
    """The stream sequence of JetStream's PubAck; ValueError naming what is wrong with any
    other reply."""
    headers = msg.headers or {}
    status = headers.get("Status")
    if status == _NO_RESPONDERS:
        raise ValueError(
            f"no stream listens on subject {subject} (NATS answered 503 no responders)"
        )
    if status:
        raise ValueError(f"NATS answered status {status} {headers.get('Description', '')}")
    try:
        ack = json.loads(msg.data)
    except ValueError:
        raise ValueError(f"the acknowledgement is not JSON: {msg.data[:200]!r}") from None
    if isinstance(ack, dict) and isinstance(ack.get("error"), dict):
        error = ack["error"]
        raise ValueError(
            f"JetStream error {error.get('code')} (err_code {error.get('err_code')}): "
            f"{error.get('description')}"
        )
    seq = ack.get("seq") if isinstance(ack, dict) else None
    if isinstance(seq, int) and "stream" in ack:
        return seq
    raise ValueError(f"the acknowledgement has no stream and seq: {msg.data[:200]!r}")


def _fail(future: asyncio.Future[int], error: Unavailable) -> None:
    if not future.done():
        future.set_exception(error)
        # Retrieved here so that asyncio does not log each one again when its waiter is gone
        # (a device connection closes on its first failed event); awaiting still raises.
        future.exception()


def _not_connected(topic: str) -> Unavailable:
    return Unavailable(f"NATS is not connected (reconnecting); the event for {topic} was not sent")


class JetStreamSink:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = PUBLISH_TIMEOUT_SECONDS,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._subjects: dict[str, str] = {}
        self._inbox = ""
        self._sent = 0
        # Waiting for room in the pipeline: (topic, data, headers, future).
        self._queue: deque[tuple[str, bytes, dict[str, str], asyncio.Future[int]]] = deque()
        # Sent, by reply token, in sending order (so oldest deadline first): future, deadline,
        # topic.
        self._in_flight: dict[str, tuple[asyncio.Future[int], float, str]] = {}
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await reachable(self.url)
        self._client = await nats.connect(
            self.url,
            name="ironcore",
            max_reconnect_attempts=-1,
            disconnected_cb=self._disconnected,
        )
        self._js = self._client.jetstream()
        self._inbox = self._client.new_inbox() + "."
        # nats-py re-subscribes this after a reconnect, so acks keep their route.
        await self._client.subscribe(self._inbox + "*", cb=self._acknowledged)
        self._tasks = [
            asyncio.create_task(self._send(self._client), name="jetstream-publisher"),
            asyncio.create_task(self._sweep(), name="jetstream-ack-timeouts"),
        ]
        log.info("connected to NATS at %s", self.url)

    async def ensure_stream(self, topic: str) -> None:
        js = self._context()
        try:
            await js.add_stream(
                name=stream_name(topic), subjects=[subject(topic)], description=topic
            )
        except BadRequestError as error:
            # Already there with this configuration: JetStream answers "stream name already in use".
            if "already in use" not in str(error.description):
                raise Unavailable(
                    f"JetStream refused the stream for {topic}: {error.description}"
                ) from None
        except NatsError as error:
            raise Unavailable(f"JetStream is unavailable: {error}") from None

    def submit(self, topic: str, data: bytes, attributes: dict[str, str]) -> asyncio.Future[int]:
        """Queue a message for `topic`'s stream; the future resolves to its stream sequence
        once JetStream has stored it, or fails with Unavailable."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self._client is None or not self._client.is_connected:
            _fail(future, _not_connected(topic))
            return future
        if topic not in self._subjects:
            self._subjects[topic] = subject(topic)
        self._queue.append((topic, data, attributes, future))
        self._wakeup.set()
        return future

    async def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> None:
        """Return once JetStream has stored the message; Unavailable if it did not."""
        await self.submit(topic, data, attributes)

    async def _send(self, client: Client) -> None:
        queue, in_flight = self._queue, self._in_flight
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            # client.publish only suspends when its 2 MB buffer is full, so the publishes
            # collect there and nats-py's flusher writes them at once.
            while queue and len(in_flight) < self.max_in_flight:
                topic, data, headers, future = queue.popleft()
                if future.done():
                    continue
                if not client.is_connected:
                    _fail(future, _not_connected(topic))
                    continue
                self._sent += 1
                token = str(self._sent)
                in_flight[token] = (future, time.monotonic() + self.timeout, topic)
                try:
                    await client.publish(
                        self._subjects[topic], data, reply=self._inbox + token, headers=headers
                    )
                except NatsError as error:
                    in_flight.pop(token, None)
                    _fail(future, Unavailable(f"NATS refused the event for {topic}: {error!r}"))

    async def _acknowledged(self, msg: Msg) -> None:
        entry = self._in_flight.pop(msg.subject[len(self._inbox) :], None)
        if entry is None:
            return  # already failed: overdue, or its connection was lost
        future, _, topic = entry
        if self._queue:
            self._wakeup.set()
        if future.done():
            return
        try:
            future.set_result(ack_sequence(msg, self._subjects[topic]))
        except ValueError as error:
            _fail(future, Unavailable(f"JetStream did not store the event for {topic}: {error}"))

    async def _sweep(self) -> None:
        in_flight = self._in_flight
        while True:
            await asyncio.sleep(min(1.0, self.timeout / 4))
            now = time.monotonic()
            overdue = []
            for token, (_, deadline, _) in in_flight.items():
                if deadline > now:
                    break
                overdue.append(token)
            for token in overdue:
                future, _, topic = in_flight.pop(token)
                _fail(
                    future,
                    Unavailable(
                        f"JetStream did not acknowledge the event for {topic} "
                        f"within {self.timeout:g} s"
                    ),
                )
            if overdue:
                log.warning("%d JetStream publishes got no acknowledgement in time", len(overdue))
                if self._queue:
                    self._wakeup.set()

    async def _disconnected(self) -> None:
        # An ack in transit is lost with the connection, and the server does not resend it:
        # the devices resend those events instead (at least once, as for any failure).
        lost = list(self._in_flight.values())
        self._in_flight.clear()
        self._wakeup.set()  # what waited for room now fails fast until the reconnect
        for future, _, topic in lost:
            _fail(
                future,
                Unavailable(
                    f"the connection to NATS was lost before JetStream acknowledged "
                    f"the event for {topic}"
                ),
            )
        if lost:
            log.warning("NATS disconnected: %d unacknowledged publishes failed", len(lost))

    def _context(self) -> JetStreamContext:
        if self._js is None:
            raise Unavailable("NATS is not connected")
        return self._js

    async def close(self) -> None:
        waiting = [f for *_, f in self._queue] + [f for f, *_ in self._in_flight.values()]
        if waiting:
            await asyncio.wait(waiting, timeout=self.timeout)
        for task in self._tasks:
            task.cancel()
        while self._queue:
            topic, *_, future = self._queue.popleft()
            _fail(
                future,
                Unavailable(f"ironcore is shutting down; the event for {topic} was not sent"),
            )
        if self._client is not None:
            await self._client.drain()
