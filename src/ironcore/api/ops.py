"""Health, readiness and Prometheus metrics; no authentication, for load balancers and scrapers.

Readiness is a set of named components, each an async check (`ReadinessCheck`) the process
gives `create_app` (`readiness`): the database, the disk, the MQTT listener, the bus. /readyz
runs them together and answers within `READY_SECONDS` whatever they do: 200 when every one
returned, else 503 naming what is not ready and why (a check that has not answered in time is
"no answer within 2 s"):

    {"status": "unavailable", "components": {"database": "...", "disk": "ok", "mqtt": "ok"}}
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.routing import Match

from ironcore.metrics import LATENCY, REQUESTS, Merged

router = APIRouter()
# A component's readiness: returns when it is ready, raises when not (its message says why).
ReadinessCheck = Callable[[], Awaitable[None]]
# /readyz answers within this, so a hung database cannot hang a load balancer's probe.
READY_SECONDS = 2.0

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


class MetricsMiddleware:
    """Counts requests and their latency by route name (the gRPC method name) and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            method = _method_name(scope)
            REQUESTS.labels(method, str(status)).inc()
            LATENCY.labels(method).observe(time.perf_counter() - start)


def _method_name(scope: Scope) -> str:
    """The name of the route that served the request, or "unmatched".

    The router records its choice in the scope it is given; a middleware that rewrites the request
    (ironcore.api.app.NormalizeRequestMiddleware, for every POST and PATCH) hands on a copy, as
    ASGI asks, so the choice is not always visible here; and a request refused before routing (no
    token) has none. Then match the app's routes again: ironcore includes its routers without a
    prefix, so each route matches the request path as it is.
    """
    route = scope.get("route")
    if route is None or getattr(route, "name", None) is None:
        route = _find_route(getattr(scope.get("app"), "routes", ()), scope)
    return getattr(route, "name", None) or "unmatched"


def _find_route(routes: Any, scope: Scope) -> Any:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's include_router()
        if included is not None:
            found = _find_route(included.routes, scope)
            if found is not None:
                return found
        elif route.matches(scope)[0] is Match.FULL:
            return route
    return None


@router.get("/healthz", include_in_schema=False)
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    if getattr(request.app.state, "draining", False):
        return JSONResponse({"status": "draining"}, status_code=503)
    components = await check_components(request.app.state.readiness)
    ready = all(state == "ok" for state in components.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "components": components},
        status_code=200 if ready else 503,
    )


async def check_components(checks: Mapping[str, ReadinessCheck]) -> dict[str, str]:
    """Run every check at once: "ok" for each that returned within READY_SECONDS, else why not.
    Checks still running then are cancelled and not waited for (a hung one may not end)."""
    tasks = {name: asyncio.ensure_future(check()) for name, check in checks.items()}
    # asyncio.wait, not gather: cancelled, gather would wait for its checks to end.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(READY_SECONDS):
            if tasks:
                await asyncio.wait(tasks.values())
    states = {}
    for name, task in tasks.items():
        if not task.done() or task.cancelled():
            task.cancel()
            states[name] = f"no answer within {READY_SECONDS:g} s"
        elif (error := task.exception()) is not None:
            states[name] = str(error) or type(error).__name__
        else:
            states[name] = "ok"
    return states


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    worker_metrics = getattr(request.app.state, "worker_metrics", None)
    if worker_metrics is None:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
    merged = Merged(await worker_metrics())
    return Response(generate_latest(merged), media_type=CONTENT_TYPE_LATEST)
