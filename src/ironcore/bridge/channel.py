"""The device channel: what a device may do once a bridge has heard it, whichever bridge.

Every device bridge (MQTT, HTTP, and later gRPC or the console) translates its wire into calls
on one `DeviceChannel` and its answers back into the wire; the rules live here, once:

- who speaks: a device's JWT (`bridge.devices`), with refusals counted and recorded in the
  device's lastErrorStatus; a gateway acting for a device (MQTT attach under the gateway's
  `gatewayAuthMethod`, HTTP `gatewayInfo` under its binding), and a device re-checked after a
  change;
- telemetry and state: their size limits, state's rate (below), the durable write and the
  notification;
- configs: read fresh at each request, their sends and acknowledgements;
- key rotation: the messages ironcore tells a device and the key it offers (docs/rotation.md);
- bookkeeping: the last*Time fields and a gateway's last access, written behind.

**State rate.** Cloud IoT Core allowed one state update per second per device, "calculated as
the time between the most recent server acknowledgment and the next update request". ironcore
holds an update that comes sooner until the second has passed, then stores it: the PUBACK or
the HTTP 200 simply comes later, and no state is lost (back-pressure, as the MQTT session does
for its message rate). One update per device may wait; another that arrives while one waits is
refused with RESOURCE_EXHAUSTED (HTTP 429; over MQTT the connection is closed with that status,
which only a device writing its state over two connections at once can meet). The turns are
kept per server process.

Errors are `ironcore.errors` values, or `DeviceRefused` for authentication (its `reason` is a
metric label; `refusal_error` gives its code); each adapter maps them to its wire.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from typing import Any

from ironcore import limits
from ironcore.bridge import metrics
from ironcore.bridge.bookkeeping import Bookkeeper
from ironcore.bridge.devices import Authenticated, DeviceAuthenticator, DeviceContext, DeviceRefused
from ironcore.errors import (
    Code,
    InvalidArgument,
    IronCoreError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from ironcore.formats import rotation as rotation_protocol
from ironcore.registry.names import DeviceRef, RegistryName
from ironcore.registry.resources import DeviceConfig, GatewayAuthMethod
from ironcore.registry.rotation import KeyRotation, Rotations
from ironcore.registry.store import audit
from ironcore.routing.router import Router

# ironcore's key rotation messages: commands to the device, offers from it (docs/rotation.md).
ROTATION_COMMAND = rotation_protocol.SUBFOLDER
ROTATION_TOPIC = rotation_protocol.NAME
# Refusals that are the device's or registry's standing, not its credentials.
_FORBIDDEN = frozenset({"blocked", "http_disabled", "mqtt_disabled", "not_bound", "gateway"})
_TOKEN_METHODS = (
    GatewayAuthMethod.DEVICE_AUTH_TOKEN_ONLY,
    GatewayAuthMethod.ASSOCIATION_AND_DEVICE_AUTH_TOKEN,
)
_ASSOCIATION_METHODS = (
    GatewayAuthMethod.ASSOCIATION_ONLY,
    GatewayAuthMethod.ASSOCIATION_AND_DEVICE_AUTH_TOKEN,
)


def refusal_error(refused: DeviceRefused) -> IronCoreError:
    """A refusal as an error with its code: an unknown device is NOT_FOUND, a device that may
    not (blocked, bridge disabled, not bound) PERMISSION_DENIED, a bad token UNAUTHENTICATED."""
    if refused.reason == "unknown_device":
        return NotFound(refused.message)
    if refused.reason in _FORBIDDEN:
        return PermissionDenied(refused.message)
    return Unauthenticated(refused.message)


class DeviceChannel:
    def __init__(
        self,
        authenticator: DeviceAuthenticator,
        router: Router,
        bookkeeper: Bookkeeper,
        rotations: Rotations | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.router = router
        self.bookkeeper = bookkeeper
        self.rotations = rotations
        self._state_turns = StateTurns()

    # Who speaks

    async def connect(self, ref: DeviceRef, token: bytes | str, bridge: str) -> Authenticated:
        """A device opening a connection with its JWT; DeviceRefused when it may not (give it
        to `refused`)."""
        return await self.authenticator.authenticate(ref, token, bridge)

    async def caller(self, ref: DeviceRef, token: str, bridge: str) -> DeviceContext:
        """The device whose JWT a request carries (HTTP: every request authenticates), known
        before its body is read; the body may name a gateway (`through_gateway`). DeviceRefused
        when it may not (give it to `refused`)."""
        return (await self.authenticator.authenticate(ref, token, bridge)).context

    async def through_gateway(
        self, caller: DeviceContext, *, gateway_id: str = "", delegated_device_id: str = ""
    ) -> DeviceContext:
        """The device a request from `caller` speaks for.

        `delegated_device_id`: the caller is a gateway acting for a device bound to it.
        `gateway_id`: the caller is a device whose request came through that gateway, to which
        it must be bound. Neither: the caller itself. DeviceRefused when it may not (give it
        to `refused`)."""
        if delegated_device_id:
            device = await self._load(_device_ref(caller.name, delegated_device_id))
            return await self._relay(caller, device, bound=True)
        if gateway_id:
            gateway = await self._load(_device_ref(caller.name, gateway_id))
            await self._relay(gateway, caller, bound=True)
        return caller

    async def attach(self, gateway: DeviceContext, device_id: str, token: str) -> DeviceContext:
        """A gateway attaches a device (MQTT), under the gateway's `gatewayAuthMethod`: the
        device's own JWT, its binding to the gateway, or both. DeviceRefused says which failed
        (counted here; the gateway hears of it, the device's lastErrorStatus does not)."""
        try:
            method = gateway.device.gateway_config.gateway_auth_method
            if method == GatewayAuthMethod.GATEWAY_AUTH_METHOD_UNSPECIFIED:
                raise DeviceRefused(
                    "gateway_auth", "the gateway has no gatewayAuthMethod; no device may attach"
                )
            ref = _device_ref(gateway.name, device_id)
            if method in _TOKEN_METHODS:
                if not token:
                    raise DeviceRefused(
                        "no_token", "the gateway's auth method needs the device's JWT"
                    )
                device = (await self.authenticator.authenticate(ref, token, "mqtt")).context
            else:
                device = await self._load(ref)
            return await self._relay(gateway, device, bound=method in _ASSOCIATION_METHODS)
        except DeviceRefused as refused:
            metrics.AUTH_FAILURES.labels("gateway", refused.reason).inc()
            raise

    async def _load(self, ref: DeviceRef) -> DeviceContext:
        """A device a gateway names: it exists and is not blocked."""
        try:
            context = await self.authenticator.load(ref)
        except NotFound as error:
            raise DeviceRefused("unknown_device", error.message) from None
        if context.device.blocked:
            raise DeviceRefused("blocked", f"device {ref} is blocked", context.device.num_id)
        return context

    async def _relay(
        self, gateway: DeviceContext, device: DeviceContext, bound: bool
    ) -> DeviceContext:
        """`device`, reached through `gateway`, once it may be: `gateway` is a gateway and
        `device` is not, and with `bound` the device is bound to it."""
        if not gateway.device.gateway_config.is_gateway:
            raise DeviceRefused("gateway", f"device {gateway.device.id} is not a gateway")
        if device.device.gateway_config.is_gateway:
            raise DeviceRefused("gateway", "a gateway cannot act through another gateway")
        if bound and not await self.authenticator.store.devices.is_bound(
            gateway.device.num_id, device.device.num_id
        ):
            raise DeviceRefused(
                "not_bound",
                f"device {device.device.id} is not bound to gateway {gateway.device.id}",
            )
        self._relayed(device, gateway.device.id)
        return device

    def refused(self, refused: DeviceRefused, bridge: str) -> IronCoreError:
        """Count a refused device and record why in its lastErrorStatus; the refusal as an
        error with its code (`refusal_error`)."""
        metrics.AUTH_FAILURES.labels(bridge, refused.reason).inc()
        if refused.num_id is not None:
            self.disconnected(refused.num_id, Code.UNAUTHENTICATED, f"{bridge}: {refused.message}")
        return refusal_error(refused)

    async def recheck(
        self, context: DeviceContext, fingerprint: str, bridge: str
    ) -> tuple[DeviceContext | None, str | None]:
        """A connected device read again after a change: the device now (None once deleted) and
        why it must go (None if it may stay). `fingerprint` is the key it connected with, or ""
        for a device attached through a gateway, which only a block removes."""
        try:
            fresh = await self.authenticator.load(
                DeviceRef(context.name, None, context.device.num_id)
            )
        except NotFound:
            return None, "the device was deleted"
        if not fingerprint:
            return fresh, "the device was blocked" if fresh.device.blocked else None
        return fresh, self.authenticator.still_valid(fresh, fingerprint, bridge)

    def credential_deadline(self, context: DeviceContext, fingerprint: str) -> float:
        return self.authenticator.credential_deadline(context, fingerprint)

    def disconnected(self, num_id: int, code: Code, reason: str) -> None:
        """Why a device was refused or disconnected, for its lastErrorStatus."""
        self.bookkeeper.error(num_id, int(code), reason, _now_us())

    def heartbeat(self, context: DeviceContext) -> None:
        self.bookkeeper.touch(context.device.num_id, "last_heartbeat_time", _now_us())

    def _relayed(self, device: DeviceContext, gateway_id: str) -> None:
        """The device was reached through gateway `gateway_id` (its lastAccessedGateway*)."""
        num_id = device.device.num_id
        self.bookkeeper.touch(num_id, "last_gateway_time", _now_us())
        self.bookkeeper.touch(num_id, "last_gateway_id", gateway_id)

    # Telemetry and state

    def submit_event(
        self, context: DeviceContext, subfolder: str, payload: bytes, gateway_id: str = ""
    ) -> Awaitable[object]:
        """Start publishing an event; await the result before acknowledging it."""
        if len(payload) > limits.EVENT_BYTES:
            raise InvalidArgument.field("binary_data", f"is larger than {limits.EVENT_BYTES} bytes")
        if len(subfolder.encode("utf-8", "surrogatepass")) > limits.SUBFOLDER_MAX_BYTES:
            raise InvalidArgument.field(
                "sub_folder", f"is longer than {limits.SUBFOLDER_MAX_BYTES} bytes"
            )
        work = self.router.submit_event(
            context.name, context.registry, context.device, subfolder, payload
        )
        self.bookkeeper.touch(context.device.num_id, "last_event_time", _now_us())
        if gateway_id:
            self._relayed(context, gateway_id)
        return work

    async def write_state(
        self, context: DeviceContext, payload: bytes, gateway_id: str = ""
    ) -> Awaitable[None]:
        """Wait for the device's turn (the state rate, above), then start the durable write and
        the notification; await the result before acknowledging it."""
        if len(payload) > limits.STATE_BYTES:
            raise InvalidArgument.field(
                "state.binary_data", f"is larger than {limits.STATE_BYTES} bytes"
            )
        await self._state_turns.take(context.device.num_id)
        if gateway_id:
            self._relayed(context, gateway_id)
        return asyncio.ensure_future(self._store_state(context, payload))

    async def _store_state(self, context: DeviceContext, payload: bytes) -> None:
        await self.authenticator.store.configs.add_state(
            context.device.num_id, payload, self.authenticator.clock(), keep=limits.STATES_KEPT
        )
        await self.router.notify_state(context.name, context.registry, context.device, payload)

    # Configs

    async def current_config(self, context: DeviceContext) -> DeviceConfig | None:
        """The device's config as it is now (never cached: a device asks right after a change,
        possibly made by another process); NotFound once the device is gone."""
        record = await self.authenticator.store.devices.get_device(
            context.name, None, context.device.num_id
        )
        if record is None:
            raise NotFound(f"Device {context.device.id} not found")
        return record.device.config

    def config_sent(self, context: DeviceContext) -> None:
        self.bookkeeper.touch(context.device.num_id, "last_config_send_time", _now_us())

    def config_acked(self, context: DeviceContext, version: int) -> None:
        self.bookkeeper.config_acked(context.device.num_id, version, _now_us())

    # Key rotation

    async def connected(self, auth: Authenticated, address: str = "") -> KeyRotation | None:
        """A device connected (from `address`): connecting with the new key completes its
        rotation. The rotation to tell the device of (`rotation_command`) once it listens for
        commands."""
        if self.rotations is None or not auth.context.rotating:
            return None
        token = audit.acting(_device_actor(auth.context, "CompleteKeyRotation", address, {}))
        try:
            return await self.rotations.connected(auth.context.device.num_id, auth.key.fingerprint)
        finally:
            audit.done(token)

    async def rotation(self, num_id: int) -> KeyRotation | None:
        return await self.rotations.current(num_id) if self.rotations is not None else None

    async def control(
        self,
        context: DeviceContext,
        fingerprint: str,
        name: str,
        payload: bytes,
        address: str = "",
    ) -> KeyRotation:
        """A message on ironcore's own device topic `name`: the key a device offers for its
        rotation, or its report that it could not make one. InvalidArgument when bad. What it
        changes is recorded in the audit log as the device's doing, from `address`."""
        if name != ROTATION_TOPIC or self.rotations is None:
            raise InvalidArgument(f"unknown ironcore topic {name!r}")
        try:
            offer = json.loads(payload)
        except RecursionError:
            raise InvalidArgument("a key offer is JSON nested too deeply") from None
        except ValueError as error:
            raise InvalidArgument(f"a key offer is JSON: {error}") from None
        if not isinstance(offer, dict):
            raise InvalidArgument("a key offer is a JSON object")
        num_id, rotation_id = context.device.num_id, str(offer.get("rotation", ""))
        method = "FailKeyRotation" if "error" in offer else "OfferRotationKey"
        fields = {k: offer[k] for k in ("rotation", "error", "publicKey") if k in offer}
        token = audit.acting(_device_actor(context, method, address, fields))
        try:
            if "error" in offer:
                return await self.rotations.fail(num_id, rotation_id, str(offer["error"]))
            return await self.rotations.offer(
                num_id,
                rotation_id,
                str(offer.get("publicKey", "")),
                str(offer.get("proof", "")),
                fingerprint,
            )
        finally:
            audit.done(token)

    @staticmethod
    def rotation_command(rotation: KeyRotation | None) -> bytes | None:
        """What to send the device as the command `ROTATION_COMMAND` (None: nothing)."""
        if rotation is None or rotation.state == "rolled_back":
            return None
        body: dict[str, object] = {"rotation": rotation.id, "state": rotation.state.upper()}
        if rotation.state == "requested":
            body["nonce"] = rotation.nonce
        if rotation.reason:
            body["reason"] = rotation.reason
        return json.dumps(body).encode()


class StateTurns:
    """When each device may next write its state: one update per
    `limits.STATE_UPDATE_INTERVAL_SECONDS`, a sooner one waiting for its turn, at most one
    waiting per device."""

    def __init__(self) -> None:
        self._last: dict[int, float] = {}
        self._waiting: set[int] = set()
        self._pruned = time.monotonic()

    async def take(self, num_id: int) -> None:
        """Return once the device may write; ResourceExhausted if an update already waits."""
        interval = limits.STATE_UPDATE_INTERVAL_SECONDS
        if num_id in self._waiting:
            raise ResourceExhausted(
                "A device's state can be updated at most once per second, and an update of "
                "this device is already waiting for its turn"
            )
        now = time.monotonic()
        wait = self._last.get(num_id, -interval) + interval - now
        if wait > 0:
            self._waiting.add(num_id)
            try:
                await asyncio.sleep(wait)
            finally:
                self._waiting.discard(num_id)
            now = time.monotonic()
        self._last[num_id] = now
        # Devices whose turn has long passed are forgotten, about once an interval.
        if now - self._pruned > interval:
            self._last = {n: at for n, at in self._last.items() if now - at < interval}
            self._pruned = now


def _device_ref(registry: RegistryName, device_id: str) -> DeviceRef:
    try:
        return DeviceRef.parse(registry, device_id, "device_id")
    except InvalidArgument as error:
        raise DeviceRefused("unknown_device", error.message) from None


def _now_us() -> int:
    """Now in the store's microseconds, without a datetime (this runs for every event)."""
    return time.time_ns() // 1000


def _device_actor(
    context: DeviceContext, method: str, address: str, fields: dict[str, Any]
) -> audit.Actor:
    """A device acting on its own key rotation over a bridge, authenticated by its JWT."""
    resource = f"{context.name}/devices/{context.device.id}"
    return audit.Actor(
        "mqtt", f"device:{resource}", "deviceJwt", address, method, resource, {"body": fields}
    )
