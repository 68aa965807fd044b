"""The HTTP device bridge (Cloud IoT Core's `cloudiotdevice` v1): publishEvent, setState and
getConfig, each authenticated by the device's JWT as a bearer token.

The routes are thin: authentication is `bridge.devices`, routing is `routing.router`, both
shared with the MQTT bridge, so a device is held to the same rules whichever bridge it uses.
Every success answers 200 with `{}` (the official samples treat anything else, 204 included,
as a failure). `DeviceRoutes` serves them in front of the admin API's FastAPI stack, with the
same error envelope and metrics.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
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
from ironcore.bridge import metrics
from ironcore.bridge.bookkeeping import Bookkeeper
from ironcore.bridge.devices import DeviceAuthenticator, DeviceContext, DeviceRefused
from ironcore.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from ironcore.metrics import LATENCY, REQUESTS
from ironcore.registry.names import DeviceRef, RegistryName
from ironcore.registry.store.schema import to_us
from ironcore.registry.wire import Bytes, Message
from ironcore.routing.router import Router

# The device bridge's paths, which carry a device JWT instead of an admin token.
DEVICE_PATHS = re.compile(
    r"/v1/projects/([^/]+)/locations/([^/]+)/registries/([^/]+)/devices/([^/]+)"
    r"(:publishEvent|:setState|/config)"
)
# Firmware downloads (bridge/firmware.py) carry a device JWT too.
FIRMWARE_PATHS = re.compile(
    r"/ironcore/v1/projects/[^/]+/locations/[^/]+/registries/[^/]+/devices/[^/]+/firmware/[^/]+"
)
_FORBIDDEN = {"blocked", "http_disabled", "not_bound", "gateway"}


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
    authenticator: DeviceAuthenticator
    router: Router
    bookkeeper: Bookkeeper
    _last_state: dict[int, float] = field(default_factory=dict)

    async def authenticate(
        self, request: Request, ref: DeviceRef, gateway: GatewayInfo | None
    ) -> DeviceContext:
        """The device a request speaks for, after checking its JWT and any gateway rules."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            metrics.AUTH_FAILURES.labels("http", "no_token").inc()
            raise Unauthenticated("Request is missing 'Authorization: Bearer <device JWT>'")
        try:
            caller = (await self.authenticator.authenticate(ref, token.strip(), "http")).context
            if gateway is None or not (gateway.gateway_id or gateway.delegated_device_id):
                return caller
            if gateway.delegated_device_id:
                device = await self._load(ref.registry, gateway.delegated_device_id)
                await self._check_binding(caller, device)
                self._touch_gateway(device, caller.device.id)
                return device
            gateway_context = await self._load(ref.registry, gateway.gateway_id)
            await self._check_binding(gateway_context, caller)
            self._touch_gateway(caller, gateway_context.device.id)
            return caller
        except DeviceRefused as refused:
            metrics.AUTH_FAILURES.labels("http", refused.reason).inc()
            if refused.num_id is not None:
                await self.authenticator.record_error(
                    refused.num_id, Unauthenticated.code, f"http: {refused.message}"
                )
            if refused.reason == "unknown_device":
                raise NotFound(refused.message) from None
            if refused.reason in _FORBIDDEN:
                raise PermissionDenied(refused.message) from None
            raise Unauthenticated(refused.message) from None

    async def _load(self, registry: RegistryName, device_id: str) -> DeviceContext:
        try:
            context = await self.authenticator.load(
                DeviceRef.parse(registry, device_id, "gateway_info")
            )
        except (NotFound, InvalidArgument) as error:
            raise DeviceRefused("unknown_device", error.message) from None
        if context.device.blocked:
            raise DeviceRefused("blocked", f"device {device_id} is blocked", context.device.num_id)
        return context

    async def _check_binding(self, gateway: DeviceContext, device: DeviceContext) -> None:
        if not gateway.device.gateway_config.is_gateway:
            raise DeviceRefused("gateway", f"device {gateway.device.id} is not a gateway")
        if not await self.authenticator.store.devices.is_bound(
            gateway.device.num_id, device.device.num_id
        ):
            raise DeviceRefused(
                "not_bound",
                f"device {device.device.id} is not bound to gateway {gateway.device.id}",
            )

    def _touch_gateway(self, device: DeviceContext, gateway_id: str) -> None:
        now = to_us(self.authenticator.clock())
        self.bookkeeper.touch(device.device.num_id, "last_gateway_id", gateway_id)
        self.bookkeeper.touch(device.device.num_id, "last_gateway_time", now)

    def check_state_rate(self, num_id: int) -> None:
        now = time.monotonic()
        if now - self._last_state.get(num_id, -1e9) < limits.STATE_UPDATE_INTERVAL_SECONDS:
            raise ResourceExhausted("A device's state can be updated at most once per second")
        if len(self._last_state) > 100_000:
            self._last_state.clear()
        self._last_state[num_id] = now


def _ref(project: str, location: str, registry: str, device: str) -> DeviceRef:
    return DeviceRef.parse(RegistryName.parse(project, location, registry), device)


async def publish_event(bridge: DeviceBridge, request: Request, path: Match[str]) -> Response:
    body = await _body(request, PublishEventRequest)
    context = await bridge.authenticate(request, _ref(*path.group(1, 2, 3, 4)), body.gateway_info)
    if len(body.binary_data) > limits.EVENT_BYTES:
        raise InvalidArgument.field("binary_data", f"is larger than {limits.EVENT_BYTES} bytes")
    try:
        await bridge.router.publish_event(
            context.name, context.registry, context.device, body.sub_folder, body.binary_data
        )
    except FailedPrecondition as error:
        # Cloud IoT Core answered INVALID_ARGUMENT when a registry had no event topic.
        raise InvalidArgument(error.message) from None
    bridge.bookkeeper.touch(
        context.device.num_id, "last_event_time", to_us(bridge.authenticator.clock())
    )
    return JSONResponse({})


async def set_state(bridge: DeviceBridge, request: Request, path: Match[str]) -> Response:
    body = await _body(request, SetStateRequest)
    context = await bridge.authenticate(request, _ref(*path.group(1, 2, 3, 4)), body.gateway_info)
    data = body.state.binary_data
    if len(data) > limits.STATE_BYTES:
        raise InvalidArgument.field(
            "state.binary_data", f"is larger than {limits.STATE_BYTES} bytes"
        )
    bridge.check_state_rate(context.device.num_id)
    store = bridge.authenticator.store
    await store.configs.add_state(
        context.device.num_id, data, bridge.authenticator.clock(), keep=limits.STATES_KEPT
    )
    await bridge.router.notify_state(context.name, context.registry, context.device, data)
    return JSONResponse({})


async def get_config(bridge: DeviceBridge, request: Request, path: Match[str]) -> Response:
    query = _query(request)
    local_version = _int_query(query, "localVersion", 0)
    gateway = GatewayInfo(
        gateway_id=query.get("gatewayInfo.gatewayId", ""),
        delegated_device_id=query.get("gatewayInfo.delegatedDeviceId", ""),
    )
    context = await bridge.authenticate(request, _ref(*path.group(1, 2, 3, 4)), gateway)
    # Read now rather than taken from the authenticator's cache: devices poll for their config
    # right after being told it changed, possibly by another process.
    record = await bridge.authenticator.store.devices.get_device(
        context.name, None, context.device.num_id
    )
    if record is None:
        raise NotFound(f"Device {context.device.id} not found")
    config = record.device.config
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
    bridge.bookkeeper.touch(
        context.device.num_id, "last_config_send_time", to_us(bridge.authenticator.clock())
    )
    return JSONResponse(out)


M = TypeVar("M", bound=Message)


async def _body(request: Request, model: type[M]) -> M:
    """The JSON body as `model`, whatever the Content-Type says (curl sends form encoding by
    default); errors as FastAPI reported them, so the envelope is the admin API's."""
    raw = await request.body()
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as error:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", error.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": error.msg},
                }
            ]
        ) from None
    except ValueError:  # not UTF-8, -16 or -32
        raise HTTPException(400, "There was an error parsing the body") from None
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
Handler = Callable[[DeviceBridge, Request, Match[str]], Awaitable[Response]]
ErrorHandler = Callable[[Request, Any], Response | Awaitable[Response]]


@dataclass(frozen=True)
class _Route:
    method: str
    name: str  # the gRPC method, as the admin API's metrics name routes
    handler: Handler


_ROUTES = {
    ":publishEvent": _Route("POST", "PublishEvent", publish_event),
    ":setState": _Route("POST", "SetState", set_state),
    "/config": _Route("GET", "GetDeviceConfig", get_config),
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
        try:
            if scope["method"] != route.method:
                raise HTTPException(405)
            response = await route.handler(self.bridge, request, path)
        except ClientDisconnect:
            return
        except Exception as error:
            answer = self._handler(error)(request, error)
            response = await answer if inspect.isawaitable(answer) else answer
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
