"""Request bodies of the HTTP adapters (the admin API and the HTTP device bridge): read from the
ASGI receive channel up to a cap, and parsed as JSON no deeper than a limit.

What the adapters must do with them:

- read a body only once its caller is authenticated (a caller without a valid token gets 401
  whatever its body, and costs no more than its headers);
- read it with `RequestBody.read()`: a declared Content-Length over the cap is refused before
  a byte is read, and a body that grows past the cap while it streams is refused at once;
- close the connection with the answer when `RequestBody.must_close` says so: a body left
  unread that is large or of unknown size (refused past its cap, or before it was read). The
  HTTP server would otherwise read all of it, to discard it and reuse the connection. A small
  body left unread (a 401 for an expired token) is left to that: closing a connection with
  unread data resets it, and a client writing its body may then miss the answer;
- parse it with `parse_json` (or check it with `check_json_depth` before another parser does):
  JSON nested deeper than `JSON_MAX_DEPTH` is INVALID_ARGUMENT, never a RecursionError.

Errors are `ironcore.errors` values; `PayloadTooLarge` says its HTTP status (413).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar

from ironcore.errors import InvalidArgument

# What a JSON request carries besides its payload's base64: field names, a resource name, a
# subfolder and gateway ids (766 bytes, 4.5 KB even with every character written as a \u
# escape), pretty-printing, and the "\/" some encoders (PHP's json_encode) write for each "/"
# of the base64 (1 in 64 of its characters: 5.3 KB for a full event). 16 KiB covers them all
# with room to spare, and is 5 % of the largest device body.
BODY_ENVELOPE_BYTES = 16 * 1024
# How deep a request's JSON may nest. The deepest body ironcore takes, setIamPolicy with a
# condition, nests 5 levels; protobuf's JSON parser (json_format.Parse) allows 100 by default.
# Well below Python's recursion limit, so no parser or validator behind it can overflow.
JSON_MAX_DEPTH = 32
# A body left unread up to this size is read and discarded by the HTTP server after the answer,
# which keeps the connection; a larger one closes it.
DRAIN_MAX_BYTES = 1 << 20

ASGIMessage = Mapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]


def base64_length(size: int) -> int:
    """The length of `size` bytes in padded base64."""
    return 4 * -(-size // 3)


def body_cap(payload_bytes: int) -> int:
    """The largest JSON body that carries a payload of at most `payload_bytes` in base64."""
    return base64_length(payload_bytes) + BODY_ENVELOPE_BYTES


class PayloadTooLarge(InvalidArgument):
    """A request body over its cap: INVALID_ARGUMENT with the message Google's API front end
    gives an oversized request ("Request payload size exceeds the limit: N bytes.", with 400,
    as Cloud Logging, Speech-to-Text and Gmail users report; what Cloud IoT Core's HTTP bridge
    answered is not on record). ironcore answers HTTP 413, the status that says so, and closes
    the connection."""

    http_status: ClassVar[int | None] = 413

    @classmethod
    def over(cls, cap: int, what: str) -> PayloadTooLarge:
        return cls(f"Request payload size exceeds the limit: {cap} bytes ({what}).")


class ClientGone(Exception):
    """The client disconnected before its body was complete: there is no one to answer."""


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class RequestBody:
    """The body of one HTTP request (ASGI `scope` and `receive`), read at most once, and at
    most `cap` bytes of it; `what` says what the cap is for (in the error over it)."""

    def __init__(self, scope: Mapping[str, Any], receive: Receive, cap: int, what: str) -> None:
        self._receive = receive
        self.cap = cap
        self.what = what
        headers = scope.get("headers", ())
        length = _header(headers, b"content-length")
        # The HTTP server has checked the header (a bad one never reaches the app).
        self.declared = int(length) if length is not None and length.strip().isdigit() else None
        chunked = _header(headers, b"transfer-encoding") is not None
        # True while the client has a body the app has not read.
        self.pending = chunked or bool(self.declared)

    @property
    def must_close(self) -> bool:
        """Whether the answer must close the connection: a body is left unread that is larger
        than the cap or `DRAIN_MAX_BYTES`, or of a size not declared."""
        limit = min(self.cap, DRAIN_MAX_BYTES)
        return self.pending and (self.declared is None or self.declared > limit)

    async def read(self) -> bytes:
        """The whole body; PayloadTooLarge as soon as it is known to be larger than the cap,
        before reading past it; ClientGone if the client left."""
        cap = self.cap
        if self.declared is not None and self.declared > cap:
            raise PayloadTooLarge.over(cap, self.what)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                raise PayloadTooLarge.over(cap, self.what)
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                self.pending = False
                return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """The JSON value of a request body (UTF-8, -16 or -32, as JSON allows); InvalidArgument
    about the field `body` when it is not JSON, or opens more than `JSON_MAX_DEPTH` levels
    (whether it closes them or not)."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        if _may_be_too_deep(raw) and _opens_deeper_than(error.doc, error.pos, JSON_MAX_DEPTH):
            raise _too_deep() from None
        raise InvalidArgument.field(
            "body", f"Invalid JSON payload received ({error.msg} at character {error.pos})"
        ) from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError:  # not UTF-8, -16 or -32; an integer too long to convert
        raise InvalidArgument.field(
            "body", "Invalid JSON payload received (not UTF-8 text, or a number too long)"
        ) from None
    if _may_be_too_deep(raw) and _deeper_than(value, JSON_MAX_DEPTH):
        raise _too_deep()
    return value


def check_json_depth(raw: bytes) -> None:
    """InvalidArgument if `raw` is JSON nested deeper than `JSON_MAX_DEPTH`, for a body another
    parser reads (the admin API's FastAPI); anything else that is not JSON is left to it."""
    if not _may_be_too_deep(raw):
        return
    try:
        value = json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except json.JSONDecodeError as error:
        if _opens_deeper_than(error.doc, error.pos, JSON_MAX_DEPTH):
            raise _too_deep() from None
        return
    except ValueError:
        return
    if _deeper_than(value, JSON_MAX_DEPTH):
        raise _too_deep()


def _may_be_too_deep(raw: bytes) -> bool:
    # Each level opens with "[" or "{": with no more of them than the limit, JSON cannot nest
    # deeper (counted in C, so the hot path costs a scan of the body and nothing more).
    return raw.count(b"[") + raw.count(b"{") > JSON_MAX_DEPTH


_SPECIAL = re.compile(r'[\[\]{}"\\]')


def _opens_deeper_than(text: str, end: int, limit: int) -> bool:
    """Whether JSON `text`, up to the syntax error at `end`, opens more than `limit` levels:
    so that JSON too deep is refused as such whether it closes them or not."""
    depth = 0
    in_string = False
    escaped = -1  # the position a backslash escapes
    for match in _SPECIAL.finditer(text, 0, end):
        at = match.start()
        char = text[at]
        if at == escaped:
            continue
        if in_string:
            if char == "\\":
                escaped = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _too_deep() -> InvalidArgument:
    return InvalidArgument.field(
        "body",
        f"Invalid JSON payload received (nested too deeply: at most {JSON_MAX_DEPTH} levels)",
    )
