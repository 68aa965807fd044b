"""The sans-IO MQTT 3.1.1 codec: round trips, refusals, limits and real client bytes."""

from __future__ import annotations

import socket
import threading
from itertools import pairwise

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from ironcore.bridge.mqtt.codec import (
    MAX_BUFFER_SIZE,
    MAX_PACKET_SIZE,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    ProtocolError,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
)
from ironcore.errors import Code, IronCoreError

PACKET_TYPES = (
    Connect,
    Connack,
    Publish,
    Puback,
    Pubrec,
    Pubrel,
    Pubcomp,
    Subscribe,
    Suback,
    Unsubscribe,
    Unsuback,
    Pingreq,
    Pingresp,
    Disconnect,
)


def drain(decoder: Decoder) -> list[Packet]:
    packets = []
    while (packet := decoder.next_packet()) is not None:
        packets.append(packet)
    return packets


def decode_stream(data: bytes, cuts: list[int] | None = None) -> list[Packet]:
    """Decode `data` fed in pieces cut at `cuts`, draining after every piece as a server would."""
    decoder = Decoder(MAX_PACKET_SIZE, MAX_BUFFER_SIZE)
    packets = []
    for start, stop in pairwise([0, *sorted(cuts or []), len(data)]):
        decoder.feed(data[start:stop])
        packets += drain(decoder)
    return packets


def decode(data: bytes) -> Packet:
    [packet] = decode_stream(data)
    return packet


def frame(first: int, body: bytes) -> bytes:
    """A packet with an arbitrary, possibly invalid, body."""
    length = len(body)
    header = bytearray([first])
    while length > 0x7F:
        header.append(length & 0x7F | 0x80)
        length >>= 7
    header.append(length)
    return bytes(header) + body


def s(value: bytes) -> bytes:
    """A length-prefixed string or binary field."""
    return len(value).to_bytes(2, "big") + value


def connect_body(
    flags: int, payload: bytes, name: bytes = b"MQTT", level: int = 4, keep_alive: int = 60
) -> bytes:
    return s(name) + bytes([level, flags]) + keep_alive.to_bytes(2, "big") + payload


# Strategies for valid packets.

# Surrogates cannot be encoded and U+0000 is forbidden (spec 1.5.3); `/`, `+`, `#` are structure.
level_chars = st.characters(codec="utf-8", exclude_characters="\x00/+#")
levels = st.text(level_chars, max_size=6)
topic_names = st.lists(levels, min_size=1, max_size=4).map("/".join).filter(bool)
topic_filters = st.builds(
    lambda parts, multi: "/".join(parts + (["#"] if multi else [])),
    st.lists(st.one_of(levels, st.just("+")), max_size=4),
    st.booleans(),
).filter(bool)
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
packet_ids = st.integers(1, 0xFFFF)
qoses = st.integers(0, 2)


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(qoses)
    return Publish(
        topic=draw(topic_names),
        payload=draw(st.binary(max_size=300)),
        qos=qos,
        retain=draw(st.booleans()),
        dup=qos > 0 and draw(st.booleans()),
        packet_id=draw(packet_ids) if qos else None,
    )


@st.composite
def connects(draw: st.DrawFn) -> Connect:
    name, level = draw(st.sampled_from([("MQTT", 4), ("MQIsdp", 3)]))
    wills = st.builds(Will, topic_names, st.binary(max_size=40), qoses, st.booleans())
    return Connect(
        protocol_name=name,
        protocol_level=level,
        clean_session=draw(st.booleans()),
        keep_alive=draw(st.integers(0, 0xFFFF)),
        client_id=draw(texts),
        username=draw(st.none() | texts),
        password=draw(st.none() | st.binary(max_size=40)),
        will=draw(st.none() | wills),
    )


packets = st.one_of(
    connects(),
    st.builds(Connack, st.booleans(), st.integers(0, 5)),
    publishes(),
    *(st.builds(kind, packet_ids) for kind in (Puback, Pubrec, Pubrel, Pubcomp, Unsuback)),
    st.builds(
        Subscribe, packet_ids, st.lists(st.tuples(topic_filters, qoses), min_size=1).map(tuple)
    ),
    st.builds(
        Suback, packet_ids, st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1).map(tuple)
    ),
    st.builds(Unsubscribe, packet_ids, st.lists(topic_filters, min_size=1).map(tuple)),
    st.just(Pingreq()),
    st.just(Pingresp()),
    st.just(Disconnect()),
)


# Round trips.


@settings(max_examples=400, deadline=None)
@given(packets)
def test_every_packet_survives_a_round_trip(packet: Packet) -> None:
    assert decode(encode(packet)) == packet


@settings(max_examples=150, deadline=None)
@given(st.lists(packets, min_size=1, max_size=12), st.data())
def test_a_stream_decodes_whole_however_it_is_cut(batch: list[Packet], data: st.DataObject) -> None:
    stream = b"".join(map(encode, batch))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert decode_stream(stream, cuts) == batch


def test_a_stream_fed_one_byte_at_a_time() -> None:
    batch: list[Packet] = [
        Connect("MQTT", 4, True, 60, "c", "u", b"p", Will("w", b"gone", 1, True)),
        Publish("a/b", b"x" * 200, 2, packet_id=9),
        Pingreq(),
        Disconnect(),
    ]
    stream = b"".join(map(encode, batch))
    assert decode_stream(stream, list(range(len(stream)))) == batch


@pytest.mark.parametrize("length", [127, 128, 16_383, 16_384, 2_097_151, 2_097_152])
def test_remaining_lengths_at_every_width_of_the_length_field(length: int) -> None:
    packet = Publish("t", bytes(length - 3))
    data = encode(packet)
    assert len(data) == 1 + (length.bit_length() + 6) // 7 + length
    decoder = Decoder(len(data), len(data))
    decoder.feed(data)
    assert decoder.next_packet() == packet


def test_feed_accepts_any_bytes_like_object() -> None:
    decoder = Decoder(MAX_PACKET_SIZE, MAX_BUFFER_SIZE)
    decoder.feed(bytearray(b"\xc0"))
    decoder.feed(memoryview(b"\x00\xd0\x00"))
    assert drain(decoder) == [Pingreq(), Pingresp()]


# Hostile input: anything but ProtocolError is a bug, and every packet returned is valid.

VALID_FIRST_BYTES = [
    0x10, 0x20, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x3A, 0x3B, 0x3C, 0x3D,
    0x40, 0x50, 0x62, 0x70, 0x82, 0x90, 0xA2, 0xB0, 0xC0, 0xD0, 0xE0,
]  # fmt: skip


def assert_decodes_safely(data: bytes, cuts: list[int]) -> None:
    # A small packet limit so that the fuzzer also reaches the size check.
    decoder = Decoder(max_packet_size=256, max_buffer_size=4096)
    decoded = 0
    try:
        for start, stop in pairwise([0, *sorted(cuts), len(data)]):
            decoder.feed(data[start:stop])
            for packet in drain(decoder):
                assert isinstance(packet, PACKET_TYPES)
                assert decode(encode(packet)) == packet
                decoded += 1
    except ProtocolError:
        return
    # Every packet takes at least two bytes, so decoding always ends.
    assert decoded <= len(data) // 2


# Random bytes mostly fail on their first byte; a valid first byte takes the fuzzer deeper.
junk = st.binary(max_size=300) | st.builds(
    lambda first, rest: bytes([first]) + rest,
    st.sampled_from(VALID_FIRST_BYTES),
    st.binary(max_size=300),
)


@settings(max_examples=400, deadline=None)
@given(junk, st.lists(st.integers(0, 300), max_size=5))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes, cuts: list[int]) -> None:
    assert_decodes_safely(data, [cut for cut in cuts if cut <= len(data)])


@settings(max_examples=400, deadline=None)
@given(st.lists(packets, min_size=1, max_size=4), st.data())
def test_damaged_encodings_raise_only_protocol_error(
    batch: list[Packet], data: st.DataObject
) -> None:
    stream = bytearray(b"".join(map(encode, batch)))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(stream) - 1))
        damage = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if damage == "flip":
            stream[position] ^= 1 << data.draw(st.integers(0, 7))
        elif damage == "delete":
            del stream[position]
        elif damage == "insert":
            stream.insert(position, data.draw(st.integers(0, 255)))
        else:
            del stream[position:]
        if not stream:
            return
    assert_decodes_safely(bytes(stream), data.draw(st.lists(st.integers(0, len(stream)))))


# Spec examples and known-good bytes.


def test_spec_examples_decode() -> None:
    # Spec 3.1.2.10: user name, password, will QoS 1, will, clean session; keep alive 10.
    payload = s(b"dev") + s(b"w/t") + s(b"bye") + s(b"u") + s(b"pw")
    connect = frame(0x10, connect_body(0xCE, payload, keep_alive=10))
    assert decode(connect) == Connect(
        "MQTT", 4, True, 10, "dev", "u", b"pw", Will("w/t", b"bye", 1)
    )
    # Spec 3.3.2.3: topic "a/b", packet id 10.
    assert decode(b"\x32\x07\x00\x03a/b\x00\x0a") == Publish("a/b", b"", 1, packet_id=10)
    # Spec 3.8.3.1 and 3.9.3: "a/b" at QoS 1 and "c/d" at QoS 2; one success and a failure.
    subscribe = b"\x82\x0e\x00\x0a\x00\x03a/b\x01\x00\x03c/d\x02"
    assert decode(subscribe) == Subscribe(10, (("a/b", 1), ("c/d", 2)))
    assert decode(b"\x90\x05\x00\x0a\x00\x02\x80") == Suback(10, (0, 2, 0x80))
    assert decode(b"\xa2\x0c\x00\x0a\x00\x03a/b\x00\x03c/d") == Unsubscribe(10, ("a/b", "c/d"))
    assert decode(b"\x20\x02\x01\x00") == Connack(True, 0)
    for data, packet in [
        (b"\x40\x02\x00\x0a", Puback(10)),
        (b"\x50\x02\x00\x0a", Pubrec(10)),
        (b"\x62\x02\x00\x0a", Pubrel(10)),
        (b"\x70\x02\x00\x0a", Pubcomp(10)),
        (b"\xb0\x02\x00\x0a", Unsuback(10)),
        (b"\xc0\x00", Pingreq()),
        (b"\xd0\x00", Pingresp()),
        (b"\xe0\x00", Disconnect()),
    ]:
        assert decode(data) == packet
        assert encode(packet) == data


# What paho-mqtt 2.2 (the same encoder as 1.6 for MQTT 3.1.1) wrote for: connect(keepalive=60)
# with a user name and password, subscribe twice, publish at QoS 1, disconnect, all before
# reading the CONNACK. The server receives it as one read.
PAHO_CLIENT_ID = "projects/p/locations/us-central1/registries/r/devices/d"
PAHO_CONNECT = (
    b"\x10i\x00\x04MQTT\x04\xc2\x00<\x007projects/p/locations/us-central1/registries/r/devices/d"
    b"\x00\x06unused\x00\x1ceyJhbGciOiJFUzI1NiJ9.e30.sig"
)
PAHO_SUBSCRIBES = (
    b"\x82\x16\x00\x01\x00\x11/devices/d/config\x01"
    b"\x82\x1a\x00\x02\x00\x15/devices/d/commands/#\x00"
)
PAHO_REST = b"2\x17\x00\x11/devices/d/events\x00\x03hi\xe0\x00"
PAHO_PACKETS: list[Packet] = [
    Connect("MQTT", 4, True, 60, PAHO_CLIENT_ID, "unused", b"eyJhbGciOiJFUzI1NiJ9.e30.sig"),
    Subscribe(1, (("/devices/d/config", 1),)),
    Subscribe(2, (("/devices/d/commands/#", 0),)),
    Publish("/devices/d/events", b"hi", 1, packet_id=3),
    Disconnect(),
]


def test_pipelined_connect_and_subscribes_decode_from_one_read() -> None:
    decoder = Decoder(MAX_PACKET_SIZE, MAX_BUFFER_SIZE)
    decoder.feed(PAHO_CONNECT + PAHO_SUBSCRIBES)
    assert drain(decoder) == PAHO_PACKETS[:3]


def test_paho_bytes_match_ours() -> None:
    stream = PAHO_CONNECT + PAHO_SUBSCRIBES + PAHO_REST
    assert decode_stream(stream) == PAHO_PACKETS
    assert b"".join(map(encode, PAHO_PACKETS)) == stream


def test_a_live_paho_client_sends_the_recorded_bytes() -> None:
    received = bytearray()

    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)

        def record() -> None:
            connection, _ = server.accept()
            with connection:
                connection.settimeout(5)
                while chunk := connection.recv(65536):
                    received.extend(chunk)

        recorder = threading.Thread(target=record)
        recorder.start()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=PAHO_CLIENT_ID, protocol=mqtt.MQTTv311
        )
        client.username_pw_set("unused", "eyJhbGciOiJFUzI1NiJ9.e30.sig")
        client.connect("127.0.0.1", server.getsockname()[1], keepalive=60)
        client.subscribe("/devices/d/config", qos=1)
        client.subscribe("/devices/d/commands/#", qos=0)
        client.publish("/devices/d/events", b"hi", qos=1)
        client.disconnect()  # paho closes the socket once DISCONNECT is written
        recorder.join(10)

    assert bytes(received) == PAHO_CONNECT + PAHO_SUBSCRIBES + PAHO_REST


# Refusals: each names its problem.

PUBLISH_TOPIC = s(b"a/b")
REFUSED = {
    "packet type 0": (b"\x00\x00", "packet type 0 is reserved"),
    "packet type 15": (b"\xf0\x00", "packet type 15 is reserved"),
    "CONNECT flags": (frame(0x11, connect_body(0x02, s(b"c"))), "reserved fixed-header flags"),
    "SUBSCRIBE flags 0": (frame(0x80, b"\x00\x01" + s(b"a") + b"\x00"), "SUBSCRIBE has reserved"),
    "UNSUBSCRIBE flags 0": (frame(0xA0, b"\x00\x01" + s(b"a")), "UNSUBSCRIBE has reserved"),
    "PUBREL flags 0": (b"\x60\x02\x00\x01", "PUBREL has reserved fixed-header flags"),
    "PUBACK flags": (b"\x41\x02\x00\x01", "PUBACK has reserved fixed-header flags"),
    "PINGREQ flags": (b"\xc8\x00", "PINGREQ has reserved fixed-header flags"),
    "PUBLISH QoS 3": (frame(0x36, PUBLISH_TOPIC + b"\x00\x01"), "QoS 3"),
    "PUBLISH QoS 0 DUP": (frame(0x38, PUBLISH_TOPIC), "QoS 0 has the DUP flag"),
    "PUBLISH packet id 0": (frame(0x32, PUBLISH_TOPIC + b"\x00\x00"), "PUBLISH has packet id 0"),
    "PUBLISH no packet id": (frame(0x32, PUBLISH_TOPIC + b"\x01"), "too short to hold its packet"),
    "PUBACK packet id 0": (b"\x40\x02\x00\x00", "PUBACK has packet id 0"),
    "PUBREL packet id 0": (b"\x62\x02\x00\x00", "PUBREL has packet id 0"),
    "SUBSCRIBE packet id 0": (frame(0x82, b"\x00\x00" + s(b"a") + b"\x00"), "packet id 0"),
    "UNSUBSCRIBE packet id 0": (frame(0xA2, b"\x00\x00" + s(b"a")), "packet id 0"),
    "SUBACK packet id 0": (b"\x90\x03\x00\x00\x00", "SUBACK has packet id 0"),
    "topic not UTF-8": (frame(0x30, s(b"a/\xff")), "PUBLISH topic name is not well-formed UTF-8"),
    "topic surrogate": (frame(0x30, s(b"\xed\xa0\x80")), "not well-formed UTF-8"),
    "topic overlong": (frame(0x30, s(b"\xc0\xaf")), "not well-formed UTF-8"),
    "topic U+0000": (frame(0x30, s(b"a\x00b")), "PUBLISH topic name 'a\\x00b' contains U+0000"),
    "client id U+0000": (
        frame(0x10, connect_body(0x02, s(b"c\x00"))),
        "CONNECT client id 'c\\x00' contains U+0000",
    ),
    "user name not UTF-8": (
        frame(0x10, connect_body(0x82, s(b"c") + s(b"\xfe"))),
        "CONNECT user name is not well-formed UTF-8",
    ),
    "topic past end": (frame(0x30, b"\x00\x09a/b"), "length of 9 bytes runs past the end"),
    "topic prefix past end": (frame(0x30, b"\x00"), "length prefix runs past the end"),
    "PUBLISH topic +": (frame(0x30, s(b"a/+/c")), "contains a wildcard"),
    "PUBLISH topic #": (frame(0x30, s(b"a/#")), "contains a wildcard"),
    "PUBLISH topic empty": (frame(0x30, s(b"") + b"payload"), "PUBLISH topic name is empty"),
    "SUBSCRIBE no filters": (b"\x82\x02\x00\x01", "SUBSCRIBE has no topic filters"),
    "SUBSCRIBE empty filter": (frame(0x82, b"\x00\x01" + s(b"") + b"\x00"), "filter is empty"),
    "SUBSCRIBE QoS 3": (frame(0x82, b"\x00\x01" + s(b"a") + b"\x03"), "requests QoS 3"),
    "SUBSCRIBE options bits": (frame(0x82, b"\x00\x01" + s(b"a") + b"\x04"), "reserved bits"),
    "SUBSCRIBE no QoS byte": (frame(0x82, b"\x00\x01" + s(b"a")), "lacks its requested QoS"),
    "SUBSCRIBE a#": (frame(0x82, b"\x00\x01" + s(b"a#") + b"\x00"), "misplaces a wildcard"),
    "SUBSCRIBE #/a": (frame(0x82, b"\x00\x01" + s(b"#/a") + b"\x00"), "misplaces a wildcard"),
    "SUBSCRIBE a+": (frame(0x82, b"\x00\x01" + s(b"a+/b") + b"\x00"), "misplaces a wildcard"),
    "UNSUBSCRIBE no filters": (b"\xa2\x02\x00\x01", "UNSUBSCRIBE has no topic filters"),
    "UNSUBSCRIBE bad filter": (frame(0xA2, b"\x00\x01" + s(b"a/b#")), "misplaces a wildcard"),
    "SUBACK no codes": (b"\x90\x02\x00\x01", "SUBACK has no return codes"),
    "SUBACK reserved code": (b"\x90\x03\x00\x01\x03", "reserved value"),
    "CONNACK flags": (b"\x20\x02\x02\x00", "CONNACK has reserved acknowledge flag bits"),
    "CONNECT protocol name": (
        frame(0x10, connect_body(0x02, s(b"c"), name=b"MQTX")),
        "protocol name 'MQTX' is neither",
    ),
    "CONNECT reserved flag": (frame(0x10, connect_body(0x03, s(b"c"))), "reserved flag bit 0"),
    "CONNECT will QoS no will": (frame(0x10, connect_body(0x0A, s(b"c"))), "without the will flag"),
    "CONNECT will retain no will": (frame(0x10, connect_body(0x22, s(b"c"))), "without the will"),
    "CONNECT will QoS 3": (
        frame(0x10, connect_body(0x1E, s(b"c") + s(b"w") + s(b"m"))),
        "will QoS 3",
    ),
    "CONNECT will topic #": (
        frame(0x10, connect_body(0x06, s(b"c") + s(b"w/#") + s(b"m"))),
        "CONNECT will topic 'w/#' contains a wildcard",
    ),
    "CONNECT trailing": (frame(0x10, connect_body(0x02, s(b"c") + b"!")), "1 trailing bytes"),
    "CONNECT missing password": (
        frame(0x10, connect_body(0xC2, s(b"c") + s(b"u"))),
        "CONNECT password: its length prefix runs past the end",
    ),
    "CONNECT short header": (frame(0x10, s(b"MQTT") + b"\x04\x02"), "truncated inside"),
    "PUBACK trailing": (b"\x40\x03\x00\x01\x00", "remaining length 3, which must be 2 (trailing"),
    "PINGREQ trailing": (b"\xc0\x01\x00", "PINGREQ has remaining length 1, which must be 0"),
    "DISCONNECT trailing": (b"\xe0\x01\x00", "trailing bytes"),
    "CONNACK truncated": (b"\x20\x01\x00", "CONNACK has remaining length 1, which must be 2"),
    "UNSUBACK truncated": (b"\xb0\x00", "(truncated)"),
    "length over 4 bytes": (b"\x30\xff\xff\xff\xff", "remaining length is longer than 4 bytes"),
}


@pytest.mark.parametrize(("data", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_malformed_packets_are_refused(data: bytes, message: str) -> None:
    decoder = Decoder(MAX_PACKET_SIZE, MAX_BUFFER_SIZE)
    decoder.feed(data)
    with pytest.raises(ProtocolError) as refusal:
        decoder.next_packet()
    assert message in str(refusal.value)
    assert isinstance(refusal.value, IronCoreError)
    assert refusal.value.code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "header",
    [b"\x00", b"\x36", b"\x80", b"\x30\xff\xff\xff\xff", b"\x40\x03", b"\xc0\x05", b"\x30\x80\x02"],
)
def test_refusals_come_as_soon_as_the_header_shows_them(header: bytes) -> None:
    decoder = Decoder(max_packet_size=200, max_buffer_size=400)
    decoder.feed(header)
    with pytest.raises(ProtocolError):
        decoder.next_packet()


def test_password_without_user_name_is_accepted() -> None:
    data = frame(0x10, connect_body(0x42, s(b"c") + s(b"jwt")))
    assert decode(data) == Connect("MQTT", 4, True, 60, "c", password=b"jwt")


def test_mqtt_3_1_connect_decodes_in_full() -> None:
    data = frame(0x10, connect_body(0x82, s(b"c") + s(b"u"), name=b"MQIsdp", level=3))
    assert decode(data) == Connect("MQIsdp", 3, True, 60, "c", "u")


@pytest.mark.parametrize("level", [3, 5, 255])
def test_other_protocol_levels_decode_their_header_only(level: int) -> None:
    # An MQTT 5 CONNECT: a properties length (0) precedes the client id, and reserved flag bit 0
    # is set, yet the caller still gets the level it needs to answer CONNACK 1.
    data = frame(0x10, connect_body(0x03, b"\x00" + s(b"c"), level=level))
    assert decode(data) == Connect("MQTT", level, True, 60, "")


# Limits.


def test_an_oversize_packet_is_refused_from_its_fixed_header() -> None:
    decoder = Decoder(max_packet_size=1024, max_buffer_size=2048)
    decoder.feed(b"\x30\x80\x08")  # PUBLISH, remaining length 1024: 1027 bytes in all
    with pytest.raises(ProtocolError, match="PUBLISH of 1027 bytes exceeds the packet size limit"):
        decoder.next_packet()


def test_a_packet_of_exactly_the_limit_is_accepted() -> None:
    packet = Publish("t", bytes(1024 - 3 - 3))  # 3 header bytes + 3 topic bytes + payload
    data = encode(packet)
    assert len(data) == 1024
    decoder = Decoder(max_packet_size=1024, max_buffer_size=1024)
    decoder.feed(data[:3])
    assert decoder.next_packet() is None
    decoder.feed(data[3:])
    assert decoder.next_packet() == packet


def test_the_buffer_limit_counts_only_undecoded_bytes() -> None:
    decoder = Decoder(max_packet_size=100, max_buffer_size=200)
    ping = encode(Pingreq())
    for _ in range(10):
        decoder.feed(ping * 100)
        assert len(drain(decoder)) == 100
    decoder.feed(ping * 100)
    with pytest.raises(ProtocolError, match="201 bytes received and not yet decoded"):
        decoder.feed(b"\xc0")


def test_the_buffer_must_hold_a_whole_packet() -> None:
    with pytest.raises(ValueError, match="max_buffer_size"):
        Decoder(max_packet_size=1000, max_buffer_size=999)


def test_the_default_limits_fit_the_largest_event() -> None:
    event = Publish(
        "/devices/" + "d" * 255 + "/events/" + "s" * 256, bytes(256 * 1024), 1, packet_id=1
    )
    assert len(encode(event)) <= MAX_PACKET_SIZE
    assert decode(encode(event)) == event


# Encoding refuses what has no valid encoding.

UNENCODABLE = {
    "PUBLISH QoS 3": (Publish("t", b"", 3, packet_id=1), "QoS 3 is not 0, 1 or 2"),
    "PUBLISH QoS 1 without id": (Publish("t", b"", 1), "PUBLISH packet id None"),
    "PUBLISH QoS 0 with id": (Publish("t", b"", 0, packet_id=1), "cannot carry a packet id"),
    "PUBLISH QoS 0 DUP": (Publish("t", b"", 0, dup=True), "cannot set the DUP flag"),
    "PUBACK id 0": (Puback(0), "PUBACK packet id 0 is not in 1..65535"),
    "SUBSCRIBE id too big": (Subscribe(65536, (("a", 0),)), "packet id 65536"),
    "SUBSCRIBE QoS 3": (Subscribe(1, (("a", 3),)), "QoS 3"),
    "will QoS 3": (Connect("MQTT", 4, True, 0, "c", will=Will("w", b"", 3)), "QoS 3"),
    "SUBACK code 3": (Suback(1, (3,)), "SUBACK return codes (3,)"),
    "topic too long": (Publish("t" * 65536, b""), "longer than 65535 bytes"),
}


@pytest.mark.parametrize(("packet", "message"), UNENCODABLE.values(), ids=UNENCODABLE.keys())
def test_unencodable_packets_are_refused(packet: Packet, message: str) -> None:
    with pytest.raises(ProtocolError) as refusal:
        encode(packet)
    assert message in str(refusal.value)
