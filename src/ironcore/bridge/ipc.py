"""Frames between the processes of one ironcore server: the primary and its MQTT workers.

Each worker holds one end of a Unix socket pair whose other end the primary keeps. A frame is a
4-byte big-endian length, then what it counts: a 1-byte frame type, a 4-byte request id and a
message of the cluster protocol as `cluster.messages.encode` writes it (the same bytes the
servers send each other over NATS: data, never code). A one-way message has request id 0; a
request has an id of its own and is answered by an answer frame with that id, whose message is
the answer (`cluster.messages.Failed` if handling the request failed).

Messages are handled in the order they arrive; a handler that must wait (a database read) runs
as a task of its own and answers when it is done. A frame that breaks these rules means the
other process is broken: the channel closes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Awaitable, Callable

from ironcore.bridge.cluster.messages import Failed, Message, MessageError, decode, encode

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
_HEAD = struct.Struct(">BI")  # frame type, request id
_ONE_WAY, _REQUEST, _ANSWER = 0, 1, 2
# A frame at most: a config (64 KiB, base64) with room to spare; larger means a broken peer.
MAX_FRAME = 1 << 20
# How long a request waits for its answer before it fails.
REQUEST_SECONDS = 5.0

# What a handler returns: a request's answer, or an awaitable of it (or of nothing, for a message).
Reply = Message | Awaitable[Message | None] | None
# Called with each message that is not an answer.
Handler = Callable[[Message], Reply]


class ChannelClosed(Exception):
    """The process at the other end is gone."""


class RemoteError(Exception):
    """The other process failed to handle a request; the message says how."""


class FrameError(ValueError):
    """A frame that breaks the rules above."""


class Channel(asyncio.Protocol):
    def __init__(self, handler: Handler, name: str) -> None:
        self.handler = handler
        self.name = name
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, sock: socket.socket, handler: Handler, name: str) -> Channel:
        loop = asyncio.get_running_loop()
        _, channel = await loop.create_connection(lambda: cls(handler, name), sock=sock)
        return channel

    # Sending

    def send(self, message: Message) -> None:
        """A message that needs no answer; dropped (and logged) if the other side is gone."""
        if not self._open():
            log.debug("%s: dropped %s, the channel is closed", self.name, message.kind)
            return
        self._write(_ONE_WAY, 0, message)

    async def request(self, message: Message, seconds: float = REQUEST_SECONDS) -> Message:
        """Send a request and wait `seconds` at most for its answer (TimeoutError); a `Failed`
        answer raises RemoteError."""
        if not self._open():
            raise ChannelClosed(f"{self.name} is gone")
        self._next_id += 1
        request_id = self._next_id
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            self._write(_REQUEST, request_id, message)
            async with asyncio.timeout(seconds):
                received = await answer
        finally:
            self._waiting.pop(request_id, None)
        if isinstance(received, Failed):
            raise RemoteError(received.error)
        return received

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def _write(self, frame_type: int, request_id: int, message: Message) -> None:
        assert self._transport is not None
        body = encode(message)
        length = _HEAD.size + len(body)
        self._transport.write(_LENGTH.pack(length) + _HEAD.pack(frame_type, request_id) + body)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > MAX_FRAME:
                log.error("%s sent a frame of %d bytes; closing the channel", self.name, length)
                self.close()
                return
            if len(self._buffer) < _LENGTH.size + length:
                return
            frame = bytes(self._buffer[_LENGTH.size : _LENGTH.size + length])
            del self._buffer[: _LENGTH.size + length]
            try:
                frame_type, request_id, message = _parse(frame)
            except ValueError as error:  # FrameError or MessageError
                log.error("%s sent a malformed frame (%s); closing the channel", self.name, error)
                self.close()
                return
            if frame_type == _ANSWER:
                self._answered(request_id, message)
            else:
                self._handle(request_id, message)

    def connection_lost(self, exc: Exception | None) -> None:
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(ChannelClosed(f"{self.name} is gone"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _answered(self, request_id: int, message: Message) -> None:
        answer = self._waiting.get(request_id)
        if answer is not None and not answer.done():
            answer.set_result(message)

    def _handle(self, request_id: int, message: Message) -> None:
        try:
            result = self.handler(message)
        except Exception as error:  # a handler's failure is answered, never fatal to the channel
            log.exception("%s: handling %s failed", self.name, message.kind)
            self._answer(request_id, _failed(error))
            return
        if isinstance(result, Awaitable):
            task = asyncio.ensure_future(self._answer_later(request_id, message, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._answer(request_id, result)

    async def _answer_later(
        self, request_id: int, message: Message, result: Awaitable[Message | None]
    ) -> None:
        try:
            answer = await result
        except Exception as error:  # as above
            log.exception("%s: handling %s failed", self.name, message.kind)
            answer = _failed(error)
        self._answer(request_id, answer)

    def _answer(self, request_id: int, answer: Message | None) -> None:
        if not request_id or not self._open():
            return
        if answer is None:
            answer = Failed("the request was handled without an answer")
        try:
            self._write(_ANSWER, request_id, answer)
        except ValueError as error:  # a float JSON cannot carry (NaN) in the answer
            log.exception("%s: could not send the answer %s", self.name, answer.kind)
            self._write(_ANSWER, request_id, _failed(error))


def _failed(error: Exception) -> Failed:
    return Failed(f"{type(error).__name__}: {error}")


def _parse(frame: bytes) -> tuple[int, int, Message]:
    if len(frame) < _HEAD.size:
        raise FrameError(f"a frame of {len(frame)} bytes has no type and request id")
    frame_type, request_id = _HEAD.unpack_from(frame)
    if frame_type not in (_ONE_WAY, _REQUEST, _ANSWER):
        raise FrameError(f"no frame type {frame_type}")
    if (frame_type == _ONE_WAY) != (request_id == 0):
        raise FrameError("a request or answer without a request id, or a message with one")
    try:
        return frame_type, request_id, decode(frame[_HEAD.size :])
    except MessageError as error:
        raise FrameError(str(error)) from None
