"""The admin API's request bodies: read only for a route that takes one, capped, and checked
for JSON nesting before FastAPI parses them (`ironcore.bodies` says why and how)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException

from ironcore.api.envelope import error_response
from ironcore.api.ops import ASGIApp, Scope
from ironcore.bodies import ClientGone, RequestBody, base64_length, check_json_depth
from ironcore.errors import IronCoreError
from ironcore.firmware.rollout import UPLOAD_MAX_BYTES

# The largest admin body is a firmware upload: an image of up to UPLOAD_MAX_BYTES (64 MiB) in
# base64, 85.3 MiB, with its manifest (at most 4 KiB) and public key. The 1 MiB beyond that
# covers those with room to spare. The next largest, a manifest import, fits about 23,000
# entries (3.8 KB each) under it; a larger manifest is imported in parts.
ADMIN_BODY_MAX_BYTES = base64_length(UPLOAD_MAX_BYTES) + (1 << 20)
_WHAT = (
    "any admin API request; the largest, a firmware upload, carries an image of at most "
    f"{UPLOAD_MAX_BYTES} bytes in base64"
)


class BodyLimitMiddleware:
    """Admin request bodies, as `ironcore.bodies` asks.

    The body is read when the app first asks for it, which it does only once routing has found
    a route that takes one, after AuthMiddleware has let the caller in: then at most `cap`
    bytes (413, INVALID_ARGUMENT, the connection closed, the rest never read), and JSON nested
    too deeply is refused (400) before FastAPI's parser recurses into it. An answer that leaves
    a large body unread (a 401, a route that takes no body) closes the connection instead of
    letting the server read and discard the body (`RequestBody.must_close`).
    """

    def __init__(self, app: ASGIApp, cap: int = ADMIN_BODY_MAX_BYTES) -> None:
        self.app = app
        self.cap = cap

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(scope, receive, send, self.cap)
        with contextlib.suppress(_Answered):
            await self.app(scope, exchange.receive, exchange.send)


class _Answered(HTTPException):
    """The request was answered from inside `receive`; whatever the app sends next is dropped.
    An HTTPException, so that FastAPI and Starlette pass it on without logging it."""

    def __init__(self) -> None:
        super().__init__(400)


class _Exchange:
    def __init__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
        cap: int,
    ) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.cap = cap
        self.body = RequestBody(scope, receive, cap, _WHAT)
        self.asked = False
        self.answered = False

    async def receive(self) -> Any:
        if self.asked or not self.body.pending:
            return await self._receive()
        self.asked = True
        try:
            raw = await self.body.read()
            check_json_depth(raw)
        except ClientGone:
            return {"type": "http.disconnect"}
        except IronCoreError as error:
            response = error_response(
                error.code, error.message, error.violations, error.http_status
            )
            if self.body.must_close:
                response.headers["connection"] = "close"
            self.answered = True
            await response(self.scope, self._receive, self._send)
            raise _Answered from None
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(self, message: Any) -> None:
        if self.answered:
            return
        if message["type"] == "http.response.start" and self.body.must_close:
            headers = [*message.get("headers", ()), (b"connection", b"close")]
            message = {**message, "headers": headers}
        await self._send(message)
