"""The admin REST API: Cloud IoT Core v1's device manager surface over FastAPI.

Routes are thin adapters over `DeviceManager`; this module wires them up with the pieces every
request shares: bearer-token authentication, snake_case query parameters, the error envelope and
metrics. Every service it calls is given to `create_app`, built once per process by the
composition root (`ironcore.runtime`). The HTTP device bridge is served by the same app, but the
API does not know it: the runtime puts it in front (`runtime.primary.http_app`) and says which
paths authenticate themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic.alias_generators import to_camel
from starlette.exceptions import HTTPException

from ironcore import __version__
from ironcore.access.assertions import service_audiences
from ironcore.access.backoff import Slowed, client_address
from ironcore.access.callers import Authenticator, TokenAuthenticator
from ironcore.access.service_accounts import ServiceAccounts
from ironcore.access.tokens import AdminTokens
from ironcore.api import (
    audit,
    devices,
    discovery,
    manifests,
    oauth,
    ops,
    project_policies,
    registries,
    rotation,
)
from ironcore.api import firmware as api_firmware
from ironcore.api import pubsub as api_pubsub
from ironcore.api import service_accounts as api_service_accounts
from ironcore.api import tokens as api_tokens
from ironcore.api.bodies import BodyLimitMiddleware
from ironcore.api.envelope import error_response
from ironcore.api.ops import ASGIApp, MetricsMiddleware, ReadinessCheck, Scope
from ironcore.errors import Code, IronCoreError
from ironcore.firmware.rollout import Firmware
from ironcore.metrics import Snapshot
from ironcore.registry.revocation import Revocations
from ironcore.registry.rotation import Rotations
from ironcore.registry.service import DeviceManager
from ironcore.registry.wire import invalid_argument
from ironcore.routing.pubsub import PubSub

log = logging.getLogger(__name__)
_HTTP_CODES = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    405: Code.UNIMPLEMENTED,
    409: Code.ALREADY_EXISTS,
    413: Code.INVALID_ARGUMENT,
    415: Code.INVALID_ARGUMENT,
    429: Code.RESOURCE_EXHAUSTED,
}
# The discovery document is public, as Google's was: it describes the API, and holds no data.
_PUBLIC_PATHS = (
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/$discovery/",
    "/discovery/",
)


def create_app(
    manager: DeviceManager,
    tokens: AdminTokens,
    pubsub: PubSub,
    revocations: Revocations,
    rotations: Rotations,
    firmware: Firmware,
    *,
    admin: bool = True,
    worker_metrics: Callable[[], Awaitable[list[Snapshot]]] | None = None,
    self_authenticating: Callable[[str], bool] = lambda path: False,
    readiness: Mapping[str, ReadinessCheck] | None = None,
    public_url: str = "",
    authenticator: Authenticator | None = None,
) -> FastAPI:
    """The admin API over the services the process built (`ironcore.runtime`); with
    `admin=False` only health and metrics, for an app that serves the device bridge alone on
    `--device-http-port`.

    `worker_metrics` gathers the MQTT worker processes' metrics, which /metrics merges into
    this process's. `self_authenticating` tells the paths whose routes authenticate callers
    themselves (the device bridge's, with device JWTs): those are let through without an admin
    token. `readiness` names the components /readyz checks (api/ops.py); without it, the
    database alone. `public_url` is the URL clients reach the API by (api/discovery.py);
    empty: the one each request was sent to. `authenticator` is the one the process's other
    adapters share (`access.backoff.Throttled` in a server, where failures back off per client
    address across all of them); default: the tokens' own, without back-off.
    """
    app = FastAPI(
        title="ironcore",
        version=__version__,
        description="Cloud IoT Core v1 compatible device manager",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.manager = manager
    app.state.tokens = tokens
    app.state.service_accounts = ServiceAccounts(tokens.store, tokens.clock)
    app.state.auth = authenticator or TokenAuthenticator(
        tokens, app.state.service_accounts, service_audiences(public_url)
    )
    app.state.draining = False
    app.state.pubsub = pubsub
    app.state.rotations = rotations
    app.state.revocations = revocations
    app.state.firmware = firmware
    app.state.worker_metrics = worker_metrics
    app.state.public_url = public_url
    app.state.readiness = readiness or {"database": lambda: manager.store.ping()}
    if admin:
        for module in (
            registries,
            devices,
            api_tokens,
            api_pubsub,
            manifests,
            rotation,
            api_firmware,
            discovery,
            api_service_accounts,
            oauth,
            audit,
            project_policies,
        ):
            app.include_router(module.router)
    app.include_router(ops.router)
    app.add_exception_handler(IronCoreError, _ironcore_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(
        AuthMiddleware,
        # The token endpoint's credential is the assertion in its body.
        self_authenticating=lambda path: path == oauth.TOKEN or self_authenticating(path),
    )
    app.add_middleware(NormalizeRequestMiddleware)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(MetricsMiddleware)
    return app


class AuthMiddleware:
    """Authenticates every API request before routing, so a caller without a valid token gets
    401 whatever else is wrong with the request; a client address that failed too often gets
    429 with Retry-After (`access.backoff`) before its token is looked at."""

    def __init__(self, app: ASGIApp, self_authenticating: Callable[[str], bool]) -> None:
        self.app = app
        self.self_authenticating = self_authenticating

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if (
            scope["type"] != "http"
            or scope["path"].startswith(_PUBLIC_PATHS)
            or self.self_authenticating(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        client_address(request.client.host if request.client else "")
        authorization = request.headers.get("authorization", "")
        try:
            caller = await request.app.state.auth.caller(authorization)
        except IronCoreError as error:
            response = error_response(error.code, error.message)
            if isinstance(error, Slowed):
                response.headers["retry-after"] = str(error.retry_after)
            await response(scope, receive, send)
            await audit.refused(scope, authorization, error.code.name, error.message)
            return
        scope.setdefault("state", {})["caller"] = caller
        await audit.audited(self.app, scope, receive, send, caller, authorization)


class NormalizeRequestMiddleware:
    """Accept what real clients send: `field_mask`, `page_size`,
    `gateway_list_options.associations_gateway_id`, … (query names are rewritten to the camelCase
    the routes declare), and JSON bodies whatever their Content-Type says (curl sends form
    encoding by default; the API only ever speaks JSON)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        inner = scope
        if scope["type"] == "http" and b"_" in scope.get("query_string", b""):
            pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
            renamed = [(".".join(to_camel(p) for p in k.split(".")), v) for k, v in pairs]
            inner = dict(inner, query_string=urlencode(renamed).encode("latin-1"))
        if scope["type"] == "http" and scope["method"] in ("POST", "PATCH", "PUT"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            inner = dict(inner, headers=[*headers, (b"content-type", b"application/json")])
        try:
            await self.app(inner, receive, send)
        finally:
            # The route the router chose, for the metrics middleware outside, which otherwise
            # matches every route again to name the request (api/ops.py).
            if inner is not scope and "route" in inner:
                scope["route"] = inner["route"]


async def _ironcore_error(_request: Request, exc: Exception) -> Any:
    assert isinstance(exc, IronCoreError)
    return error_response(exc.code, exc.message, exc.violations, exc.http_status)


async def _validation_error(_request: Request, exc: Exception) -> Any:
    assert isinstance(exc, RequestValidationError)
    error = invalid_argument(exc.errors())
    return error_response(error.code, error.message, error.violations)


async def _http_error(_request: Request, exc: Exception) -> Any:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, Code.UNKNOWN)
    # 405 has no google.rpc code of its own; the envelope's code still equals the HTTP status.
    status = 405 if exc.status_code == 405 else None
    return error_response(code, str(exc.detail), http_status=status)


async def _unexpected_error(request: Request, exc: Exception) -> Any:
    log.exception("unexpected error in %s %s", request.method, request.url.path)
    return error_response(Code.INTERNAL, "Internal error; see the server log")
