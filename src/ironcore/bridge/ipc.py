"""Messages between the processes of one ironcore server: the primary and its MQTT workers.

Each worker holds one end of a Unix socket pair whose other end the primary keeps. A frame is a
4-byte big-endian length and a JSON array `[kind, request id, *arguments]`; request id 0 asks
for no answer, any other id is answered by a `["reply", id, value]` (or `["error", id,
message]`) frame. JSON rather than pickle: a frame carries data, never code. Bytes travel as
base64 text, chosen by the message's sender.

Messages are handled in the order they arrive; a handler that must wait (a database read) runs
as a task of its own and answers when it is done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
# A frame at most: a config (64 KiB, base64) with room to spare; larger means a broken peer.
MAX_FRAME = 1 << 20
# How long a request waits for its answer before it fails.
REQUEST_SECONDS = 5.0

# Called with a message's kind and arguments; what it returns (or what the awaitable it returns
# resolves to) answers a request.
Handler = Callable[[str, list[Any]], Any]


class ChannelClosed(Exception):
    """The process at the other end is gone."""


class RemoteError(Exception):
    """The other process failed to handle a request; the message says how."""


class Channel(asyncio.Protocol):
    def __init__(self, handler: Handler, name: str) -> None:
        self.handler = handler
        self.name = name
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, sock: socket.socket, handler: Handler, name: str) -> Channel:
        loop = asyncio.get_running_loop()
        _, channel = await loop.create_connection(lambda: cls(handler, name), sock=sock)
        return channel

    # Sending

    def send(self, kind: str, *arguments: Any) -> None:
        """A message that needs no answer; dropped (and logged) if the other side is gone."""
        if self._transport is None or self._transport.is_closing():
            log.debug("%s: dropped %s, the channel is closed", self.name, kind)
            return
        self._write([kind, 0, *arguments])

    async def request(self, kind: str, *arguments: Any, seconds: float = REQUEST_SECONDS) -> Any:
        """Send a message and wait `seconds` at most for its answer (TimeoutError)."""
        if self._transport is None or self._transport.is_closing():
            raise ChannelClosed(f"{self.name} is gone")
        self._next_id += 1
        request_id = self._next_id
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            self._write([kind, request_id, *arguments])
            async with asyncio.timeout(seconds):
                return await answer
        finally:
            self._waiting.pop(request_id, None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _write(self, message: list[Any]) -> None:
        assert self._transport is not None
        body = json.dumps(message, separators=(",", ":")).encode()
        self._transport.write(_LENGTH.pack(len(body)) + body)

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
            body = bytes(self._buffer[_LENGTH.size : _LENGTH.size + length])
            del self._buffer[: _LENGTH.size + length]
            try:
                kind, request_id, arguments = _parse(body)
            except ValueError as error:
                log.error("%s sent a malformed frame (%s); closing the channel", self.name, error)
                self.close()
                return
            self._dispatch(kind, request_id, arguments)

    def connection_lost(self, exc: Exception | None) -> None:
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(ChannelClosed(f"{self.name} is gone"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _dispatch(self, kind: str, request_id: int, arguments: list[Any]) -> None:
        if kind in ("reply", "error"):
            answer = self._waiting.get(request_id)
            if answer is not None and not answer.done():
                if kind == "reply":
                    answer.set_result(arguments[0])
                else:
                    answer.set_exception(RemoteError(arguments[0]))
            return
        try:
            result = self.handler(kind, arguments)
        except Exception as error:  # a handler's failure is answered, never fatal to the channel
            log.exception("%s: handling %s failed", self.name, kind)
            if request_id:
                self._write(["error", request_id, f"{type(error).__name__}: {error}"])
            return
        if isinstance(result, Awaitable):
            task = asyncio.ensure_future(self._answer_later(kind, request_id, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif request_id:
            self._write(["reply", request_id, result])

    async def _answer_later(self, kind: str, request_id: int, result: Awaitable[Any]) -> None:
        try:
            value = await result
        except Exception as error:  # as above
            log.exception("%s: handling %s failed", self.name, kind)
            if request_id and self._transport is not None and not self._transport.is_closing():
                self._write(["error", request_id, f"{type(error).__name__}: {error}"])
            return
        if request_id and self._transport is not None and not self._transport.is_closing():
            self._write(["reply", request_id, value])


def _parse(body: bytes) -> tuple[str, int, list[Any]]:
    message = json.loads(body)  # a JSONDecodeError is a ValueError
    if (
        not isinstance(message, list)
        or len(message) < 2
        or not isinstance(message[0], str)
        or type(message[1]) is not int
    ):
        raise ValueError("not an array of a kind, a request id and arguments")
    kind, request_id, *arguments = message
    if kind in ("reply", "error") and len(arguments) != 1:
        raise ValueError(f"a {kind} carries exactly one value")
    return kind, request_id, arguments
