"""`ipc.Channel` between two ends of a real Unix socket pair: messages, requests and their
answers, failures that are answered, and peers that break the framing or go away."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ironcore.bridge.ipc import MAX_FRAME, Channel, ChannelClosed, RemoteError


class Recorder:
    """A handler that records what it was told and answers requests from `answers`."""

    def __init__(self, **answers: Any) -> None:
        self.seen: list[tuple[str, list[Any]]] = []
        self.answers = answers
        self.arrived = asyncio.Event()

    def __call__(self, kind: str, arguments: list[Any]) -> Any:
        self.seen.append((kind, arguments))
        self.arrived.set()
        answer = self.answers.get(kind)
        return answer(*arguments) if callable(answer) else answer


async def pair(left: Any, right: Any) -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    return await Channel.open(a, left, "left"), await Channel.open(b, right, "right")


async def until(predicate: Any, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 (a plain predicate, nothing to wait on)
            await asyncio.sleep(0.005)


async def test_messages_arrive_in_order_with_their_arguments() -> None:
    right = Recorder()
    left, _ = await pair(Recorder(), right)
    for n in range(200):
        left.send("count", n, {"n": n}, "é" * n)
    await until(lambda: len(right.seen) == 200)
    assert right.seen == [("count", [n, {"n": n}, "é" * n]) for n in range(200)]


async def test_requests_are_answered_by_value_or_awaitable() -> None:
    async def later(x: int) -> int:
        await asyncio.sleep(0.01)
        return x * 2

    left, _ = await pair(Recorder(), Recorder(double=lambda x: x * 2, later=later, nothing=None))
    assert await left.request("double", 21) == 42
    assert await left.request("later", 5) == 10
    assert await left.request("nothing") is None
    answers = await asyncio.gather(*(left.request("later", n) for n in range(50)))
    assert answers == [n * 2 for n in range(50)]


async def test_a_failing_handler_answers_with_an_error_and_the_channel_lives_on() -> None:
    def broken(x: int) -> int:
        raise ValueError(f"cannot handle {x}")

    async def broken_later() -> None:
        raise KeyError("missing")

    left, _ = await pair(Recorder(), Recorder(broken=broken, later=broken_later, ok=1))
    with pytest.raises(RemoteError, match="ValueError: cannot handle 3"):
        await left.request("broken", 3)
    with pytest.raises(RemoteError, match="KeyError"):
        await left.request("later")
    assert await left.request("ok") == 1


async def test_an_unanswered_request_times_out() -> None:
    never = asyncio.get_running_loop().create_future()
    left, _ = await pair(Recorder(), Recorder(hang=lambda: never))
    with pytest.raises(TimeoutError):
        await left.request("hang", seconds=0.1)
    never.cancel()


async def test_a_peer_going_away_fails_waiting_requests_and_closes() -> None:
    never = asyncio.get_running_loop().create_future()
    left, right = await pair(Recorder(), Recorder(hang=lambda: never))
    waiting = asyncio.ensure_future(left.request("hang"))
    await asyncio.sleep(0.05)
    right.close()
    with pytest.raises(ChannelClosed):
        await waiting
    await asyncio.wait_for(left.closed, 5)
    with pytest.raises(ChannelClosed):
        await left.request("hang")
    left.send("dropped")  # nothing to send to: dropped, not raised
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


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        (frame(b"not json"), "not JSON"),
        (frame(b'{"kind": "x"}'), "an object, not an array"),
        (frame(b"[]"), "no kind"),
        (frame(b'["x"]'), "no request id"),
        (struct.pack(">I", MAX_FRAME + 1) + b"x" * 10, "a frame over the limit"),
    ],
)
async def test_a_broken_frame_closes_the_channel(frames: bytes, why: str) -> None:
    channel, recorder = await raw_peer(frame(b'["before",0]') + frames + frame(b'["after",0]'))
    await asyncio.wait_for(channel.closed, 5)
    assert recorder.seen == [("before", [])], why


async def test_frames_split_anywhere_still_arrive_whole() -> None:
    a, b = socket.socketpair()
    recorder = Recorder()
    await Channel.open(a, recorder, "channel")
    stream = b"".join(frame(json.dumps(["m", 0, n, "x" * n]).encode()) for n in range(40))
    for start in range(0, len(stream), 7):
        b.sendall(stream[start : start + 7])
        await asyncio.sleep(0)
    await until(lambda: len(recorder.seen) == 40)
    assert recorder.seen == [("m", [n, "x" * n]) for n in range(40)]
    b.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    async def run() -> None:
        channel, _ = await raw_peer(data)
        await asyncio.wait_for(channel.closed, 5)
        channel.close()

    asyncio.run(run())
