"""The MQTT bridge's per-connection state machine, sans-IO (h11's design).

The caller feeds received bytes with `receive_data(data, now)`, pulls `Event`s with
`next_event(now)` and acts on them (authenticate, store, route), answers through the methods
that queue packets (`accept`, `refuse`, `ack`, `publish_config`, …) and writes out whatever
`data_to_send()` returns. It calls `check_timers(now)` about once a second. The session never
reads a clock, opens a socket or touches a database.

The session enforces Cloud IoT Core's connection rules: CONNECT first and MQTT 3.1.1 only,
clean sessions, QoS 2 refused, the topics a device or gateway may use (and event subfolders of
at most `limits.SUBFOLDER_MAX_BYTES`), keep-alive at 1.5 times, the 20-minute idle limit, the
JWT's deadline, 100 messages per second, and a bounded number of unacknowledged QoS 1 messages
in each direction. Packets a client pipelines behind CONNECT are held, not dropped, until the
caller has authenticated it.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

from ironcore import limits
from ironcore.bridge.mqtt import codec
from ironcore.errors import Code

# Connection refused return codes of CONNACK (MQTT 3.1.1 §3.2.2.3).
UNACCEPTABLE_PROTOCOL = 1
# The server cannot serve the connection now (its database is out of reach, its disk full).
SERVER_UNAVAILABLE = 3
NOT_AUTHORIZED = 5


@dataclass(frozen=True)
class SessionLimits:
    # Cloud IoT Core's quota: 100 incoming messages per second per connection.
    messages_per_second: float = 100.0
    # Inbound QoS 1 PUBLISHes handed to the caller and not yet acknowledged. While this many are
    # pending, the session holds further packets (the caller should pause reading), so one
    # connection cannot queue unbounded work. paho's default max_inflight is 20.
    max_inbound_in_flight: int = 32
    # Outbound QoS 1 commands not yet acknowledged; beyond this a command is refused.
    max_outbound_in_flight: int = 64
    # An unacknowledged QoS 1 config is sent again after this long (with DUP set).
    config_redelivery_seconds: float = 10.0
    # A client that opens TCP (and TLS) but sends no CONNECT is dropped after this long.
    connect_timeout_seconds: float = 10.0
    idle_seconds: float = limits.MQTT_IDLE_SECONDS
    max_packet_size: int = codec.MAX_PACKET_SIZE
    max_buffer_size: int = codec.MAX_BUFFER_SIZE


class State(enum.Enum):
    AWAIT_CONNECT = "await-connect"
    AUTHENTICATING = "authenticating"
    CONNECTED = "connected"
    CLOSED = "closed"


# Events the caller acts on.


@dataclass(slots=True)
class ConnectRequested:
    client_id: str
    password: bytes | None
    keep_alive: int


@dataclass(slots=True)
class EventPublished:
    device_id: str
    subfolder: str
    payload: bytes
    # None for QoS 0; otherwise the caller must `ack(packet_id)` once the event is durable.
    packet_id: int | None


@dataclass(slots=True)
class StatePublished:
    device_id: str
    payload: bytes
    packet_id: int | None


@dataclass(slots=True)
class AttachRequested:
    device_id: str
    payload: bytes
    packet_id: int | None


@dataclass(slots=True)
class DetachRequested:
    device_id: str
    packet_id: int | None


@dataclass(slots=True)
class ConfigSubscribed:
    """The caller must answer with `publish_config` carrying the current config (even empty)."""

    device_id: str


@dataclass(slots=True)
class CommandsSubscribed:
    """The device now receives commands (ironcore may have one waiting, e.g. a key rotation)."""

    device_id: str


@dataclass(slots=True)
class ControlPublished:
    """A message on ironcore's own device topic `/devices/{id}/ironcore/{name}` (key rotation);
    only the connected device itself may publish there. Acknowledge like an event."""

    device_id: str
    name: str
    payload: bytes
    packet_id: int | None


@dataclass(slots=True)
class ConfigAcked:
    device_id: str
    version: int


@dataclass(slots=True)
class Heartbeat:
    """PINGREQ (already answered): the device's lastHeartbeatTime."""


@dataclass(slots=True)
class Closed:
    """The session is over; write out `data_to_send()` and close the connection.

    `reason` is for the device's lastErrorStatus (with `code`) and the log; `metric` is a short
    label for counters. A clean DISCONNECT from the client has code OK.
    """

    reason: str
    code: Code
    metric: str


Event = (
    ConnectRequested
    | EventPublished
    | StatePublished
    | AttachRequested
    | DetachRequested
    | ConfigSubscribed
    | CommandsSubscribed
    | ControlPublished
    | ConfigAcked
    | Heartbeat
    | Closed
)


@dataclass
class _OutboundConfig:
    packet_id: int
    version: int
    data: bytes
    sent_at: float


@dataclass
class _Subscriptions:
    config_qos: int | None = None
    commands_qos: int | None = None
    # The config version last published on the config subscription (-1: none yet).
    config_version: int = -1


@dataclass
class Session:
    now: float
    limits: SessionLimits = field(default_factory=SessionLimits)
    state: State = State.AWAIT_CONNECT
    device_id: str = ""
    is_gateway: bool = False
    deadline: float = float("inf")
    keep_alive: int = 0

    def __post_init__(self) -> None:
        self._decoder = codec.Decoder(self.limits.max_packet_size, self.limits.max_buffer_size)
        self._out = bytearray()
        # A list, not a deque: rarely more than two events wait, and a deque costs 760 bytes.
        self._events: list[Event] = []
        self._opened_at = self.now
        self._last_received = self.now
        self._tokens = self.limits.messages_per_second
        self._tokens_at = self.now
        self._resume_at = 0.0
        # Dicts used as sets: an empty dict is a third of an empty set, and most connections
        # never hold more than a few entries.
        self._inbound_pending: dict[int, None] = {}
        self._attached: dict[str, None] = {}
        self._subscriptions: dict[str, _Subscriptions] = {}
        self._errors_subscribed = False
        self._configs: dict[str, _OutboundConfig] = {}
        # Outbound QoS 1 packet ids in flight: the config's device id, or None for a command.
        self._outbound: dict[int, str | None] = {}
        self._next_packet_id = 1

    # Input

    def receive_data(self, data: bytes, now: float) -> None:
        if self.state is State.CLOSED:
            return
        self._last_received = now
        try:
            self._decoder.feed(data)
        except codec.ProtocolError as error:
            self._close(
                f"mqtt: malformed packet: {error.message}", Code.INVALID_ARGUMENT, "protocol"
            )

    def next_event(self, now: float) -> Event | None:
        """The next event, or None when the session needs more bytes or is holding packets.

        Packets are held while the CONNECT is being authenticated, while too many inbound QoS 1
        messages wait for `ack`, and while the connection is over its message rate; the caller
        should pause reading while `wants_data(now)` is false.
        """
        while not self._events:
            if self.state is State.CLOSED or not self._may_process(now):
                return None
            try:
                packet = self._decoder.next_packet()
            except codec.ProtocolError as error:
                self._close(
                    f"mqtt: malformed packet: {error.message}", Code.INVALID_ARGUMENT, "protocol"
                )
                continue
            if packet is None:
                return None
            self._handle(packet, now)
        return self._events.pop(0)

    def wants_data(self, now: float) -> bool:
        return self.state is not State.CLOSED and self._may_process(now)

    @property
    def resume_at(self) -> float:
        """When a session paused by its message rate may go on."""
        return self._resume_at

    def _may_process(self, now: float) -> bool:
        if self.state is State.AUTHENTICATING:
            return False
        if len(self._inbound_pending) >= self.limits.max_inbound_in_flight:
            return False
        return now >= self._resume_at

    def _handle(self, packet: codec.Packet, now: float) -> None:
        if self.state is State.AWAIT_CONNECT:
            self._handle_connect(packet)
            return
        match packet:
            case codec.Publish():
                self._take_token(now)
                self._handle_publish(packet)
            case codec.Puback(packet_id=packet_id):
                self._handle_puback(packet_id)
            case codec.Subscribe():
                self._handle_subscribe(packet)
            case codec.Unsubscribe(packet_id=packet_id, topics=topics):
                for topic in topics:
                    self._unsubscribe(topic)
                self._send(codec.Unsuback(packet_id))
            case codec.Pingreq():
                self._send(codec.Pingresp())
                self._events.append(Heartbeat())
            case codec.Disconnect():
                self._close("mqtt: The connection was closed by the client.", Code.OK, "client")
            case codec.Connect():
                self._close(
                    "mqtt: a second CONNECT on one connection", Code.INVALID_ARGUMENT, "protocol"
                )
            case _:
                name = type(packet).__name__.upper()
                self._close(
                    f"mqtt: unexpected {name} from a client", Code.INVALID_ARGUMENT, "protocol"
                )

    def _handle_connect(self, packet: codec.Packet) -> None:
        if not isinstance(packet, codec.Connect):
            self._close("mqtt: the first packet was not CONNECT", Code.INVALID_ARGUMENT, "protocol")
            return
        # MQTT 3.1.1 is "MQTT" level 4; the codec skips the payload of any other pair (such as
        # "MQIsdp" 4), so its client id and password are not there to authenticate.
        if (packet.protocol_name, packet.protocol_level) != ("MQTT", 4):
            self._send(codec.Connack(False, UNACCEPTABLE_PROTOCOL))
            self._close(
                f"mqtt: protocol {packet.protocol_name!r} level {packet.protocol_level} "
                "(only MQTT 3.1.1 is supported)",
                Code.INVALID_ARGUMENT,
                "protocol_version",
            )
            return
        self.state = State.AUTHENTICATING
        self.keep_alive = packet.keep_alive
        self._events.append(ConnectRequested(packet.client_id, packet.password, packet.keep_alive))

    def _take_token(self, now: float) -> None:
        rate = self.limits.messages_per_second
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        self._tokens -= 1
        # Pause once less than a whole message's token is left, so that a burst never exceeds
        # the bucket: a full bucket lets exactly `rate` messages through at once.
        if self._tokens < 1:
            self._resume_at = now + (1 - self._tokens) / rate

    def _handle_publish(self, packet: codec.Publish) -> None:
        if packet.qos == 2:
            self._close("mqtt: QoS 2 is not supported", Code.INVALID_ARGUMENT, "qos2")
            return
        packet_id = packet.packet_id if packet.qos == 1 else None
        device_id, kind, rest = _split(packet.topic)
        if device_id is None:
            self._bad_topic(packet.topic)
            return
        if kind == "ironcore" and rest and device_id == self.device_id:
            if packet_id is not None:
                self._inbound_pending[packet_id] = None
            self._events.append(ControlPublished(device_id, rest, packet.payload, packet_id))
            return
        if kind in ("attach", "detach") and not rest:
            if not self.is_gateway:
                self._close(
                    f"mqtt: only gateways may publish to {packet.topic}",
                    Code.PERMISSION_DENIED,
                    "topic",
                )
                return
            if packet_id is not None:
                self._inbound_pending[packet_id] = None
            if kind == "attach":
                self._events.append(AttachRequested(device_id, packet.payload, packet_id))
            else:
                self._events.append(DetachRequested(device_id, packet_id))
            return
        if kind not in ("events", "state") or (kind == "state" and rest):
            self._bad_topic(packet.topic)
            return
        if not self._may_use(device_id):
            if self.is_gateway:
                self.gateway_error(
                    "GATEWAY_DEVICE_NOT_FOUND",
                    f"The specified device with ID '{device_id}' is not attached to the gateway.",
                    device_id,
                    {"message_type": "PUBLISH", "topic": packet.topic, "packet_id": packet_id},
                )
                if packet_id is not None:
                    self._send(codec.Puback(packet_id))
                return
            self._bad_topic(packet.topic)
            return
        if kind == "events" and len(rest.encode()) > limits.SUBFOLDER_MAX_BYTES:
            self._close(
                f"mqtt: The event subfolder is {len(rest.encode())} bytes; at most "
                f"{limits.SUBFOLDER_MAX_BYTES} are allowed: {rest[:60]}…",
                Code.INVALID_ARGUMENT,
                "subfolder",
            )
            return
        if packet_id is not None:
            self._inbound_pending[packet_id] = None
        if kind == "events":
            self._events.append(EventPublished(device_id, rest, packet.payload, packet_id))
        else:
            self._events.append(StatePublished(device_id, packet.payload, packet_id))

    def _bad_topic(self, topic: str) -> None:
        self._close(
            f"mqtt: The device published to a topic it may not use: {topic[:200]}",
            Code.PERMISSION_DENIED,
            "topic",
        )

    def _may_use(self, device_id: str) -> bool:
        return device_id == self.device_id or device_id in self._attached

    def _handle_puback(self, packet_id: int) -> None:
        device_id = self._outbound.pop(packet_id, "")
        if device_id:
            config = self._configs.get(device_id)
            if config is not None and config.packet_id == packet_id:
                del self._configs[device_id]
                self._events.append(ConfigAcked(device_id, config.version))

    def _handle_subscribe(self, packet: codec.Subscribe) -> None:
        codes = []
        wants_config = []
        wants_commands = []
        for topic, qos in packet.subscriptions:
            granted = min(qos, 1)
            device_id, kind, rest = _split(topic)
            if device_id is not None and self._may_use(device_id) and kind == "config" and not rest:
                self._subscriptions.setdefault(device_id, _Subscriptions()).config_qos = granted
                wants_config.append(device_id)
            elif (
                device_id is not None
                and self._may_use(device_id)
                and kind == "commands"
                and rest == "#"
            ):
                self._subscriptions.setdefault(device_id, _Subscriptions()).commands_qos = granted
                wants_commands.append(device_id)
            elif self.is_gateway and device_id == self.device_id and kind == "errors" and not rest:
                self._errors_subscribed = True
            else:
                granted = 0x80
            codes.append(granted)
        self._send(codec.Suback(packet.packet_id, tuple(codes)))
        self._events.extend(ConfigSubscribed(device_id) for device_id in wants_config)
        self._events.extend(CommandsSubscribed(device_id) for device_id in wants_commands)

    def _unsubscribe(self, topic: str) -> None:
        device_id, kind, rest = _split(topic)
        if device_id is None:
            return
        if device_id == self.device_id and kind == "errors" and not rest:
            self._errors_subscribed = False
            return
        subscriptions = self._subscriptions.get(device_id)
        if subscriptions is None:
            return
        if kind == "config" and not rest:
            subscriptions.config_qos = None
            self._drop_config(device_id)
        elif kind == "commands" and rest == "#":
            subscriptions.commands_qos = None

    # Answers from the caller

    def accept(self, device_id: str, is_gateway: bool, deadline: float) -> None:
        """CONNACK 0: the CONNECT authenticated as `device_id`, valid until `deadline`."""
        if self.state is not State.AUTHENTICATING:
            return
        self.state = State.CONNECTED
        self.device_id = device_id
        self.is_gateway = is_gateway
        self.deadline = deadline
        self._send(codec.Connack(False, 0))

    def refuse(
        self,
        reason: str,
        metric: str,
        return_code: int = NOT_AUTHORIZED,
        code: Code = Code.UNAUTHENTICATED,
    ) -> None:
        """CONNACK `return_code`, then close with `code`; `reason` is recorded, never sent to
        the client. Nothing happens unless a CONNECT waits for its answer."""
        if self.state is not State.AUTHENTICATING:
            return
        self._send(codec.Connack(False, return_code))
        self._close(reason, code, metric)

    def ack(self, packet_id: int) -> None:
        """PUBACK an inbound QoS 1 message once what it carries is durable."""
        if packet_id in self._inbound_pending:
            del self._inbound_pending[packet_id]
            self._send(codec.Puback(packet_id))

    def attach(self, device_id: str) -> None:
        self._attached[device_id] = None

    def detach(self, device_id: str) -> None:
        self._attached.pop(device_id, None)
        self._subscriptions.pop(device_id, None)
        self._drop_config(device_id)

    @property
    def attached(self) -> frozenset[str]:
        return frozenset(self._attached)

    def is_subscribed_to_config(self, device_id: str) -> bool:
        subscriptions = self._subscriptions.get(device_id)
        return subscriptions is not None and subscriptions.config_qos is not None

    def config_version_sent(self, device_id: str) -> int | None:
        """The config version last sent to the subscribed device (-1: none yet); None if it is
        not subscribed to its config."""
        subscriptions = self._subscriptions.get(device_id)
        if subscriptions is None or subscriptions.config_qos is None:
            return None
        return subscriptions.config_version

    def publish_config(self, device_id: str, version: int, data: bytes, now: float) -> bool:
        """Send a config version if the device is subscribed and was not sent a newer one;
        False otherwise.

        With QoS 1 the newest version supersedes an unacknowledged older one and is sent again
        until the device acknowledges it. An older version comes late: the current config read
        for a new subscription while a newer version was being stored and delivered, or changes
        heard out of order. Sending it would supersede the newer one, which the device would
        then never acknowledge.
        """
        subscriptions = self._subscriptions.get(device_id)
        if self.state is not State.CONNECTED or subscriptions is None:
            return False
        qos = subscriptions.config_qos
        if qos is None or version < subscriptions.config_version:
            return False
        subscriptions.config_version = version
        topic = f"/devices/{device_id}/config"
        # Also after a re-subscription at QoS 0: an older version must not be redelivered.
        self._drop_config(device_id)
        if qos == 0:
            self._send(codec.Publish(topic, data))
            return True
        packet_id = self._allocate_packet_id(device_id)
        self._configs[device_id] = _OutboundConfig(packet_id, version, data, now)
        self._send(codec.Publish(topic, data, qos=1, packet_id=packet_id))
        return True

    def publish_command(self, device_id: str, subfolder: str, data: bytes) -> bool:
        """Send a command if the device is subscribed to its commands; False otherwise."""
        subscriptions = self._subscriptions.get(device_id)
        if self.state is not State.CONNECTED or subscriptions is None:
            return False
        qos = subscriptions.commands_qos
        if qos is None:
            return False
        topic = f"/devices/{device_id}/commands" + (f"/{subfolder}" if subfolder else "")
        if qos == 0:
            self._send(codec.Publish(topic, data))
            return True
        if len(self._outbound) >= self.limits.max_outbound_in_flight:
            return False
        self._send(codec.Publish(topic, data, qos=1, packet_id=self._allocate_packet_id(None)))
        return True

    def gateway_error(
        self,
        error_type: str,
        description: str,
        device_id: str,
        message_info: dict[str, object] | None = None,
    ) -> None:
        """Tell a gateway about a failure on its errors topic (QoS 0), if it subscribed."""
        if not self._errors_subscribed:
            return
        body: dict[str, object] = {
            "error_type": error_type,
            "description": description,
            "device_id": device_id,
        }
        if message_info is not None:
            body["mqtt_message_info"] = message_info
        self._send(codec.Publish(f"/devices/{self.device_id}/errors", json.dumps(body).encode()))

    def close(self, reason: str, code: Code, metric: str) -> None:
        """End the session from the server's side (device blocked, taken over, shutdown, …)."""
        self._close(reason, code, metric)

    def check_timers(self, now: float, redeliver: bool = True) -> None:
        """Apply the connection's deadlines; with `redeliver`, send unacknowledged configs
        again (the caller passes False while the client is not reading what it is sent)."""
        if self.state is State.CLOSED:
            return
        if self.state is State.AWAIT_CONNECT:
            if now - self._opened_at > self.limits.connect_timeout_seconds:
                self._close(
                    "mqtt: no CONNECT received in time", Code.DEADLINE_EXCEEDED, "connect_timeout"
                )
            return
        if self.state is not State.CONNECTED:
            return
        silent = now - self._last_received
        if self.keep_alive and silent > 1.5 * self.keep_alive:
            self._close(
                "mqtt: SERVER: The connection was closed because MQTT keep-alive check failed.",
                Code.FAILED_PRECONDITION,
                "keepalive",
            )
        elif silent > self.limits.idle_seconds:
            self._close(
                "mqtt: SERVER: The connection was closed because it was idle for too long.",
                Code.FAILED_PRECONDITION,
                "idle",
            )
        elif now > self.deadline:
            self._close(
                "mqtt: SERVER: The connection was closed because the credentials expired.",
                Code.UNAUTHENTICATED,
                "credentials_expired",
            )
        elif redeliver:
            for device_id, config in self._configs.items():
                if now - config.sent_at >= self.limits.config_redelivery_seconds:
                    config.sent_at = now
                    topic = f"/devices/{device_id}/config"
                    self._send(
                        codec.Publish(
                            topic, config.data, qos=1, dup=True, packet_id=config.packet_id
                        )
                    )

    # Output

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def _send(self, packet: codec.Packet) -> None:
        self._out += codec.encode(packet)

    def _close(self, reason: str, code: Code, metric: str) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self._events.append(Closed(reason, code, metric))

    def _drop_config(self, device_id: str) -> None:
        """Forget an unacknowledged config, freeing its outbound slot: its PUBACK acks nothing."""
        config = self._configs.pop(device_id, None)
        if config is not None:
            self._outbound.pop(config.packet_id, None)

    def _allocate_packet_id(self, device_id: str | None) -> int:
        while True:
            packet_id = self._next_packet_id
            self._next_packet_id = packet_id % 65535 + 1
            if packet_id not in self._outbound:
                self._outbound[packet_id] = device_id
                return packet_id


def _split(topic: str) -> tuple[str | None, str, str]:
    """`/devices/{id}/{kind}[/{rest}]` → (id, kind, rest); (None, "", "") if not that shape."""
    if not topic.startswith("/devices/"):
        return None, "", ""
    device_id, _, tail = topic[len("/devices/") :].partition("/")
    kind, _, rest = tail.partition("/")
    if not device_id or not kind:
        return None, "", ""
    return device_id, kind, rest
