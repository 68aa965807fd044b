"""`google.pubsub.v1.Subscriber/StreamingPull`: the bidirectional stream that
`google-cloud-pubsub`'s `SubscriberClient.subscribe()` consumes, over the same leases as the
unary Pull (`routing.pubsub`).

The first request names the subscription, the stream's ack deadline (10-600 s) and the client's
flow control; every request may carry acks and deadline changes (a deadline of 0 is a nack:
the message is deliverable again at once). The stream keeps, per open stream, the messages it
sent and nobody settled, and pulls only while they stay within `max_outstanding_messages` and
(estimated from the sizes seen so far, as a batch's sizes are known only once pulled)
`max_outstanding_bytes`. A message leaves that count when it is acknowledged or nacked, in the
stream or by the unary Acknowledge/ModifyAckDeadline of this process (the client library sends
its acks that way), or when its deadline passes; then the store hands it out again to any
stream or pull of the subscription.

Waiting for new messages is an adaptive poll of the store: at once while messages come, then
from `POLL_MIN_SECONDS` doubling to `POLL_MAX_SECONDS` while none do, and at once when acks or
nacks free room (a quarter of the client's window, while it still holds messages: a pull costs
mostly per transaction, so one per freed message would cost the most when busiest). Not a
wake-up from the event log's append path: events are appended by other processes too
(`--mqtt-workers`, other servers on the same database), and on PostgreSQL an event is
deliverable only once every older transaction on the server ended (see
`registry.store.pubsub`), which no in-process signal knows. The poll's idle cost is a few
empty pulls per second per stream.

Keep-alive: an empty StreamingPullResponse after `KEEPALIVE_SECONDS` without one, so proxies
and load balancers that close idle streams keep this one (the client library skips empty
responses); the client's own 30-second HTTP/2 pings are allowed by the server's options
(`rpc.server`).

A stream's failure ends that stream only, with the status of its error: INVALID_ARGUMENT for a
malformed request (the client library gives up), NOT_FOUND for a deleted subscription,
UNAVAILABLE for a database out of reach or a server shutting down (the client reconnects).
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ironcore.access.callers import Authenticator
from ironcore.access.roles import require
from ironcore.errors import InvalidArgument, IronCoreError, Unavailable
from ironcore.registry.store.audit import AuditStore
from ironcore.registry.store.pubsub import Delivered
from ironcore.routing.pubsub import (
    ACK_DEADLINE_MAX,
    ACK_DEADLINE_MIN,
    MAX_PULL_MESSAGES,
    PubSub,
    parse_subscription,
)
from ironcore.rpc.calls import DENIALS, actor, authorization, status

with warnings.catch_warnings():
    # As in rpc.device_manager: google-api-core's Python-version warning is not for a log.
    warnings.simplefilter("ignore", FutureWarning)
    from google.pubsub_v1 import types as pubsub

log = logging.getLogger(__name__)
_Request = pubsub.StreamingPullRequest.pb()
_Response = pubsub.StreamingPullResponse.pb()
POLL_MIN_SECONDS = 0.01
POLL_MAX_SECONDS = 0.2
KEEPALIVE_SECONDS = 15.0


class StreamingPull:
    """The method's handler and the registry of this process's open streams, which the unary
    Acknowledge and ModifyAckDeadline tell what they settled."""

    def __init__(
        self,
        pubsub_service: PubSub,
        authenticator: Authenticator,
        audit_log: AuditStore | None = None,
    ) -> None:
        """With `audit_log`, a stream refused for its credential or permission is recorded."""
        self.pubsub = pubsub_service
        self.authenticator = authenticator
        self.audit_log = audit_log
        self._streams: dict[str, set[_Stream]] = {}
        self.closing = False

    def handler(self) -> grpc.RpcMethodHandler[bytes, bytes]:
        return grpc.stream_stream_rpc_method_handler(self.call)

    async def call(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> None:
        credential = authorization(context)
        # Who was refused, for the audit log: the subscription is known once the first request is.
        found = actor(_Request(), None, credential, "StreamingPull")
        try:
            caller = await self.authenticator.caller(credential)
            first = await anext(requests, None)
            if first is None:
                raise InvalidArgument("The stream ended before its first request")
            request = _parse(first)
            found = actor(request, caller, credential, "StreamingPull")
            name = parse_subscription(request.subscription, "subscription")
            require(caller, "pubsub.subscriptions.consume", name)
            stream = _Stream(self, name, request)
            self._streams.setdefault(name, set()).add(stream)
            try:
                await stream.run(request, requests, context)
            finally:
                self._streams[name].discard(stream)
                if not self._streams[name]:
                    del self._streams[name]
        except IronCoreError as error:
            if self.audit_log is not None and isinstance(error, DENIALS):
                await self.audit_log.denied(found, error.code.name, error.message)
            await context.abort_with_status(status(error))
        except Exception:
            log.exception("unexpected error in gRPC StreamingPull")
            await context.abort(grpc.StatusCode.INTERNAL, "Internal error; see the server log")

    def settled(self, name: str, ack_ids: Sequence[str]) -> None:
        """Acknowledged or nacked: no longer outstanding on whichever stream sent them."""
        for stream in self._streams.get(name, ()):
            stream.settle(ack_ids)

    def extended(self, name: str, ack_ids: Sequence[str], seconds: int) -> None:
        if seconds == 0:
            self.settled(name, ack_ids)
            return
        for stream in self._streams.get(name, ()):
            stream.extend(ack_ids, seconds)

    def close(self) -> None:
        """End every stream with UNAVAILABLE, which the client library answers by reconnecting
        (to this address, so to the server that takes over)."""
        self.closing = True
        for streams in self._streams.values():
            for stream in streams:
                stream.wake.set()

    async def acknowledge(self, name: str, ack_ids: Sequence[str]) -> None:
        await self.pubsub.acknowledge(name, ack_ids)
        self.settled(name, ack_ids)

    async def modify_ack_deadline(self, name: str, ack_ids: Sequence[str], seconds: int) -> None:
        await self.pubsub.modify_ack_deadline(name, ack_ids, seconds)
        self.extended(name, ack_ids, seconds)


class _Stream:
    def __init__(self, service: StreamingPull, name: str, first: Any) -> None:
        self.service = service
        self.name = name
        self.deadline_seconds = _deadline(first.stream_ack_deadline_seconds)
        self.max_messages = max(0, first.max_outstanding_messages)
        self.max_bytes = max(0, first.max_outstanding_bytes)
        # ack id -> (size in bytes, loop time its lease ends)
        self.outstanding: dict[str, tuple[int, float]] = {}
        self.outstanding_bytes = 0
        self.sent_bytes = self.sent_messages = 0
        self.next_expiry = float("inf")
        self.wake = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    async def run(
        self,
        first: Any,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext[bytes, bytes],
    ) -> None:
        """Send messages until the client half-closes, a request fails, or the server stops."""
        await self.handle(first)
        reader = asyncio.create_task(self.read(requests))
        try:
            await self.send(context, reader)
        finally:
            reader.cancel()

    async def read(self, requests: AsyncIterator[bytes]) -> None:
        try:
            async for raw in requests:
                await self.handle(_parse(raw))
        finally:
            self.wake.set()

    async def handle(self, request: Any) -> None:
        if request.stream_ack_deadline_seconds:
            self.deadline_seconds = _deadline(request.stream_ack_deadline_seconds)
        if len(request.modify_deadline_ack_ids) != len(request.modify_deadline_seconds):
            raise InvalidArgument.field(
                "modify_deadline_seconds", "must have one entry per modify_deadline_ack_ids entry"
            )
        if request.ack_ids:
            await self.service.acknowledge(self.name, list(request.ack_ids))
        by_seconds: dict[int, list[str]] = {}
        for ack_id, seconds in zip(
            request.modify_deadline_ack_ids, request.modify_deadline_seconds, strict=True
        ):
            by_seconds.setdefault(seconds, []).append(ack_id)
        for seconds, ack_ids in by_seconds.items():
            await self.service.modify_ack_deadline(self.name, ack_ids, seconds)

    async def send(
        self, context: grpc.aio.ServicerContext[bytes, bytes], reader: asyncio.Task[None]
    ) -> None:
        delay = 0.0
        last_write = self.loop.time()
        while True:
            self.wake.clear()
            if reader.done():
                reader.result()  # a failed request ends the stream with its error
                return  # the client half-closed
            if self.service.closing:
                raise Unavailable("The server is shutting down; reconnect")
            now = self.loop.time()
            if now >= self.next_expiry:
                self.expire(now)
            room = self.room()
            if room:
                delivered = await self.service.pubsub.pull(self.name, room, self.deadline_seconds)
                if delivered:
                    await context.write(self.response(delivered))
                    last_write, delay = self.loop.time(), 0.0
                    continue
                delay = min(max(delay * 2, POLL_MIN_SECONDS), POLL_MAX_SECONDS)
            now = self.loop.time()
            if now - last_write >= KEEPALIVE_SECONDS:
                await context.write(b"")  # an empty StreamingPullResponse
                last_write = now
            wait = min(last_write + KEEPALIVE_SECONDS, self.next_expiry) - now
            if room:
                wait = min(wait, delay)
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    await self.wake.wait()
            except TimeoutError:
                pass

    def room(self) -> int:
        """How many messages may be pulled now without exceeding the client's flow control."""
        room = MAX_PULL_MESSAGES
        if self.max_messages:
            room = min(room, self.max_messages - len(self.outstanding))
            # A pull's cost is mostly per transaction: while the client still holds messages,
            # wait until a quarter of its window is free rather than pull the few each ack
            # frees.
            if self.outstanding and room < self.max_messages // 4:
                return 0
        if self.max_bytes:
            free = self.max_bytes - self.outstanding_bytes
            if free <= 0:
                return 0
            average = self.sent_bytes // self.sent_messages if self.sent_messages else 0
            room = min(room, max(1, free // average) if average else 1)
        return max(room, 0)

    def response(self, delivered: list[Delivered]) -> bytes:
        response = _Response()
        expires = self.loop.time() + self.deadline_seconds
        for event in delivered:
            received = response.received_messages.add()
            received.ack_id = ack_id = str(event.event_pk)
            received.delivery_attempt = event.attempt
            message = received.message
            message.data = event.data
            message.attributes.update(event.attributes)
            message.message_id = ack_id
            seconds, micros = divmod(event.publish_time, 1_000_000)
            message.publish_time.seconds, message.publish_time.nanos = seconds, micros * 1000
            size = message.ByteSize()
            self.sent_bytes += size
            previous = self.outstanding.get(ack_id)
            if previous:  # redelivered to the stream it was outstanding on
                self.outstanding_bytes -= previous[0]
            self.outstanding[ack_id] = (size, expires)
            self.outstanding_bytes += size
        self.sent_messages += len(delivered)
        self.next_expiry = min(self.next_expiry, expires)
        answer: bytes = response.SerializeToString()
        return answer

    def settle(self, ack_ids: Sequence[str]) -> None:
        for ack_id in ack_ids:
            found = self.outstanding.pop(ack_id, None)
            if found:
                self.outstanding_bytes -= found[0]
                self.wake.set()

    def extend(self, ack_ids: Sequence[str], seconds: int) -> None:
        expires = self.loop.time() + seconds
        for ack_id in ack_ids:
            found = self.outstanding.get(ack_id)
            if found:
                self.outstanding[ack_id] = (found[0], expires)
        self.next_expiry = min(self.next_expiry, expires)

    def expire(self, now: float) -> None:
        """Forget the messages whose lease ended: the store hands them out again."""
        gone = [ack_id for ack_id, (_, expires) in self.outstanding.items() if expires <= now]
        self.settle(gone)
        self.next_expiry = min(
            (expires for _, expires in self.outstanding.values()), default=float("inf")
        )


def _parse(raw: bytes) -> Any:
    try:
        return _Request.FromString(raw)
    except DecodeError as error:
        raise InvalidArgument(f"The request is not a valid StreamingPullRequest: {error}") from None


def _deadline(seconds: int) -> int:
    if not ACK_DEADLINE_MIN <= seconds <= ACK_DEADLINE_MAX:
        raise InvalidArgument.field(
            "stream_ack_deadline_seconds",
            f"must be between {ACK_DEADLINE_MIN} and {ACK_DEADLINE_MAX}, not {seconds}",
        )
    return seconds
