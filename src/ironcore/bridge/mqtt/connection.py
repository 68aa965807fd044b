"""One MQTT connection: the asyncio adapter around a sans-IO `Session`.

Bytes from the transport go into the session; a pump task takes the session's events in order
and does what they need (authenticate, append, store, look up configs), then writes what the
session queued. QoS 1 messages are acknowledged in the order they arrived, each only once what
it carries is durable; while acknowledgements are outstanding the session holds further
packets and the transport stops reading (back-pressure instead of loss).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

from ironcore.bridge import metrics
from ironcore.bridge.bookkeeping import Bookkeeper
from ironcore.bridge.devices import (
    DeviceAuthenticator,
    DeviceContext,
    DeviceRefused,
    parse_client_id,
)
from ironcore.bridge.hub import Hub
from ironcore.bridge.mqtt import session as s
from ironcore.errors import Code, InvalidArgument, IronCoreError, NotFound
from ironcore.formats import rotation as rotation_protocol
from ironcore.identity.credentials import ParsedKey
from ironcore.registry.names import DeviceRef, RegistryName
from ironcore.registry.resources import DeviceConfig, GatewayAuthMethod
from ironcore.registry.rotation import KeyRotation, Rotations
from ironcore.routing.router import Router

log = logging.getLogger(__name__)
# Children of labelled metrics on the hot path, looked up once.
EVENTS_IN = metrics.MESSAGES_IN.labels("event")
PUBACK_LATENCY = metrics.PUBACK_LATENCY
# How near a session's deadline must be for it to get a timer of its own (the bridge sweeps
# every connection once a second).
_TIMER_WINDOW_SECONDS = 2.0
# A connection's registry until its device authenticates (one object, not one each).
_UNSET = RegistryName.parse("unset", "unset", "unset")


@dataclass
class Services:
    """What every connection shares."""

    authenticator: DeviceAuthenticator
    router: Router
    bookkeeper: Bookkeeper
    hub: Hub
    rotations: Rotations | None = None
    limits: s.SessionLimits = field(default_factory=s.SessionLimits)
    connections: set[MqttConnection] = field(default_factory=set)


class MqttConnection(asyncio.Protocol):
    def __init__(self, services: Services) -> None:
        self.services = services
        self.session = s.Session(now=time.time(), limits=services.limits)
        self.registry_name = _UNSET
        self.transport: asyncio.Transport | None = None
        # The pump sleeps on a bare future: an asyncio.Event costs a deque per connection.
        self._waiter: asyncio.Future[None] | None = None
        self._woken = False
        self._contexts: dict[str, DeviceContext] = {}
        self._key: ParsedKey | None = None
        # The JWT's own deadline; the session's is the earlier of it and the credential's expiry.
        self._token_deadline = float("inf")
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._acks: list[tuple[int, float, Awaitable[object]]] = []
        self._acker: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._reading = True
        self._last_state: dict[str, float] = {}
        self._rotation: KeyRotation | None = None
        self._events_in = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.services.connections.add(self)
        metrics.CONNECTIONS.inc()
        self._pump = asyncio.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self.session.receive_data(data, time.time())
        self._wake()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.close(
            "mqtt: The connection broke or was closed by the client.",
            Code.FAILED_PRECONDITION,
            "lost",
        )
        self._wake()

    @property
    def finished(self) -> asyncio.Task[None] | None:
        """The task that ends when the connection is closed and cleaned up."""
        return self._pump

    @property
    def _fingerprint(self) -> str:
        """The fingerprint of the key the device authenticated with ("" before it did)."""
        return self._key.fingerprint if self._key is not None else ""

    def _wake(self) -> None:
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # What the hub and the server call

    def tick(self, now: float) -> None:
        self.session.check_timers(now)
        self._arm_deadline(now)
        self._wake()

    def _tick_now(self) -> None:
        self.tick(time.time())

    def deliver_config(self, num_id: int, config: DeviceConfig) -> None:
        device_id = self._device_id(num_id)
        if device_id and self.session.publish_config(
            device_id, config.version, config.binary_data, time.time()
        ):
            metrics.MESSAGES_OUT.labels("config").inc()
            self.services.bookkeeper.touch(num_id, "last_config_send_time", _now_us())
            self._flush()

    def deliver_command(self, num_id: int, subfolder: str, data: bytes) -> bool:
        device_id = self._device_id(num_id)
        if not device_id or not self.session.publish_command(device_id, subfolder, data):
            return False
        metrics.MESSAGES_OUT.labels("command").inc()
        self._flush()
        return True

    async def revalidate(self, num_id: int | None) -> None:
        for device_id, context in list(self._contexts.items()):
            if num_id is not None and context.device.num_id != num_id:
                continue
            ref = DeviceRef(context.name, None, context.device.num_id)
            try:
                fresh: DeviceContext | None = await self.services.authenticator.load(ref)
            except NotFound:
                fresh = None
            if self._contexts.get(device_id) is not context:
                continue  # detached, attached again or disconnected while it was loading
            if fresh is None:
                self._drop(device_id, "the device was deleted")
                continue
            self._contexts[device_id] = fresh
            if device_id == self.session.device_id:
                why = self.services.authenticator.still_valid(fresh, self._fingerprint, "mqtt")
                if why is None:
                    # The credential's expirationTime may have been set or moved.
                    expires = self.services.authenticator.credential_deadline(
                        fresh, self._fingerprint
                    )
                    self._set_deadline(min(self._token_deadline, expires))
            else:
                why = "the device was blocked" if fresh.device.blocked else None
            if why is not None:
                self._drop(device_id, why)

    def key_in_use(self, num_id: int) -> str | None:
        primary = self._contexts.get(self.session.device_id)
        return (
            self._fingerprint if primary is not None and primary.device.num_id == num_id else None
        )

    async def rotation_changed(self, num_id: int) -> None:
        primary = self._contexts.get(self.session.device_id)
        if primary is not None and primary.device.num_id == num_id and self.services.rotations:
            self._tell_rotation(await self.services.rotations.current(num_id))

    def _tell_rotation(self, rotation: KeyRotation | None) -> None:
        """Send the device its rotation's state as the command `ironcore/key-rotation`."""
        if rotation is None or rotation.state == "rolled_back":
            return
        body: dict[str, object] = {"rotation": rotation.id, "state": rotation.state.upper()}
        if rotation.state == "requested":
            body["nonce"] = rotation.nonce
        if rotation.reason:
            body["reason"] = rotation.reason
        if self.session.publish_command(
            self.session.device_id, rotation_protocol.SUBFOLDER, json.dumps(body).encode()
        ):
            self._flush()

    async def _key_offered(self, event: s.ControlPublished, now: float) -> None:
        """The device offers a new key for its rotation (docs/rotation.md)."""
        primary = self._contexts[self.session.device_id]
        rotations = self.services.rotations
        try:
            if event.name != rotation_protocol.NAME or rotations is None:
                raise InvalidArgument(f"unknown ironcore topic {event.name!r}")
            offer = json.loads(event.payload)
            if not isinstance(offer, dict):
                raise InvalidArgument("a key offer is a JSON object")
            if "error" in offer:
                rotation = await rotations.fail(
                    primary.device.num_id, str(offer.get("rotation", "")), str(offer["error"])
                )
            else:
                rotation = await rotations.offer(
                    primary.device.num_id,
                    str(offer.get("rotation", "")),
                    str(offer.get("publicKey", "")),
                    str(offer.get("proof", "")),
                    self._fingerprint,
                )
        except (ValueError, IronCoreError) as error:
            message = error.message if isinstance(error, IronCoreError) else str(error)
            self.session.close(f"mqtt: bad key offer: {message}", Code.INVALID_ARGUMENT, "rotation")
            self._wake()
            return
        self._acknowledge(event.packet_id, now, None)
        self._tell_rotation(rotation)

    def kick(self, num_id: int, reason: str) -> None:
        device_id = self._device_id(num_id)
        if device_id == self.session.device_id:
            self.session.close(f"mqtt: {reason}", Code.FAILED_PRECONDITION, "takeover")
            self._wake()
        elif device_id:
            self._detach(device_id)

    def _drop(self, device_id: str, why: str) -> None:
        if device_id == self.session.device_id:
            self.session.close(f"mqtt: SERVER: {why}", Code.PERMISSION_DENIED, "revoked")
            self._wake()
        else:
            self.session.gateway_error(
                "GATEWAY_DETACHMENT_DEVICE_ERROR", f"Device detached: {why}.", device_id
            )
            self._detach(device_id)
            self._flush()

    def _set_deadline(self, deadline: float) -> None:
        """End the session at `deadline` on time, not at the next once-a-second sweep."""
        self.session.deadline = deadline
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._arm_deadline(time.time())

    def _arm_deadline(self, now: float) -> None:
        # A timer only once the deadline is near (the sweep calls this every second): a timer
        # per connection for a JWT that lives for hours is memory held for nothing.
        deadline = self.session.deadline
        if self._deadline_timer is None and deadline - now <= _TIMER_WINDOW_SECONDS:
            # A hair late, so that the session's `now > deadline` holds when the timer fires.
            delay = max(deadline - now, 0.0) + 0.01
            self._deadline_timer = asyncio.get_running_loop().call_later(delay, self._tick_now)

    def _device_id(self, num_id: int) -> str | None:
        for device_id, context in self._contexts.items():
            if context.device.num_id == num_id:
                return device_id
        return None

    # The pump

    async def _run(self) -> None:
        try:
            while True:
                now = time.time()
                event = self.session.next_event(now)
                if event is None:
                    self._count_events()
                    self._flush()
                    self._flow_control(now)
                    if not self._woken:
                        self._waiter = asyncio.get_running_loop().create_future()
                        await self._waiter
                        self._waiter = None
                    self._woken = False
                    continue
                if isinstance(event, s.Closed):
                    await self._closed(event)
                    return
                await self._handle(event, now)
        except Exception:
            log.exception("MQTT connection for %r failed", self.session.device_id)
            await self._closed(s.Closed("mqtt: internal error", Code.INTERNAL, "internal"))

    def _flow_control(self, now: float) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        wants = self.session.wants_data(now)
        if wants and not self._reading:
            self.transport.resume_reading()
        elif not wants and self._reading:
            self.transport.pause_reading()
            if self.session.resume_at > now:
                asyncio.get_running_loop().call_later(self.session.resume_at - now, self._wake)
        self._reading = wants

    def _flush(self) -> None:
        data = self.session.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def _handle(self, event: s.Event, now: float) -> None:
        match event:
            case s.ConnectRequested():
                await self._connect(event)
            case s.EventPublished():
                self._events_in += 1
                context = self._contexts[event.device_id]
                self._touch(context, "last_event_time")
                try:
                    work = self.services.router.submit_event(
                        context.name,
                        context.registry,
                        context.device,
                        event.subfolder,
                        event.payload,
                    )
                except IronCoreError as error:
                    self.session.close(f"mqtt: {error.message}", error.code, "rejected")
                    return
                self._acknowledge(event.packet_id, now, work)
            case s.StatePublished():
                metrics.MESSAGES_IN.labels("state").inc()
                await self._state(event, now)
            case s.AttachRequested():
                metrics.MESSAGES_IN.labels("attach").inc()
                await self._attach(event)
                self._acknowledge(event.packet_id, now, None)
            case s.DetachRequested():
                metrics.MESSAGES_IN.labels("detach").inc()
                self._detach(event.device_id)
                self._acknowledge(event.packet_id, now, None)
            case s.ConfigSubscribed():
                await self._send_current_config(event.device_id)
            case s.ConfigAcked():
                metrics.CONFIG_ACKS.inc()
                acked = self._contexts.get(event.device_id)
                if acked is not None:
                    self.services.bookkeeper.config_acked(
                        acked.device.num_id, event.version, _now_us()
                    )
            case s.Heartbeat():
                self._touch(self._contexts[self.session.device_id], "last_heartbeat_time")
            case s.CommandsSubscribed():
                if event.device_id == self.session.device_id:
                    self._tell_rotation(self._rotation)
            case s.ControlPublished():
                await self._key_offered(event, now)

    async def _connect(self, event: s.ConnectRequested) -> None:
        try:
            ref = parse_client_id(event.client_id)
            auth = await self.services.authenticator.authenticate(
                ref, event.password or b"", "mqtt"
            )
        except DeviceRefused as refused:
            metrics.CONNECTS.labels("refused").inc()
            metrics.AUTH_FAILURES.labels("mqtt", refused.reason).inc()
            log.info("MQTT connect refused for %r: %s", event.client_id[:200], refused.message)
            if refused.num_id is not None:
                self.services.bookkeeper.error(
                    refused.num_id,
                    int(Code.UNAUTHENTICATED),
                    f"mqtt: {refused.message}",
                    _now_us(),
                )
            self.session.refuse(f"mqtt: {refused.message}", refused.reason)
            return
        context = auth.context
        device = context.device
        self.registry_name = context.name
        self._contexts[device.id] = context
        self._key = auth.key
        self._token_deadline = auth.claims.deadline
        self.session.accept(device.id, device.gateway_config.is_gateway, auth.deadline)
        self._set_deadline(auth.deadline)
        self.services.hub.register(device.num_id, self)
        if self.services.rotations is not None and context.rotating:
            # Connecting with the new key completes a rotation; the device hears of it (or of a
            # rotation still waiting for it) once it subscribes to commands.
            self._rotation = await self.services.rotations.connected(
                device.num_id, self._fingerprint
            )
        metrics.CONNECTS.labels("accepted").inc()
        metrics.CONNECTED.inc()
        log.debug("MQTT device %s connected", event.client_id)

    async def _state(self, event: s.StatePublished, now: float) -> None:
        context = self._contexts[event.device_id]
        # One state update per second per device: wait rather than drop (back-pressure).
        wait = self._last_state.get(event.device_id, 0.0) + 1.0 - now
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_state[event.device_id] = time.time()
        self._touch(context, None)
        task = asyncio.ensure_future(self._store_state(context, event.payload))
        self._acknowledge(event.packet_id, now, task)

    async def _store_state(self, context: DeviceContext, payload: bytes) -> None:
        store = self.services.authenticator.store
        await store.configs.add_state(context.device.num_id, payload, _now(), keep=10)
        await self.services.router.notify_state(
            context.name, context.registry, context.device, payload
        )

    async def _attach(self, event: s.AttachRequested) -> None:
        gateway = self._contexts[self.session.device_id]
        try:
            context = await self._check_attach(gateway, event)
        except DeviceRefused as refused:
            metrics.AUTH_FAILURES.labels("gateway", refused.reason).inc()
            self.session.gateway_error("GATEWAY_ATTACHMENT_ERROR", refused.message, event.device_id)
            return
        self._contexts[event.device_id] = context
        self.session.attach(event.device_id)
        self.services.hub.register(context.device.num_id, self)
        self._touch(context, None)
        metrics.CONNECTED.inc()

    async def _check_attach(
        self, gateway: DeviceContext, event: s.AttachRequested
    ) -> DeviceContext:
        """Apply the gateway's `gatewayAuthMethod`; DeviceRefused says which rule failed."""
        method = gateway.device.gateway_config.gateway_auth_method
        if method == GatewayAuthMethod.GATEWAY_AUTH_METHOD_UNSPECIFIED:
            raise DeviceRefused(
                "gateway_auth", "the gateway has no gatewayAuthMethod; no device may attach"
            )
        token = _attach_token(event.payload)
        ref = DeviceRef.parse(gateway.name, event.device_id) if _is_id(event.device_id) else None
        if ref is None:
            raise DeviceRefused("unknown_device", f"invalid device id {event.device_id[:100]!r}")
        if method in (
            GatewayAuthMethod.DEVICE_AUTH_TOKEN_ONLY,
            GatewayAuthMethod.ASSOCIATION_AND_DEVICE_AUTH_TOKEN,
        ):
            if not token:
                raise DeviceRefused("no_token", "the gateway's auth method needs the device's JWT")
            context = (await self.services.authenticator.authenticate(ref, token, "mqtt")).context
        else:
            try:
                context = await self.services.authenticator.load(ref)
            except NotFound as error:
                raise DeviceRefused("unknown_device", error.message) from None
            if context.device.blocked:
                raise DeviceRefused("blocked", "the device is blocked")
        if context.device.gateway_config.is_gateway:
            raise DeviceRefused("gateway", "a gateway cannot be attached to another gateway")
        if method in (
            GatewayAuthMethod.ASSOCIATION_ONLY,
            GatewayAuthMethod.ASSOCIATION_AND_DEVICE_AUTH_TOKEN,
        ):
            store = self.services.authenticator.store
            if not await store.devices.is_bound(gateway.device.num_id, context.device.num_id):
                raise DeviceRefused(
                    "not_bound", f"device {event.device_id} is not bound to the gateway"
                )
        return context

    def _detach(self, device_id: str) -> None:
        context = self._contexts.pop(device_id, None)
        self.session.detach(device_id)
        if context is not None:
            self.services.hub.unregister(context.device.num_id, self)
            metrics.CONNECTED.dec()

    async def _send_current_config(self, device_id: str) -> None:
        context = self._contexts.get(device_id)
        if context is None:
            return
        ref = DeviceRef(context.name, None, context.device.num_id)
        record = await self.services.authenticator.store.devices.get_device(
            ref.registry, None, ref.num_id
        )
        if record is None or record.device.config is None:
            return
        config = record.device.config
        if self.session.publish_config(device_id, config.version, config.binary_data, time.time()):
            metrics.MESSAGES_OUT.labels("config").inc()
            self.services.bookkeeper.touch(
                context.device.num_id, "last_config_send_time", _now_us()
            )

    def _touch(self, context: DeviceContext, field: str | None) -> None:
        now_us = _now_us()
        num_id = context.device.num_id
        if field is not None:
            self.services.bookkeeper.touch(num_id, field, now_us)
        if context.device.id != self.session.device_id:
            gateway = self.session.device_id
            self.services.bookkeeper.touch(num_id, "last_gateway_time", now_us)
            self.services.bookkeeper.touch(num_id, "last_gateway_id", gateway)

    # Ordered acknowledgements

    def _acknowledge(
        self, packet_id: int | None, received: float, work: Awaitable[object] | None
    ) -> None:
        if packet_id is None:
            if work is not None:
                self._acks.append((0, received, work))
        else:
            self._acks.append((packet_id, received, work or _done()))
        if self._acks and (self._acker is None or self._acker.done()):
            self._acker = asyncio.create_task(self._ack_in_order())

    async def _ack_in_order(self) -> None:
        while self._acks:
            try:
                await self._acks[0][2]
                # Everything already durable behind the first goes out in the same write, and
                # the write's latency is its oldest PUBLISH's (one observation per write: per
                # event, the histogram's lock and buckets cost a tenth of the event path).
                oldest = 0.0
                while self._acks and _finished(self._acks[0][2]):
                    packet_id, received, work = self._acks.pop(0)
                    if isinstance(work, asyncio.Future):
                        work.result()  # raises what the work raised
                    else:
                        await work
                    if packet_id:
                        self.session.ack(packet_id)
                        oldest = oldest or received
                if oldest:
                    PUBACK_LATENCY.observe(time.time() - oldest)
            except IronCoreError as error:
                self._acks.clear()
                self.session.close(f"mqtt: {error.message}", error.code, "rejected")
                self._wake()
                return
            self._flush()
            self._wake()

    def _count_events(self) -> None:
        # Counted per batch of packets rather than per event: the counter takes a lock.
        if self._events_in:
            EVENTS_IN.inc(self._events_in)
            self._events_in = 0

    async def _closed(self, event: s.Closed) -> None:
        self._count_events()
        self._flush()
        if self.transport is not None:
            self.transport.close()
        if self._acker is not None:
            self._acker.cancel()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        for device_id in list(self._contexts):
            if device_id != self.session.device_id:
                self._detach(device_id)
        primary = self._contexts.pop(self.session.device_id, None)
        self.services.connections.discard(self)
        metrics.CONNECTIONS.dec()
        metrics.DISCONNECTS.labels(event.metric).inc()
        if primary is None:
            return
        metrics.CONNECTED.dec()
        self.services.hub.unregister(primary.device.num_id, self)
        if event.code != Code.OK:
            self.services.bookkeeper.error(
                primary.device.num_id, int(event.code), event.reason, _now_us()
            )
        log.debug("MQTT device %s disconnected: %s", primary.device.id, event.reason)


def _finished(work: Awaitable[object]) -> bool:
    return not isinstance(work, asyncio.Future) or work.done()


def _attach_token(payload: bytes) -> str:
    """The device JWT of an attach message: empty payload, `{"authorization": ""}` or a token."""
    if not payload.strip():
        return ""
    try:
        body = json.loads(payload)
    except ValueError:
        return ""
    token = body.get("authorization", "") if isinstance(body, dict) else ""
    return token if isinstance(token, str) else ""


def _is_id(device_id: str) -> bool:
    from ironcore import limits

    return limits.is_valid_id(device_id) or device_id.isdigit()


def _now() -> datetime:
    return datetime.now(UTC)


def _now_us() -> int:
    """Now in the store's microseconds, without a datetime (this runs for every event)."""
    return time.time_ns() // 1000


def _done() -> asyncio.Future[None]:
    """Work that is already done. A future, not a coroutine: `_ack_in_order` awaits the head of
    the queue twice, and a coroutine cannot be awaited again."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future
