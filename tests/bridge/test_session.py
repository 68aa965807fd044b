"""The sans-IO MQTT session: Cloud IoT Core's connection rules, driven by a hand-moved clock.

No sockets: bytes go in with `receive_data`, events come out of `next_event`, and what the
session writes is decoded with the codec so the tests assert on packets, not raw bytes.
"""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ironcore.bridge.mqtt import codec
from ironcore.bridge.mqtt.codec import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    encode,
)
from ironcore.bridge.mqtt.session import (
    AttachRequested,
    Closed,
    CommandsSubscribed,
    ConfigAcked,
    ConfigSubscribed,
    ConnectRequested,
    DetachRequested,
    Event,
    EventPublished,
    Heartbeat,
    Session,
    SessionLimits,
    State,
    StatePublished,
)
from ironcore.errors import Code

T0 = 1_700_000_000.0
DEVICE = "dev"
GATEWAY = "gw"
CLIENT_ID = f"projects/p/locations/us-central1/registries/reg/devices/{DEVICE}"


def connect_packet(keep_alive: int = 60, level: int = 4, name: str = "MQTT") -> Connect:
    return Connect(name, level, True, keep_alive, CLIENT_ID, "unused", b"the-jwt")


def sent(session: Session) -> list[Packet]:
    """The packets the session queued since the last call, decoded."""
    decoder = codec.Decoder(codec.MAX_PACKET_SIZE, codec.MAX_BUFFER_SIZE)
    decoder.feed(session.data_to_send())
    packets = []
    while (packet := decoder.next_packet()) is not None:
        packets.append(packet)
    return packets


def feed(session: Session, *packets: Packet, now: float) -> None:
    session.receive_data(b"".join(encode(packet) for packet in packets), now)


def events(session: Session, now: float) -> list[Event]:
    """Every event available now (bounded, so a looping session fails instead of hanging)."""
    out: list[Event] = []
    for _ in range(10_000):
        event = session.next_event(now)
        if event is None:
            return out
        out.append(event)
    raise AssertionError("next_event never returned None")


def only_closed(found: list[Event]) -> Closed:
    assert len(found) == 1, found
    assert isinstance(found[0], Closed), found
    return found[0]


def connected(
    device_id: str = DEVICE,
    *,
    gateway: bool = False,
    keep_alive: int = 60,
    deadline: float = float("inf"),
    limits: SessionLimits | None = None,
) -> Session:
    """A session past CONNECT/CONNACK 0 at T0, with its output drained."""
    session = Session(now=T0, limits=limits or SessionLimits())
    feed(session, connect_packet(keep_alive), now=T0)
    assert events(session, T0) == [ConnectRequested(CLIENT_ID, b"the-jwt", keep_alive)]
    session.accept(device_id, gateway, deadline)
    assert sent(session) == [Connack(False, 0)]
    assert session.state is State.CONNECTED
    return session


def subscribe(
    session: Session, *subscriptions: tuple[str, int], packet_id: int = 1, now: float = T0
) -> tuple[tuple[int, ...], list[Event]]:
    """SUBSCRIBE; the granted codes from the SUBACK and the events it produced."""
    feed(session, Subscribe(packet_id, subscriptions), now=now)
    found = events(session, now)
    (suback,) = sent(session)
    assert isinstance(suback, Suback)
    assert suback.packet_id == packet_id
    return suback.return_codes, found


# CONNECT


@pytest.mark.parametrize(
    "first",
    [Pingreq(), Publish(f"/devices/{DEVICE}/events", b"x"), Subscribe(1, (("a", 0),))],
    ids=["pingreq", "publish", "subscribe"],
)
def test_the_first_packet_must_be_connect(first: Packet) -> None:
    session = Session(now=T0)
    feed(session, first, connect_packet(), now=T0)
    closed = only_closed(events(session, T0))
    assert closed.code is Code.INVALID_ARGUMENT
    assert "first packet" in closed.reason
    assert sent(session) == []
    assert session.state is State.CLOSED


@pytest.mark.parametrize(
    ("name", "level"), [("MQTT", 5), ("MQIsdp", 3), ("MQTT", 3), ("MQIsdp", 4), ("MQTT", 6)]
)
def test_anything_but_mqtt_3_1_1_gets_connack_1_then_closed(name: str, level: int) -> None:
    session = Session(now=T0)
    feed(session, connect_packet(level=level, name=name), now=T0)
    closed = only_closed(events(session, T0))
    assert closed.metric == "protocol_version"
    assert sent(session) == [Connack(False, 1)]


def test_packets_pipelined_behind_connect_wait_for_authentication() -> None:
    session = Session(now=T0)
    feed(
        session,
        connect_packet(),
        Subscribe(2, ((f"/devices/{DEVICE}/config", 1), (f"/devices/{DEVICE}/commands/#", 0))),
        Publish(f"/devices/{DEVICE}/events", b"early", qos=1, packet_id=7),
        now=T0,
    )
    assert session.next_event(T0) == ConnectRequested(CLIENT_ID, b"the-jwt", 60)
    assert session.state is State.AUTHENTICATING
    # Held, not dropped, and nothing answered before CONNACK.
    assert session.next_event(T0) is None
    assert not session.wants_data(T0)
    assert sent(session) == []

    session.accept(DEVICE, False, float("inf"))
    assert events(session, T0) == [
        ConfigSubscribed(DEVICE),
        CommandsSubscribed(DEVICE),
        EventPublished(DEVICE, "", b"early", 7),
    ]
    assert sent(session) == [Connack(False, 0), Suback(2, (1, 0))]
    assert session.wants_data(T0)
    session.ack(7)
    assert sent(session) == [Puback(7)]


def test_refuse_sends_connack_5_and_closes_unauthenticated() -> None:
    session = Session(now=T0)
    feed(
        session,
        connect_packet(),
        Subscribe(2, ((f"/devices/{DEVICE}/config", 1),)),
        now=T0,
    )
    assert isinstance(session.next_event(T0), ConnectRequested)
    session.refuse("mqtt: invalid JWT: bad signature", "signature")
    assert events(session, T0) == [
        Closed("mqtt: invalid JWT: bad signature", Code.UNAUTHENTICATED, "signature")
    ]
    # The pipelined SUBSCRIBE is never answered.
    assert sent(session) == [Connack(False, 5)]
    session.accept(DEVICE, False, float("inf"))
    assert sent(session) == []
    assert session.state is State.CLOSED


def test_a_second_connect_closes() -> None:
    session = connected()
    feed(session, connect_packet(), now=T0)
    closed = only_closed(events(session, T0))
    assert closed.code is Code.INVALID_ARGUMENT
    assert "second CONNECT" in closed.reason


def test_disconnect_closes_with_ok() -> None:
    session = connected()
    feed(session, Disconnect(), now=T0)
    closed = only_closed(events(session, T0))
    assert (closed.code, closed.metric) == (Code.OK, "client")
    # Nothing after the close is looked at.
    feed(session, Publish(f"/devices/{DEVICE}/events", b"late"), now=T0)
    assert events(session, T0) == []


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00",  # reserved packet type 0
        b"\xf0\x00",  # reserved packet type 15
        b"\x30\xff\xff\xff\xff\x01",  # remaining length with 5 bytes
        b"\x82\x05\x00\x01\x00\x01a",  # SUBSCRIBE missing its QoS byte
        b"\x80\x06\x00\x01\x00\x01a\x00",  # SUBSCRIBE with flags 0 instead of 2
        b"\x36\x05\x00\x01a\x00\x01",  # PUBLISH with QoS 3
        b"\x30\x05\x00\x01#ab",  # wildcard in a PUBLISH topic
        b"\x40\x03\x00\x01\x00",  # PUBACK with a trailing byte
    ],
)
def test_malformed_bytes_close_with_invalid_argument(garbage: bytes) -> None:
    session = connected()
    # A good packet before the garbage still comes out first.
    feed(session, Publish(f"/devices/{DEVICE}/events", b"fine"), now=T0)
    session.receive_data(garbage, T0)
    found = events(session, T0)
    assert found[0] == EventPublished(DEVICE, "", b"fine", None)
    closed = only_closed(found[1:])
    assert (closed.code, closed.metric) == (Code.INVALID_ARGUMENT, "protocol")
    assert sent(session) == []


def test_malformed_bytes_before_connect_close() -> None:
    session = Session(now=T0)
    session.receive_data(b"\x10\x80\x80\x80\x80\x01", T0)
    closed = only_closed(events(session, T0))
    assert closed.code is Code.INVALID_ARGUMENT


def test_more_buffered_bytes_than_the_limit_close() -> None:
    limits = SessionLimits(max_packet_size=1024, max_buffer_size=2048)
    session = Session(now=T0, limits=limits)
    feed(session, connect_packet(), now=T0)
    assert isinstance(session.next_event(T0), ConnectRequested)
    # While authenticating nothing is decoded, so the buffer fills up.
    session.receive_data(encode(Pingreq()) * 1025, T0)
    closed = only_closed(events(session, T0))
    assert closed.code is Code.INVALID_ARGUMENT


def test_a_packet_larger_than_the_limit_closes() -> None:
    session = connected(limits=SessionLimits(max_packet_size=1024, max_buffer_size=4096))
    feed(session, Publish(f"/devices/{DEVICE}/events", bytes(2000)), now=T0)
    closed = only_closed(events(session, T0))
    assert "exceeds the packet size limit" in closed.reason


@pytest.mark.parametrize("packet", [Connack(False, 0), Suback(1, (0,)), Pingresp()])
def test_server_side_packets_from_a_client_close(packet: Packet) -> None:
    session = connected()
    feed(session, packet, now=T0)
    closed = only_closed(events(session, T0))
    assert closed.code is Code.INVALID_ARGUMENT


# Publishing


def test_qos_2_publish_closes() -> None:
    session = connected()
    feed(session, Publish(f"/devices/{DEVICE}/events", b"x", qos=2, packet_id=5), now=T0)
    closed = only_closed(events(session, T0))
    assert closed.metric == "qos2"
    assert sent(session) == []


@pytest.mark.parametrize(
    ("topic", "subfolder"),
    [
        (f"/devices/{DEVICE}/events", ""),
        (f"/devices/{DEVICE}/events/alerts", "alerts"),
        (f"/devices/{DEVICE}/events/a/b", "a/b"),
    ],
)
def test_events_carry_everything_after_events_as_subfolder(topic: str, subfolder: str) -> None:
    session = connected()
    feed(session, Publish(topic, b"t", qos=1, packet_id=3), now=T0)
    assert events(session, T0) == [EventPublished(DEVICE, subfolder, b"t", 3)]
    # QoS 1 is acknowledged only when the caller says so.
    assert sent(session) == []
    session.ack(3)
    assert sent(session) == [Puback(3)]


@pytest.mark.parametrize(
    ("longest", "too_long"),
    [("s" * 256, "s" * 257), ("é" * 128, "é" * 129), ("a/" * 127 + "bc", "s" * 10_000)],
)
def test_event_subfolders_are_at_most_256_bytes(longest: str, too_long: str) -> None:
    session = connected()
    feed(session, Publish(f"/devices/{DEVICE}/events/{longest}", b"e", qos=1, packet_id=5), now=T0)
    assert events(session, T0) == [EventPublished(DEVICE, longest, b"e", 5)]
    session = connected()
    feed(session, Publish(f"/devices/{DEVICE}/events/{too_long}", b"e", qos=1, packet_id=5), now=T0)
    closed = only_closed(events(session, T0))
    assert (closed.code, closed.metric) == (Code.INVALID_ARGUMENT, "subfolder")
    assert f"subfolder is {len(too_long.encode())} bytes; at most 256" in closed.reason
    # Never acknowledged: the event was not taken.
    assert sent(session) == []


def test_an_attached_devices_event_subfolder_is_bounded_too() -> None:
    session = connected(gateway=True)
    session.attach("child")
    feed(session, Publish(f"/devices/child/events/{'s' * 257}", b"e", qos=1, packet_id=6), now=T0)
    closed = only_closed(events(session, T0))
    assert (closed.code, closed.metric) == (Code.INVALID_ARGUMENT, "subfolder")


def test_state_qos_0_and_1() -> None:
    session = connected()
    feed(
        session,
        Publish(f"/devices/{DEVICE}/state", b"s0"),
        Publish(f"/devices/{DEVICE}/state", b"s1", qos=1, packet_id=4),
        now=T0,
    )
    assert events(session, T0) == [
        StatePublished(DEVICE, b"s0", None),
        StatePublished(DEVICE, b"s1", 4),
    ]


@pytest.mark.parametrize(
    "topic",
    [
        "/devices/other/events",
        "/devices/other/state",
        f"/devices/{DEVICE}/config",
        f"/devices/{DEVICE}/commands",
        f"/devices/{DEVICE}/errors",
        f"/devices/{DEVICE}/whatever",
        f"/devices/{DEVICE}",
        "/devices//events",
        "devices/dev/events",
        "some/topic",
    ],
)
def test_publishing_to_a_foreign_topic_closes(topic: str) -> None:
    session = connected()
    feed(session, Publish(topic, b"x", qos=1, packet_id=1), now=T0)
    closed = only_closed(events(session, T0))
    assert (closed.code, closed.metric) == (Code.PERMISSION_DENIED, "topic")
    assert sent(session) == []


def test_state_with_a_subfolder_closes() -> None:
    session = connected()
    feed(session, Publish(f"/devices/{DEVICE}/state/sub", b"x"), now=T0)
    closed = only_closed(events(session, T0))
    assert closed.code is Code.PERMISSION_DENIED


@pytest.mark.parametrize("kind", ["attach", "detach"])
def test_a_device_that_is_not_a_gateway_may_not_attach(kind: str) -> None:
    session = connected()
    feed(session, Publish(f"/devices/other/{kind}", b"", qos=1, packet_id=1), now=T0)
    closed = only_closed(events(session, T0))
    assert closed.code is Code.PERMISSION_DENIED
    assert "only gateways" in closed.reason
    assert sent(session) == []


# Subscribing


def test_subscribe_grants_qos_0_and_1_and_downgrades_2() -> None:
    session = connected()
    codes, found = subscribe(
        session, (f"/devices/{DEVICE}/config", 2), (f"/devices/{DEVICE}/commands/#", 2)
    )
    assert codes == (1, 1)
    assert found == [ConfigSubscribed(DEVICE), CommandsSubscribed(DEVICE)]
    assert session.is_subscribed_to_config(DEVICE)


def test_subscriptions_the_bridge_does_not_serve_get_0x80_and_the_connection_stays() -> None:
    session = connected()
    codes, found = subscribe(
        session,
        (f"/devices/{DEVICE}/config", 0),
        ("/devices/other/config", 1),
        (f"/devices/{DEVICE}/commands", 0),
        (f"/devices/{DEVICE}/commands/sys", 0),
        (f"/devices/{DEVICE}/commands/+", 0),
        (f"/devices/{DEVICE}/config/x", 0),
        (f"/devices/{DEVICE}/errors", 0),  # only gateways have an errors topic
        ("#", 0),
    )
    assert codes == (0, *[0x80] * 7)
    assert found == [ConfigSubscribed(DEVICE)]
    assert session.state is State.CONNECTED
    assert session.publish_command(DEVICE, "sys", b"c") is False


def test_unsubscribe_config_and_commands() -> None:
    session = connected()
    subscribe(session, (f"/devices/{DEVICE}/config", 1), (f"/devices/{DEVICE}/commands/#", 0))
    feed(
        session,
        Unsubscribe(9, (f"/devices/{DEVICE}/config", f"/devices/{DEVICE}/commands/#")),
        now=T0,
    )
    assert events(session, T0) == []
    assert sent(session) == [Unsuback(9)]
    assert not session.is_subscribed_to_config(DEVICE)
    assert session.publish_config(DEVICE, 1, b"c", T0) is False
    assert session.publish_command(DEVICE, "", b"c") is False


def test_pingreq_is_answered_and_reported_as_heartbeat() -> None:
    session = connected()
    feed(session, Pingreq(), now=T0 + 5)
    assert events(session, T0 + 5) == [Heartbeat()]
    assert sent(session) == [Pingresp()]


# Gateways


def test_gateway_attach_publish_detach() -> None:
    session = connected(GATEWAY, gateway=True)
    payload = b'{"authorization" : ""}'
    feed(session, Publish("/devices/child/attach", payload, qos=1, packet_id=3), now=T0)
    assert events(session, T0) == [AttachRequested("child", payload, 3)]
    session.attach("child")
    session.ack(3)
    assert sent(session) == [Puback(3)]
    assert session.attached == frozenset({"child"})

    codes, found = subscribe(
        session, ("/devices/child/config", 1), ("/devices/child/commands/#", 0)
    )
    assert codes == (1, 0)
    assert found == [ConfigSubscribed("child"), CommandsSubscribed("child")]
    feed(
        session,
        Publish("/devices/child/events/x", b"e", qos=1, packet_id=4),
        Publish("/devices/child/state", b"s"),
        Publish(f"/devices/{GATEWAY}/state", b"own"),
        now=T0,
    )
    assert events(session, T0) == [
        EventPublished("child", "x", b"e", 4),
        StatePublished("child", b"s", None),
        StatePublished(GATEWAY, b"own", None),
    ]
    assert session.publish_command("child", "", b"go") is True
    assert sent(session) == [Publish("/devices/child/commands", b"go")]

    feed(session, Publish("/devices/child/detach", b"{}", qos=1, packet_id=5), now=T0)
    assert events(session, T0) == [DetachRequested("child", 5)]
    session.detach("child")
    assert session.attached == frozenset()
    # Its subscriptions went with it.
    assert session.publish_command("child", "", b"go") is False
    assert session.publish_config("child", 2, b"c", T0) is False
    session.ack(4)
    session.ack(5)
    assert sent(session) == [Puback(4), Puback(5)]


def test_gateway_publishing_for_a_device_it_has_not_attached_gets_an_error() -> None:
    session = connected(GATEWAY, gateway=True)
    codes, _ = subscribe(session, (f"/devices/{GATEWAY}/errors", 0))
    assert codes == (0,)
    feed(session, Publish("/devices/ghost/state", b"s", qos=1, packet_id=10), now=T0)
    assert events(session, T0) == []
    error, puback = sent(session)
    assert puback == Puback(10)
    assert isinstance(error, Publish)
    assert (error.topic, error.qos) == (f"/devices/{GATEWAY}/errors", 0)
    assert json.loads(error.payload) == {
        "error_type": "GATEWAY_DEVICE_NOT_FOUND",
        "description": "The specified device with ID 'ghost' is not attached to the gateway.",
        "device_id": "ghost",
        "mqtt_message_info": {
            "message_type": "PUBLISH",
            "topic": "/devices/ghost/state",
            "packet_id": 10,
        },
    }
    assert session.state is State.CONNECTED
    # Subscribing to an unattached device's topics fails the subscription only.
    codes, found = subscribe(session, ("/devices/ghost/config", 1), packet_id=2)
    assert (codes, found) == ((0x80,), [])


def test_gateway_errors_are_only_sent_to_a_subscriber() -> None:
    session = connected(GATEWAY, gateway=True)
    feed(session, Publish("/devices/ghost/events", b"e", qos=1, packet_id=1), now=T0)
    assert events(session, T0) == []
    assert sent(session) == [Puback(1)]
    session.gateway_error("GATEWAY_ATTACHMENT_ERROR", "no", "ghost")
    assert sent(session) == []


def test_gateway_can_unsubscribe_from_errors_while_subscribed_to_its_config() -> None:
    session = connected(GATEWAY, gateway=True)
    codes, _ = subscribe(
        session, (f"/devices/{GATEWAY}/config", 1), (f"/devices/{GATEWAY}/errors", 0)
    )
    assert codes == (1, 0)
    feed(session, Unsubscribe(3, (f"/devices/{GATEWAY}/errors",)), now=T0)
    assert events(session, T0) == []
    assert sent(session) == [Unsuback(3)]
    session.gateway_error("GATEWAY_ATTACHMENT_ERROR", "no", "ghost")
    assert sent(session) == []
    assert session.is_subscribed_to_config(GATEWAY)


# Config


def config_session(qos: int, limits: SessionLimits | None = None) -> Session:
    session = connected(limits=limits)
    codes, found = subscribe(session, (f"/devices/{DEVICE}/config", qos))
    assert codes == (qos,)
    assert found == [ConfigSubscribed(DEVICE)]
    return session


def test_config_qos_1_newest_version_supersedes_and_its_puback_is_the_ack() -> None:
    session = config_session(1)
    assert session.publish_config(DEVICE, 1, b"", T0) is True
    (first,) = sent(session)
    assert isinstance(first, Publish)
    assert (first.topic, first.payload, first.qos) == (f"/devices/{DEVICE}/config", b"", 1)
    assert first.packet_id is not None
    assert not first.retain

    assert session.publish_config(DEVICE, 2, b"v2", T0 + 1) is True
    (second,) = sent(session)
    assert isinstance(second, Publish)
    assert (second.payload, second.qos) == (b"v2", 1)
    assert second.packet_id not in (None, first.packet_id)

    # The superseded version's PUBACK acknowledges nothing.
    feed(session, Puback(first.packet_id), now=T0 + 2)
    assert events(session, T0 + 2) == []
    assert second.packet_id is not None
    feed(session, Puback(second.packet_id), now=T0 + 2)
    assert events(session, T0 + 2) == [ConfigAcked(DEVICE, 2)]
    # A repeated PUBACK acknowledges nothing more, and nothing is redelivered.
    feed(session, Puback(second.packet_id), now=T0 + 3)
    assert events(session, T0 + 3) == []
    session.check_timers(T0 + 40)
    assert sent(session) == []


@pytest.mark.parametrize("qos", [0, 1])
def test_an_older_config_version_than_one_sent_is_not_sent(qos: int) -> None:
    """The current config read for a subscription may come back after a newer version was
    delivered meanwhile (a device reconnecting while its config changes): the newer stays the
    one sent, redelivered and acknowledged."""
    session = config_session(qos)
    assert session.publish_config(DEVICE, 3, b"v3", T0) is True
    (newer,) = sent(session)
    assert session.publish_config(DEVICE, 2, b"v2", T0) is False
    assert sent(session) == []
    assert session.config_version_sent(DEVICE) == 3
    if qos == 1:
        assert isinstance(newer, Publish) and newer.packet_id is not None
        feed(session, Puback(newer.packet_id), now=T0 + 1)
        assert events(session, T0 + 1) == [ConfigAcked(DEVICE, 3)]
    # The same version again (the device subscribed again) is sent.
    assert session.publish_config(DEVICE, 3, b"v3", T0 + 2) is True


@pytest.mark.parametrize("qos", [0, 1])
def test_the_config_version_last_sent_is_known_while_subscribed(qos: int) -> None:
    session = connected()
    assert session.config_version_sent(DEVICE) is None
    subscribe(session, (f"/devices/{DEVICE}/config", qos))
    assert session.config_version_sent(DEVICE) == -1
    session.publish_config(DEVICE, 4, b"v4", T0)
    assert session.config_version_sent(DEVICE) == 4
    feed(session, Unsubscribe(2, (f"/devices/{DEVICE}/config",)), now=T0)
    assert events(session, T0) == []
    assert session.config_version_sent(DEVICE) is None


def test_unacknowledged_config_is_resent_with_dup() -> None:
    session = config_session(1, SessionLimits(config_redelivery_seconds=10))
    session.publish_config(DEVICE, 3, b"v3", T0)
    (original,) = sent(session)
    assert isinstance(original, Publish)
    assert not original.dup
    session.check_timers(T0 + 9.9)
    assert sent(session) == []
    session.check_timers(T0 + 10)
    assert sent(session) == [
        Publish(f"/devices/{DEVICE}/config", b"v3", 1, dup=True, packet_id=original.packet_id)
    ]
    # The next redelivery is counted from the last one.
    session.check_timers(T0 + 15)
    assert sent(session) == []
    session.check_timers(T0 + 20)
    assert len(sent(session)) == 1
    assert original.packet_id is not None
    feed(session, Puback(original.packet_id), now=T0 + 21)
    assert events(session, T0 + 21) == [ConfigAcked(DEVICE, 3)]
    session.check_timers(T0 + 50)
    assert sent(session) == []
    assert session.state is State.CONNECTED


def test_config_qos_0_is_sent_once() -> None:
    session = config_session(0)
    assert session.publish_config(DEVICE, 1, b"v1", T0) is True
    assert sent(session) == [Publish(f"/devices/{DEVICE}/config", b"v1")]
    session.check_timers(T0 + 30)
    session.check_timers(T0 + 60)
    assert sent(session) == []
    assert session.state is State.CONNECTED


def test_a_newer_config_at_qos_0_stops_redelivery_of_an_older_one() -> None:
    session = config_session(1)
    session.publish_config(DEVICE, 1, b"v1", T0)
    sent(session)
    codes, found = subscribe(session, (f"/devices/{DEVICE}/config", 0), packet_id=2)
    assert (codes, found) == ((0,), [ConfigSubscribed(DEVICE)])
    session.publish_config(DEVICE, 2, b"v2", T0)
    assert sent(session) == [Publish(f"/devices/{DEVICE}/config", b"v2")]
    # Redelivering v1 now would roll the device back to an old config.
    session.check_timers(T0 + 30)
    assert sent(session) == []


def test_config_is_not_sent_without_a_subscription() -> None:
    session = connected()
    assert session.publish_config(DEVICE, 1, b"v1", T0) is False
    assert session.publish_config("other", 1, b"v1", T0) is False
    assert sent(session) == []


def test_unsubscribing_from_config_frees_its_in_flight_slot() -> None:
    session = connected(limits=SessionLimits(max_outbound_in_flight=1))
    subscribe(session, (f"/devices/{DEVICE}/config", 1), (f"/devices/{DEVICE}/commands/#", 1))
    assert session.publish_config(DEVICE, 1, b"v1", T0)
    feed(session, Unsubscribe(2, (f"/devices/{DEVICE}/config",)), now=T0)
    assert events(session, T0) == []
    sent(session)
    # The abandoned config no longer holds the only outbound slot, and is not redelivered.
    assert session.publish_command(DEVICE, "", b"c") is True
    session.check_timers(T0 + 30)
    assert [p for p in sent(session) if isinstance(p, Publish) and p.dup] == []


def test_detaching_frees_the_devices_in_flight_config() -> None:
    session = connected(GATEWAY, gateway=True, limits=SessionLimits(max_outbound_in_flight=1))
    session.attach("child")
    subscribe(session, ("/devices/child/config", 1), (f"/devices/{GATEWAY}/commands/#", 1))
    assert session.publish_config("child", 1, b"v1", T0)
    session.detach("child")
    assert session.publish_command(GATEWAY, "", b"c") is True


# Commands


def test_commands_follow_the_subscription_qos() -> None:
    session = connected()
    assert session.publish_command(DEVICE, "sys", b"c") is False
    subscribe(session, (f"/devices/{DEVICE}/commands/#", 0))
    assert session.publish_command(DEVICE, "sys", b"c0") is True
    assert session.publish_command(DEVICE, "", b"c1") is True
    assert sent(session) == [
        Publish(f"/devices/{DEVICE}/commands/sys", b"c0"),
        Publish(f"/devices/{DEVICE}/commands", b"c1"),
    ]
    subscribe(session, (f"/devices/{DEVICE}/commands/#", 1), packet_id=2)
    assert session.publish_command(DEVICE, "a/b", b"c2") is True
    (command,) = sent(session)
    assert isinstance(command, Publish)
    assert (command.topic, command.qos) == (f"/devices/{DEVICE}/commands/a/b", 1)
    assert command.packet_id is not None


def test_commands_beyond_the_in_flight_cap_are_refused() -> None:
    session = connected(limits=SessionLimits(max_outbound_in_flight=2))
    subscribe(session, (f"/devices/{DEVICE}/commands/#", 1))
    assert session.publish_command(DEVICE, "", b"1") is True
    assert session.publish_command(DEVICE, "", b"2") is True
    assert session.publish_command(DEVICE, "", b"3") is False
    first, second = sent(session)
    assert isinstance(first, Publish)
    assert isinstance(second, Publish)
    assert first.packet_id != second.packet_id
    assert first.packet_id is not None
    feed(session, Puback(first.packet_id), now=T0)
    # A command's PUBACK is no config ack.
    assert events(session, T0) == []
    assert session.publish_command(DEVICE, "", b"3") is True
    assert session.publish_command(DEVICE, "", b"4") is False


# Timers


def test_keep_alive_closes_after_one_and_a_half_periods_of_silence() -> None:
    session = connected(keep_alive=10)
    session.check_timers(T0 + 15)
    assert events(session, T0 + 15) == []
    feed(session, Pingreq(), now=T0 + 14)
    assert events(session, T0 + 14) == [Heartbeat()]
    assert sent(session) == [Pingresp()]
    session.check_timers(T0 + 29)
    assert events(session, T0 + 29) == []
    session.check_timers(T0 + 29.1)
    closed = only_closed(events(session, T0 + 29.1))
    assert "keep-alive" in closed.reason
    assert (closed.code, closed.metric) == (Code.FAILED_PRECONDITION, "keepalive")


def test_any_packet_counts_as_activity_for_keep_alive() -> None:
    session = connected(keep_alive=10)
    feed(session, Publish(f"/devices/{DEVICE}/events", b"x"), now=T0 + 12)
    events(session, T0 + 12)
    session.check_timers(T0 + 27)
    assert events(session, T0 + 27) == []


def test_without_keep_alive_the_idle_limit_is_20_minutes() -> None:
    session = connected(keep_alive=0)
    session.check_timers(T0 + 20 * 60)
    assert events(session, T0 + 20 * 60) == []
    session.check_timers(T0 + 20 * 60 + 1)
    closed = only_closed(events(session, T0 + 20 * 60 + 1))
    assert closed.metric == "idle"


def test_the_connection_ends_at_the_credentials_deadline() -> None:
    session = connected(keep_alive=0, deadline=T0 + 100)
    session.check_timers(T0 + 100)
    assert events(session, T0 + 100) == []
    session.check_timers(T0 + 101)
    closed = only_closed(events(session, T0 + 101))
    assert (closed.code, closed.metric) == (Code.UNAUTHENTICATED, "credentials_expired")


def test_no_connect_within_the_connect_timeout_closes() -> None:
    session = Session(now=T0, limits=SessionLimits(connect_timeout_seconds=10))
    session.receive_data(encode(connect_packet())[:5], T0 + 1)
    session.check_timers(T0 + 10)
    assert events(session, T0 + 10) == []
    session.check_timers(T0 + 10.5)
    closed = only_closed(events(session, T0 + 10.5))
    assert (closed.code, closed.metric) == (Code.DEADLINE_EXCEEDED, "connect_timeout")


def test_timers_do_nothing_after_close() -> None:
    session = connected(keep_alive=1)
    feed(session, Disconnect(), now=T0)
    assert only_closed(events(session, T0)).code is Code.OK
    session.check_timers(T0 + 1000)
    assert events(session, T0 + 1000) == []


def test_the_server_can_close_a_session() -> None:
    session = connected()
    feed(session, Publish(f"/devices/{DEVICE}/events", b"x"), now=T0)
    assert events(session, T0) == [EventPublished(DEVICE, "", b"x", None)]
    # Bytes not yet decoded when the server closes are never looked at.
    feed(session, Publish(f"/devices/{DEVICE}/events", b"y"), now=T0)
    session.close("mqtt: shutting down", Code.UNAVAILABLE, "shutdown")
    assert events(session, T0) == [Closed("mqtt: shutting down", Code.UNAVAILABLE, "shutdown")]
    assert not session.wants_data(T0)
    session.close("mqtt: again", Code.INTERNAL, "again")
    assert events(session, T0) == []


# Flow control


def test_rate_limit_holds_messages_beyond_100_per_second_and_drops_none() -> None:
    session = connected()
    burst = [Publish(f"/devices/{DEVICE}/events", str(i).encode()) for i in range(150)]
    feed(session, *burst, now=T0)
    first = events(session, T0)
    assert len(first) == 100
    assert session.next_event(T0) is None
    assert not session.wants_data(T0)
    # A token bucket: the next message is due when one token has refilled.
    assert session.resume_at == pytest.approx(T0 + 0.01)
    assert events(session, T0 + 0.005) == []
    # The rate is kept: a quarter second later a quarter of the rest.
    middle = events(session, T0 + 0.25)
    assert 20 <= len(middle) <= 26
    assert not session.wants_data(T0 + 0.25)
    rest = events(session, T0 + 0.5)
    payloads = [e.payload for e in first + middle + rest if isinstance(e, EventPublished)]
    assert payloads == [str(i).encode() for i in range(150)]
    assert session.state is State.CONNECTED


def test_inbound_in_flight_cap_holds_packets_until_acked() -> None:
    session = connected(limits=SessionLimits(max_inbound_in_flight=4))
    feed(
        session,
        *[
            Publish(f"/devices/{DEVICE}/events", bytes([i]), qos=1, packet_id=i)
            for i in range(1, 7)
        ],
        now=T0,
    )
    found = events(session, T0)
    assert [e.packet_id for e in found if isinstance(e, EventPublished)] == [1, 2, 3, 4]
    assert len(found) == 4
    assert not session.wants_data(T0)
    session.ack(99)  # not in flight: nothing
    assert sent(session) == []
    assert session.next_event(T0) is None
    session.ack(3)
    assert [e.packet_id for e in events(session, T0) if isinstance(e, EventPublished)] == [5]
    assert not session.wants_data(T0)  # four in flight again
    session.ack(1)
    assert [e.packet_id for e in events(session, T0) if isinstance(e, EventPublished)] == [6]
    for packet_id in (6, 2, 5, 4):
        session.ack(packet_id)
    session.ack(2)  # already acknowledged: nothing
    # PUBACKs go out in the order the caller acknowledged.
    assert sent(session) == [Puback(3), Puback(1), Puback(6), Puback(2), Puback(5), Puback(4)]
    assert session.wants_data(T0)


# Hostile input: whatever the bytes, the session only ever emits events.

client_packets = st.one_of(
    st.builds(Publish, st.sampled_from([f"/devices/{DEVICE}/events", "/devices/x/attach"]),
              st.binary(max_size=20), st.just(0)),
    st.builds(lambda i: Publish(f"/devices/{DEVICE}/state", b"s", 1, packet_id=i),
              st.integers(1, 65535)),
    st.builds(lambda i, q: Subscribe(i, ((f"/devices/{DEVICE}/config", q),)),
              st.integers(1, 65535), st.integers(0, 2)),
    st.builds(lambda i: Unsubscribe(i, ("/devices/x/config",)), st.integers(1, 65535)),
    st.builds(Puback, st.integers(1, 65535)),
    st.just(Pingreq()),
    st.just(Disconnect()),
    st.just(connect_packet()),
)  # fmt: skip
chunk = st.one_of(st.binary(max_size=64), client_packets.map(encode))


@settings(max_examples=300, deadline=None)
@given(
    st.booleans(),
    st.lists(chunk, max_size=12),
    st.booleans(),
    st.data(),
)
def test_arbitrary_bytes_in_arbitrary_chunks_only_produce_events(
    starts_with_connect: bool, parts: list[bytes], gateway: bool, data: st.DataObject
) -> None:
    stream = (encode(connect_packet()) if starts_with_connect else b"") + b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    session = Session(now=T0, limits=SessionLimits(max_packet_size=512, max_buffer_size=1024))
    found: list[Event] = []
    now = T0
    for start, stop in pairwise([0, *cuts, len(stream)]):
        now += 0.5
        session.receive_data(stream[start:stop], now)
        while (event := session.next_event(now)) is not None:
            assert isinstance(event, Event)
            found.append(event)
            if isinstance(event, ConnectRequested):
                session.accept(DEVICE, gateway, float("inf"))
            elif (packet_id := getattr(event, "packet_id", None)) is not None:
                session.ack(packet_id)
        session.check_timers(now)
        session.data_to_send()
    found += events(session, now)
    closes = [i for i, event in enumerate(found) if isinstance(event, Closed)]
    assert closes in ([], [len(found) - 1])

    # Bytes the codec refuses must end the session.
    reference = codec.Decoder(512, max(512, len(stream)))
    reference.feed(stream)
    try:
        while reference.next_packet() is not None:
            pass
    except codec.ProtocolError:
        assert closes, found
