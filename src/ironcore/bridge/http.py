"""The HTTP device bridge (Cloud IoT Core's `cloudiotdevice` v1): publishEvent, setState and
getConfig, each authenticated by the device's JWT as a bearer token.

The routes are thin: what a device may do (its JWT, gateways, state and its rate, configs) is
the device channel's (`bridge.channel`), shared with the MQTT bridge, so a device is held to the
same rules whichever bridge it uses; this module translates requests and answers.
Every success answers 200 with `{}` (the official samples treat anything else, 204 included,
as a failure). `DeviceRoutes` serves them in front of the admin API's FastAPI stack, with the
same error envelope and metrics.

Bodies (`ironcore.bodies`): the device's JWT is checked before its body is read (a body that
names a gateway is read once the caller is known, then the gateway checked); a body is read up
to its method's cap, the largest payload the contract allows in base64 and the JSON around it
(413 and the connection closed beyond it, the rest unread), and parsed as JSON no deeper than
`bodies.JSON_MAX_DEPTH` levels.
"""

from __future__ import annotations

import functools
import inspect
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from re import Match
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from fastapi.exceptions import RequestValidationError
from prometheus_client import Counter, Histogram
from pydantic import Field, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ironcore import limits
from ironcore.bodies import (
    BODY_ENVELOPE_BYTES,
    ClientGone,
    RequestBody,
    base64_length,
    body_cap,
    parse_json,
)
from ironcore.bridge.channel import DeviceChannel
from ironcore.bridge.devices import DeviceContext, DeviceRefused
from ironcore.errors import FailedPrecondition, InvalidArgument, OutOfRange
from ironcore.metrics import LATENCY, REQUESTS
from ironcore.registry.names import DeviceRef, RegistryName
from ironcore.registry.wire import Bytes, Message

# The device bridge's paths, which carry a device JWT instead of an admin token.
DEVICE_PATHS = re.compile(
    r"/v1/projects/([^/]+)/locations/([^/]+)/registries/([^/]+)/devices/([^/]+)"
    r"(:publishEvent|:setState|/config)"
)
# Firmware downloads (bridge/firmware.py) carry a device JWT too.
FIRMWARE_PATHS = re.compile(
    r"/ironcore/v1/projects/[^/]+/locations/[^/]+/registries/[^/]+/devices/[^/]+/firmware/[^/]+"
)


class GatewayInfo(Message):
    """Set when a gateway is involved: `delegatedDeviceId` when the path and token are the
    gateway's and it acts for a device, `gatewayId` when they are the device's and the request
    merely came through a gateway."""

    gateway_id: str = ""
    delegated_device_id: str = ""


class PublishEventRequest(Message):
    name: str = ""
    binary_data: Bytes = b""
    sub_folder: str = ""
    gateway_info: GatewayInfo | None = None


class StateBody(Message):
    binary_data: Bytes = b""


class SetStateRequest(Message):
    name: str = ""
    state: StateBody = Field(default_factory=StateBody)
    gateway_info: GatewayInfo | None = None


@dataclass
class DeviceBridge:
    channel: DeviceChannel

    async def authenticate(
        self, request: Request, ref: DeviceRef, gateway: GatewayInfo | None = None
    ) -> DeviceContext:
        """The device a request speaks for: `caller`, then `through` any gateway."""
        return await self.through(await self.caller(request, ref), gateway)

    async def caller(self, request: Request, ref: DeviceRef) -> DeviceContext:
        """The device whose bearer JWT the request carries, checked by the device channel from
        the headers alone; a refusal as the error its code says."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise DeviceRefused(
                    "no_token", "Request is missing 'Authorization: Bearer <device JWT>'"
                )
            return await self.channel.caller(ref, token.strip(), "http")
        except DeviceRefused as refused:
            raise self.channel.refused(refused, "http") from None

    async def through(self, caller: DeviceContext, gateway: GatewayInfo | None) -> DeviceContext:
        """The device a request from `caller` speaks for, given its `gatewayInfo`; a refusal as
        the error its code says."""
        if gateway is None:
            return caller
        try:
            return await self.channel.through_gateway(
                caller,
                gateway_id=gateway.gateway_id,
                delegated_device_id=gateway.delegated_device_id,
            )
        except DeviceRefused as refused:
            raise self.channel.refused(refused, "http") from None


def _ref(project: str, location: str, registry: str, device: str) -> DeviceRef:
    return DeviceRef.parse(RegistryName.parse(project, location, registry), device)


async def publish_event(
    bridge: DeviceBridge, request: Request, path: Match[str], raw: RequestBody
) -> Response:
    caller = await bridge.caller(request, _ref(*path.group(1, 2, 3, 4)))
    body = _parse(await raw.read(), PublishEventRequest)
    context = await bridge.through(caller, body.gateway_info)
    try:
        await bridge.channel.submit_event(context, body.sub_folder, body.binary_data)
    except FailedPrecondition as error:
        # Cloud IoT Core answered INVALID_ARGUMENT when a registry had no event topic.
        raise InvalidArgument(error.message) from None
    return JSONResponse({})


async def set_state(
    bridge: DeviceBridge, request: Request, path: Match[str], raw: RequestBody
) -> Response:
    caller = await bridge.caller(request, _ref(*path.group(1, 2, 3, 4)))
    body = _parse(await raw.read(), SetStateRequest)
    context = await bridge.through(caller, body.gateway_info)
    # Waits while the device's state rate is spent (bridge/channel.py).
    stored = await bridge.channel.write_state(context, body.state.binary_data)
    await stored
    return JSONResponse({})


async def get_config(
    bridge: DeviceBridge, request: Request, path: Match[str], raw: RequestBody
) -> Response:
    query = _query(request)
    local_version = _int_query(query, "localVersion", 0)
    gateway = GatewayInfo(
        gateway_id=query.get("gatewayInfo.gatewayId", ""),
        delegated_device_id=query.get("gatewayInfo.delegatedDeviceId", ""),
    )
    context = await bridge.authenticate(request, _ref(*path.group(1, 2, 3, 4)), gateway)
    config = await bridge.channel.current_config(context)
    current = config.version if config is not None else 0
    if local_version < 0:
        raise InvalidArgument.field("local_version", "must not be negative")
    if local_version > current:
        raise OutOfRange(
            f"local_version {local_version} is newer than the latest version {current}"
        )
    out: dict[str, Any] = {"version": str(current)}
    if config is not None and local_version < current:
        out = config.to_wire()
        out.pop("deviceAckTime", None)
        out["version"] = str(current)
    bridge.channel.config_sent(context)
    return JSONResponse(out)


M = TypeVar("M", bound=Message)


def _parse(raw: bytes, model: type[M]) -> M:
    """The JSON body as `model`, whatever the Content-Type says (curl sends form encoding by
    default); InvalidArgument when it is not JSON or nests too deeply (`bodies.parse_json`),
    validation errors as FastAPI reported them, so the envelope is the admin API's."""
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    data = parse_json(raw)
    try:
        return model.model_validate(data, from_attributes=True)
    except ValidationError as error:
        raise _located(error, "body") from None


def _query(request: Request) -> dict[str, str]:
    """Query parameters by their camelCase names, to which `local_version` and
    `gateway_info.gateway_id` are renamed as the admin API's NormalizeRequestMiddleware does
    (the last of repeated ones wins)."""
    text = request.scope["query_string"].decode("latin-1")
    pairs = parse_qsl(text, keep_blank_values=True)
    if "_" in text:
        pairs = [(".".join(to_camel(p) for p in k.split(".")), v) for k, v in pairs]
    return dict(pairs)


def _int_query(query: dict[str, str], name: str, default: int) -> int:
    if name not in query:
        return default
    try:
        return _INT.validate_python(query[name])
    except ValidationError as error:
        raise _located(error, "query", name) from None


def _located(error: ValidationError, *loc: str) -> RequestValidationError:
    return RequestValidationError(
        [{**e, "loc": (*loc, *e["loc"])} for e in error.errors(include_url=False)]
    )


_INT = TypeAdapter(int)
Handler = Callable[[DeviceBridge, Request, Match[str], RequestBody], Awaitable[Response]]
ErrorHandler = Callable[[Request, Any], Response | Awaitable[Response]]


@dataclass(frozen=True)
class _Route:
    method: str
    name: str  # the gRPC method, as the admin API's metrics name routes
    handler: Handler
    # The largest body the method takes (`body_cap`: its payload limit in base64, and the JSON
    # around it), and what it carries, for the error past it.
    body_bytes: int
    body: str


def _carries(field: str, limit: int) -> str:
    return (
        f"{field} of at most {limit} bytes, {base64_length(limit)} in base64, and "
        f"{BODY_ENVELOPE_BYTES} bytes of JSON around it"
    )


_ROUTES = {
    ":publishEvent": _Route(
        "POST",
        "PublishEvent",
        publish_event,
        body_cap(limits.EVENT_BYTES),
        "publishEvent: " + _carries("binaryData", limits.EVENT_BYTES),
    ),
    ":setState": _Route(
        "POST",
        "SetState",
        set_state,
        body_cap(limits.STATE_BYTES),
        "setState: " + _carries("state.binaryData", limits.STATE_BYTES),
    ),
    "/config": _Route("GET", "GetDeviceConfig", get_config, 0, "getConfig: no body"),
}


class DeviceRoutes:
    """Serves the device bridge's paths ahead of the admin API's routing and middleware.

    A device request needs none of them (no admin token, no dependency injection, a fixed
    path), and going through them cost as much CPU as the request itself (docs/benchmarks.md,
    "Event routing"). Everything else goes on to `app`. Errors are answered by the admin
    API's exception handlers (`handlers`, by exception class), so the envelope is the same;
    requests are counted in the same metrics.
    """

    def __init__(
        self, app: ASGIApp, bridge: DeviceBridge, handlers: Mapping[Any, ErrorHandler]
    ) -> None:
        self.app = app
        self.bridge = bridge
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = DEVICE_PATHS.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if path is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        route = _ROUTES[path[5]]
        request = Request(scope, receive)
        body = RequestBody(scope, receive, route.body_bytes, route.body)
        try:
            if scope["method"] != route.method:
                raise HTTPException(405)
            response = await route.handler(self.bridge, request, path, body)
        except (ClientDisconnect, ClientGone):
            return
        except Exception as error:
            answer = self._handler(error)(request, error)
            response = await answer if inspect.isawaitable(answer) else answer
        if body.must_close:
            # Answered without reading a large body (refused first, too large, or a GET that
            # carried one): close the connection rather than have the server read all of it.
            response.headers["connection"] = "close"
        await response(scope, receive, send)
        _latency(route.name).observe(time.perf_counter() - start)
        _requests(route.name, response.status_code).inc()

    def _handler(self, error: Exception) -> ErrorHandler:
        for cls in type(error).__mro__:
            handler = self.handlers.get(cls)
            if handler is not None:
                return handler
        raise error


# The labelled metrics, looked up once: prometheus_client's labels() cost 3 % of a request.


@functools.cache
def _requests(name: str, status: int) -> Counter:
    return REQUESTS.labels(name, str(status))


@functools.cache
def _latency(name: str) -> Histogram:
    return LATENCY.labels(name)


def is_device_path(path: str) -> bool:
    return DEVICE_PATHS.fullmatch(path) is not None or FIRMWARE_PATHS.fullmatch(path) is not None
