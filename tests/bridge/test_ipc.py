"""`ipc.Channel` between two ends of a real Unix socket pair: messages, requests and their
answers, failures that are answered, and peers that break the framing or go away."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ironcore.bridge.cluster.messages import (
    Command,
    Delivered,
    Fingerprint,
    Forget,
    KeyInUse,
    Message,
    Ready,
    encode,
)
from ironcore.bridge.ipc import MAX_FRAME, Channel, ChannelClosed, RemoteError, Reply


class Recorder:
    """A handler that records what it was told and answers requests with `answer`."""

    def __init__(self, answer: Callable[[Any], Reply] | None = None) -> None:
        self.seen: list[Message] = []
        self.answer = answer

    def __call__(self, message: Message) -> Reply:
        self.seen.append(message)
        return self.answer(message) if self.answer is not None else None


async def pair(left: Any, right: Any) -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    return await Channel.open(a, left, "left"), await Channel.open(b, right, "right")


async def until(predicate: Any, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 (a plain predicate, nothing to wait on)
            await asyncio.sleep(0.005)


async def test_messages_arrive_in_order_with_their_fields() -> None:
    right = Recorder()
    left, _ = await pair(Recorder(), right)
    for n in range(200):
        left.send(Forget("é" * n, n))
    await until(lambda: len(right.seen) == 200)
    assert right.seen == [Forget("é" * n, n) for n in range(200)]


async def test_requests_are_answered_by_value_or_awaitable() -> None:
    async def later(n: int) -> Message:
        await asyncio.sleep(0.01)
        return Fingerprint(str(n * 2))

    def answer(request: Any) -> Reply:
        if isinstance(request, Command):
            return Delivered(request.data == b"\x00\xff")
        return later(request.num_id)

    left, _ = await pair(Recorder(), Recorder(answer))
    assert await left.request(Command(1, "sys", b"\x00\xff")) == Delivered(True)
    assert await left.request(KeyInUse(5)) == Fingerprint("10")
    answers = await asyncio.gather(*(left.request(KeyInUse(n)) for n in range(50)))
    assert answers == [Fingerprint(str(n * 2)) for n in range(50)]


async def test_a_failing_handler_answers_with_an_error_and_the_channel_lives_on() -> None:
    async def broken_later() -> Message:
        raise KeyError("missing")

    def answer(request: Any) -> Reply:
        if isinstance(request, Command):
            raise ValueError(f"cannot handle {request.num_id}")
        if isinstance(request, Ready):
            return None  # a request handled without an answer
        return broken_later() if request.num_id == 0 else Fingerprint("ok")

    left, _ = await pair(Recorder(), Recorder(answer))
    with pytest.raises(RemoteError, match="ValueError: cannot handle 3"):
        await left.request(Command(3, "", b""))
    with pytest.raises(RemoteError, match="KeyError"):
        await left.request(KeyInUse(0))
    with pytest.raises(RemoteError, match="without an answer"):
        await left.request(Ready("left"))
    assert await left.request(KeyInUse(1)) == Fingerprint("ok")


async def test_an_unanswered_request_times_out() -> None:
    never: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
    left, _ = await pair(Recorder(), Recorder(lambda _: never))
    with pytest.raises(TimeoutError):
        await left.request(KeyInUse(1), seconds=0.1)
    never.cancel()


async def test_a_peer_going_away_fails_waiting_requests_and_closes() -> None:
    never: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
    left, right = await pair(Recorder(), Recorder(lambda _: never))
    waiting = asyncio.ensure_future(left.request(KeyInUse(1)))
    await asyncio.sleep(0.05)
    right.close()
    with pytest.raises(ChannelClosed):
        await waiting
    await asyncio.wait_for(left.closed, 5)
    with pytest.raises(ChannelClosed):
        await left.request(KeyInUse(1))
    left.send(Forget("left", 1))  # nothing to send to: dropped, not raised
    never.cancel()


async def raw_peer(frames: bytes) -> tuple[Channel, Recorder]:
    """A channel whose peer writes `frames` as they are."""
    a, b = socket.socketpair()
    recorder = Recorder()
    channel = await Channel.open(a, recorder, "channel")
    b.sendall(frames)
    b.shutdown(socket.SHUT_WR)
    await asyncio.sleep(0)
    channel._peer = b  # type: ignore[attr-defined]  # kept open until the test ends
    return channel, recorder


def frame(body: bytes, frame_type: int = 0, request_id: int = 0) -> bytes:
    head = struct.pack(">BI", frame_type, request_id)
    return struct.pack(">I", len(head) + len(body)) + head + body


BEFORE, AFTER = Forget("peer", 1), Forget("peer", 2)


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        (frame(b"not json"), "not JSON"),
        (frame(b'["forget", "peer", 3]'), "an array, not an object"),
        (frame(b'{"kind": "forget", "origin": "peer"}'), "a field missing"),
        (frame(b'{"kind": "no-such-thing"}'), "no such kind"),
        (frame(encode(BEFORE), frame_type=7), "no such frame type"),
        (frame(encode(BEFORE), request_id=4), "a one-way message with a request id"),
        (frame(encode(KeyInUse(1)), frame_type=1), "a request without a request id"),
        (struct.pack(">I", 3) + b"abc", "a frame too short for its head"),
        (struct.pack(">I", MAX_FRAME + 1) + b"x" * 10, "a frame over the limit"),
    ],
)
async def test_a_broken_frame_closes_the_channel(frames: bytes, why: str) -> None:
    channel, recorder = await raw_peer(frame(encode(BEFORE)) + frames + frame(encode(AFTER)))
    await asyncio.wait_for(channel.closed, 5)
    assert recorder.seen == [BEFORE], why


async def test_frames_split_anywhere_still_arrive_whole() -> None:
    a, b = socket.socketpair()
    recorder = Recorder()
    await Channel.open(a, recorder, "channel")
    stream = b"".join(frame(encode(Forget("x" * n, n))) for n in range(40))
    for start in range(0, len(stream), 7):
        b.sendall(stream[start : start + 7])
        await asyncio.sleep(0)
    await until(lambda: len(recorder.seen) == 40)
    assert recorder.seen == [Forget("x" * n, n) for n in range(40)]
    b.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    async def run() -> None:
        channel, _ = await raw_peer(data)
        await asyncio.wait_for(channel.closed, 5)
        channel.close()

    asyncio.run(run())
