"""One MQTT connection: the asyncio adapter around a sans-IO `Session`.

Bytes from the transport go into the session; a pump task takes the session's events in order
and hands them to the device channel (`bridge.channel`, where the rules are), then writes what
the session queued. Flow control runs both ways:

- Reading. QoS 1 messages are acknowledged in the order they arrived, each only once what it
  carries is durable; while acknowledgements are outstanding (or the connection is over its
  message rate) the session holds further packets and the transport stops reading.
- Writing. When the transport's buffer passes its high-water mark (the device does not read
  what it is sent), the connection stops producing until it drains: the pump takes no more
  packets and reading stops, so nothing new is answered; what the session queues stays there;
  a config waits (only the newest per device) and a command is refused (sendCommand answers
  FAILED_PRECONDITION, as for a full outbound window). A device that never reads again is
  dropped by its keep-alive.

Storage faults (docs/configuration.md, "When storage fails"). A CONNECT the server cannot
check because its database is out of reach (UNAVAILABLE) or its disk is full
(RESOURCE_EXHAUSTED), or that fails on anything else unexpected, is answered CONNACK 3, "server
unavailable". A message whose write fails is never acknowledged: the connection is closed with
the error's code (no PUBACK, and the messages behind it are not acknowledged either), so the
device sends it again once it reconnects. Each cause is logged once every few seconds, not per
device.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import cast

from ironcore.bridge import metrics
from ironcore.bridge.channel import ROTATION_COMMAND, DeviceChannel
from ironcore.bridge.devices import (
    DeviceContext,
    DeviceRefused,
    parse_client_id,
)
from ironcore.bridge.hub import Hub
from ironcore.bridge.mqtt import session as s
from ironcore.bridge.proxy_protocol import Address
from ironcore.errors import Code, IronCoreError, NotFound
from ironcore.identity.credentials import ParsedKey
from ironcore.logs import RateLimited
from ironcore.registry.names import RegistryName
from ironcore.registry.resources import DeviceConfig
from ironcore.registry.rotation import KeyRotation

log = logging.getLogger(__name__)
# A database outage meets every reconnecting device: one line per cause every few seconds.
failures = RateLimited(log)
# Codes that say the server could not serve, not that the device broke a rule.
_SERVER_FAULTS = frozenset({Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED, Code.DEADLINE_EXCEEDED})
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
    """What every connection shares: the process's device channel (shared with its other
    device bridges) and hub, the session limits, and the open connections."""

    channel: DeviceChannel
    hub: Hub
    limits: s.SessionLimits = field(default_factory=s.SessionLimits)
    connections: set[MqttConnection] = field(default_factory=set)


class MqttConnection(asyncio.Protocol):
    def __init__(self, services: Services, peer: Address | None = None) -> None:
        """`peer`: the client's address when a load balancer's PROXY header named it on a
        plaintext listener (None: the transport's peer)."""
        self.services = services
        self.channel = services.channel
        self.session = s.Session(now=time.time(), limits=services.limits)
        self.registry_name = _UNSET
        self.transport: asyncio.Transport | None = None
        # The pump sleeps on a bare future: an asyncio.Event costs a deque per connection.
        self._waiter: asyncio.Future[None] | None = None
        self._woken = False
        # By the device id the session knows it by (a gateway may attach a numeric id).
        self._contexts: dict[str, DeviceContext] = {}
        self._key: ParsedKey | None = None
        # The JWT's own deadline; the session's is the earlier of it and the credential's expiry.
        self._token_deadline = float("inf")
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._acks: list[tuple[int, float, Awaitable[object]]] = []
        self._acker: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._reading = True
        self._writing = True
        # Configs waiting for the transport to drain, the newest per device (None: none).
        self._held: dict[int, DeviceConfig] | None = None
        self._rotation: KeyRotation | None = None
        self._events_in = 0
        self._peer_address = peer

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

    def pause_writing(self) -> None:
        if self._writing:
            self._writing = False
            metrics.WRITE_PAUSED.inc()

    def resume_writing(self) -> None:
        if self._writing:
            return
        self._writing = True
        metrics.WRITE_PAUSED.dec()
        held, self._held = self._held, None
        for num_id, config in (held or {}).items():
            self.deliver_config(num_id, config)
        self._flush()
        self._wake()

    @property
    def finished(self) -> asyncio.Task[None] | None:
        """The task that ends when the connection is closed and cleaned up."""
        return self._pump

    @property
    def _fingerprint(self) -> str:
        """The fingerprint of the key the device authenticated with ("" before it did)."""
        return self._key.fingerprint if self._key is not None else ""

    @property
    def _peer_host(self) -> str:
        """The client's host (PROXY-protocol aware), for the audit log; "" if unknown."""
        peer = self.peer
        return peer.host if peer is not None else ""

    @property
    def peer(self) -> Address | None:
        """The client's address (through a load balancer, the one its PROXY header named)."""
        if self._peer_address is not None or self.transport is None:
            return self._peer_address
        return Address.of(self.transport.get_extra_info("peername"))

    def _wake(self) -> None:
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # What the hub and the server call

    def tick(self, now: float) -> None:
        self.session.check_timers(now, redeliver=self._writing)
        self._arm_deadline(now)
        self._wake()

    def _tick_now(self) -> None:
        self.tick(time.time())

    def deliver_config(self, num_id: int, config: DeviceConfig) -> None:
        if not self._writing:
            self._held = self._held or {}
            self._held[num_id] = config
            return
        found = self._find(num_id)
        if found is not None and self.session.publish_config(
            found[0], config.version, config.binary_data, time.time()
        ):
            metrics.MESSAGES_OUT.labels("config").inc()
            self.channel.config_sent(found[1])
            self._flush()

    def deliver_command(self, num_id: int, subfolder: str, data: bytes) -> bool:
        found = self._find(num_id)
        if (
            found is None
            or not self._writing
            or not self.session.publish_command(found[0], subfolder, data)
        ):
            return False
        metrics.MESSAGES_OUT.labels("command").inc()
        self._flush()
        return True

    async def revalidate(self, num_id: int | None) -> None:
        for device_id, context in list(self._contexts.items()):
            if num_id is not None and context.device.num_id != num_id:
                continue
            primary = device_id == self.session.device_id
            fingerprint = self._fingerprint if primary else ""
            fresh, why = await self.channel.recheck(context, fingerprint, "mqtt")
            if self._contexts.get(device_id) is not context:
                continue  # detached, attached again or disconnected while it was loading
            if fresh is not None:
                self._contexts[device_id] = fresh
            if why is not None:
                self._drop(device_id, why)
            elif primary and fresh is not None:
                # The credential's expirationTime may have been set or moved.
                expires = self.channel.credential_deadline(fresh, fingerprint)
                self._set_deadline(min(self._token_deadline, expires))

    async def catch_up(self) -> None:
        await self.revalidate(None)
        for device_id, context in list(self._contexts.items()):
            sent = self.session.config_version_sent(device_id)
            if sent is None:
                continue  # not subscribed: sent the current config when it subscribes
            try:
                config = await self.channel.current_config(context)
            except NotFound:
                continue  # deleted a moment ago: nothing to send
            if (
                config is not None
                and config.version > sent
                and self._contexts.get(device_id) is context
            ):
                self.deliver_config(context.device.num_id, config)

    def key_in_use(self, num_id: int) -> str | None:
        primary = self._contexts.get(self.session.device_id)
        return (
            self._fingerprint if primary is not None and primary.device.num_id == num_id else None
        )

    async def rotation_changed(self, num_id: int) -> None:
        primary = self._contexts.get(self.session.device_id)
        if primary is not None and primary.device.num_id == num_id:
            self._tell_rotation(await self.channel.rotation(num_id))

    def _tell_rotation(self, rotation: KeyRotation | None) -> None:
        """Send the device its rotation's state as the command `ironcore/key-rotation`."""
        body = self.channel.rotation_command(rotation)
        if body is not None and self.session.publish_command(
            self.session.device_id, ROTATION_COMMAND, body
        ):
            self._flush()

    def kick(self, num_id: int, reason: str) -> None:
        found = self._find(num_id)
        if found is None:
            return
        if found[0] == self.session.device_id:
            self.session.close(f"mqtt: {reason}", Code.FAILED_PRECONDITION, "takeover")
            self._wake()
        else:
            self._detach(found[0])

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

    def _gateway_of(self, device_id: str) -> str:
        """The gateway a device's messages come through ("" for the connected device's own)."""
        return "" if device_id == self.session.device_id else self.session.device_id

    def _find(self, num_id: int) -> tuple[str, DeviceContext] | None:
        for device_id, context in self._contexts.items():
            if context.device.num_id == num_id:
                return device_id, context
        return None

    # The pump

    async def _run(self) -> None:
        try:
            while True:
                now = time.time()
                # While the device does not read, no more packets are taken: each is answered.
                if self._writing or self.session.state is s.State.CLOSED:
                    event = self.session.next_event(now)
                else:
                    event = None
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
                try:
                    await self._handle(event, now)
                except IronCoreError as error:  # a rule broken, or the storage failed
                    self._end(error)
        except Exception as error:
            failures.error(
                type(error).__name__,
                "MQTT connection for %r failed",
                self.session.device_id,
                exc_info=True,
            )
            self.session.refuse(
                "mqtt: internal error", "internal", s.SERVER_UNAVAILABLE, Code.INTERNAL
            )
            await self._closed(s.Closed("mqtt: internal error", Code.INTERNAL, "internal"))

    def _end(self, error: IronCoreError) -> None:
        """Close the session over `error`: a broken rule, or a storage fault (logged)."""
        metric = "rejected"
        if error.code in _SERVER_FAULTS:
            metric = "unavailable"
            failures.warning(
                f"closed {error.code.name}",
                "MQTT connections closed without acknowledging: %s",
                error.message,
            )
        self.session.close(f"mqtt: {error.message}", error.code, metric)

    def _flow_control(self, now: float) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        wants = self._writing and self.session.wants_data(now)
        if wants and not self._reading:
            self.transport.resume_reading()
        elif not wants and self._reading:
            self.transport.pause_reading()
            if self.session.resume_at > now:
                asyncio.get_running_loop().call_later(self.session.resume_at - now, self._wake)
        self._reading = wants

    def _flush(self) -> None:
        if not self._writing:
            return  # held in the session until the transport drains (resume_writing)
        data = self.session.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def _handle(self, event: s.Event, now: float) -> None:
        match event:
            case s.ConnectRequested():
                await self._connect(event)
            case s.EventPublished():
                self._events_in += 1
                work = self.channel.submit_event(
                    self._contexts[event.device_id],
                    event.subfolder,
                    event.payload,
                    self._gateway_of(event.device_id),
                )
                self._acknowledge(event.packet_id, now, work)
            case s.StatePublished():
                metrics.MESSAGES_IN.labels("state").inc()
                # Waits while the device's state rate is spent (bridge/channel.py).
                stored = await self.channel.write_state(
                    self._contexts[event.device_id],
                    event.payload,
                    self._gateway_of(event.device_id),
                )
                self._acknowledge(event.packet_id, now, stored)
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
                    self.channel.config_acked(acked, event.version)
            case s.Heartbeat():
                self.channel.heartbeat(self._contexts[self.session.device_id])
            case s.CommandsSubscribed():
                if event.device_id == self.session.device_id:
                    self._tell_rotation(self._rotation)
            case s.ControlPublished():
                await self._control(event, now)

    async def _connect(self, event: s.ConnectRequested) -> None:
        try:
            ref = parse_client_id(event.client_id)
            auth = await self.channel.connect(ref, event.password or b"", "mqtt")
        except DeviceRefused as refused:
            self.channel.refused(refused, "mqtt")
            metrics.CONNECTS.labels("refused").inc()
            log.info(
                "MQTT connect refused for %r from %s: %s",
                event.client_id[:200],
                self.peer,
                refused.message,
            )
            self.session.refuse(f"mqtt: {refused.message}", refused.reason)
            return
        except IronCoreError as error:  # the device could not be checked: not its fault
            metrics.CONNECTS.labels("unavailable").inc()
            failures.warning(
                f"connect {error.code.name}",
                "MQTT connects answered CONNACK 3 (server unavailable): %s",
                error.message,
            )
            self.session.refuse(
                f"mqtt: {error.message}", "unavailable", s.SERVER_UNAVAILABLE, error.code
            )
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
        # Connecting with the new key completes a rotation; the device hears of it (or of a
        # rotation still waiting for it) once it subscribes to commands.
        self._rotation = await self.channel.connected(auth, self._peer_host)
        metrics.CONNECTS.labels("accepted").inc()
        metrics.CONNECTED.inc()
        if log.isEnabledFor(logging.DEBUG):  # looking the address up is not free
            log.debug("MQTT device %s connected from %s", event.client_id, self.peer)

    async def _attach(self, event: s.AttachRequested) -> None:
        gateway = self._contexts[self.session.device_id]
        try:
            context = await self.channel.attach(
                gateway, event.device_id, _attach_token(event.payload)
            )
        except DeviceRefused as refused:
            self.session.gateway_error("GATEWAY_ATTACHMENT_ERROR", refused.message, event.device_id)
            return
        self._contexts[event.device_id] = context
        self.session.attach(event.device_id)
        self.services.hub.register(context.device.num_id, self)
        metrics.CONNECTED.inc()

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
        try:
            config = await self.channel.current_config(context)
        except NotFound:
            return  # deleted: the hub has it dropped
        if config is not None and self.session.publish_config(
            device_id, config.version, config.binary_data, time.time()
        ):
            metrics.MESSAGES_OUT.labels("config").inc()
            self.channel.config_sent(context)

    async def _control(self, event: s.ControlPublished, now: float) -> None:
        """A message on ironcore's own topic: the device offers a key for its rotation."""
        primary = self._contexts[self.session.device_id]
        try:
            rotation = await self.channel.control(
                primary, self._fingerprint, event.name, event.payload, self._peer_host
            )
        except IronCoreError as error:
            self.session.close(
                f"mqtt: bad key offer: {error.message}", Code.INVALID_ARGUMENT, "rotation"
            )
            return
        self._acknowledge(event.packet_id, now, None)
        self._tell_rotation(rotation)

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
                self._end(error)
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
        if not self._writing:  # the goodbye goes out behind what the transport holds
            self._writing = True
            self._held = None
            metrics.WRITE_PAUSED.dec()
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
            self.channel.disconnected(primary.device.num_id, event.code, event.reason)
        log.debug("MQTT device %s disconnected: %s", primary.device.id, event.reason)


def _finished(work: Awaitable[object]) -> bool:
    return not isinstance(work, asyncio.Future) or work.done()


def _attach_token(payload: bytes) -> str:
    """The device JWT of an attach message: empty payload, `{"authorization": ""}` or a token."""
    if not payload.strip():
        return ""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to read
        return ""
    token = body.get("authorization", "") if isinstance(body, dict) else ""
    return token if isinstance(token, str) else ""


def _done() -> asyncio.Future[None]:
    """Work that is already done. A future, not a coroutine: `_ack_in_order` awaits the head of
    the queue twice, and a coroutine cannot be awaited again."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future
