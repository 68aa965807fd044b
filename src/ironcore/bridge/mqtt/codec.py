"""A sans-IO MQTT 3.1.1 codec: packets to bytes with `encode`, bytes to packets with `Decoder`.

No sockets, clocks or tasks: the caller moves the bytes and owns the session rules (CONNECT
first, keep-alive, packet-id bookkeeping, authorization). The codec owns the wire format and
refuses, with a `ProtocolError` naming the problem, everything MQTT 3.1.1 calls malformed.
Section numbers below refer to the OASIS MQTT 3.1.1 specification.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias, assert_never

from ironcore import limits
from ironcore.errors import Code, IronCoreError


class ProtocolError(IronCoreError):
    """The bytes are not MQTT 3.1.1, or a packet to encode cannot be framed as MQTT 3.1.1.

    From `Decoder`: the peer broke the protocol. The caller must close the network connection
    without sending anything more (spec 4.8) and must not use the decoder again.
    From `encode`: a bug in the caller, which built a packet that has no valid encoding.
    """

    code = Code.INVALID_ARGUMENT


# The largest packet a Cloud IoT Core device may legitimately send is a PUBLISH of the largest
# telemetry event (limits.EVENT_BYTES, 256 KiB). Its topic is bounded by the device id and
# subfolder limits to well under 1 KiB and a CONNECT carrying a JWT is a few KiB, so 8 KiB of
# slack covers every header. Pass this as `Decoder(max_packet_size=...)`.
MAX_PACKET_SIZE = limits.EVENT_BYTES + 8 * 1024
# One packet still waiting for its last byte plus one read: asyncio's selector transport passes
# at most 256 KiB to each data_received call. Pass this as `Decoder(max_buffer_size=...)`.
MAX_BUFFER_SIZE = MAX_PACKET_SIZE + 256 * 1024

# The remaining length is at most four 7-bit groups (spec 2.2.3), so no packet's remaining
# length can exceed 2**28 - 1.
_MAX_REMAINING_LENGTH = 268_435_455
# Strings and binary fields carry a two-byte length prefix (spec 1.5.3).
_MAX_FIELD_LENGTH = 65_535


@dataclass(slots=True)
class Will:
    """The message the server publishes for a client that vanishes without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(slots=True)
class Connect:
    """CONNECT. The caller must check `protocol_level` before anything else.

    Only "MQTT" level 4 and "MQIsdp" level 3 are decoded in full. For any other level of those
    two names only the variable header is decoded (the payload's layout depends on the version,
    so `client_id` is "" and the optional fields are None); the caller must answer CONNACK 1,
    unacceptable protocol version, and disconnect (spec 3.1.2.2).
    A password without a user name is accepted, as some device libraries send one.
    """

    protocol_name: str
    protocol_level: int
    clean_session: bool
    keep_alive: int
    client_id: str
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None


@dataclass(slots=True)
class Connack:
    session_present: bool
    return_code: int


@dataclass(slots=True)
class Publish:
    """PUBLISH. `packet_id` is None exactly when `qos` is 0."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None


@dataclass(slots=True)
class Puback:
    packet_id: int


@dataclass(slots=True)
class Pubrec:
    packet_id: int


@dataclass(slots=True)
class Pubrel:
    packet_id: int


@dataclass(slots=True)
class Pubcomp:
    packet_id: int


@dataclass(slots=True)
class Subscribe:
    """SUBSCRIBE: (topic filter, requested QoS) pairs, at least one."""

    packet_id: int
    subscriptions: tuple[tuple[str, int], ...]


@dataclass(slots=True)
class Suback:
    """SUBACK: one return code per requested filter: the granted QoS, or 0x80 for failure."""

    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(slots=True)
class Unsubscribe:
    packet_id: int
    topics: tuple[str, ...]


@dataclass(slots=True)
class Unsuback:
    packet_id: int


@dataclass(slots=True)
class Pingreq:
    pass


@dataclass(slots=True)
class Pingresp:
    pass


@dataclass(slots=True)
class Disconnect:
    pass


Packet: TypeAlias = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
)

_PUBLISH = 3
_NAMES = (
    "packet type 0",
    "CONNECT",
    "CONNACK",
    "PUBLISH",
    "PUBACK",
    "PUBREC",
    "PUBREL",
    "PUBCOMP",
    "SUBSCRIBE",
    "SUBACK",
    "UNSUBSCRIBE",
    "UNSUBACK",
    "PINGREQ",
    "PINGRESP",
    "DISCONNECT",
    "packet type 15",
)
# The fixed-header flags each packet type must carry (spec 2.2.2); PUBLISH's are checked apart.
_FLAGS = (0, 0, 0, 0, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)
# Remaining lengths of the packets whose size is fixed; None where the size varies.
_FIXED_LENGTHS = (None, None, 2, None, 2, 2, 2, 2, None, None, None, 2, 0, 0, 0, None)
_SUBACK_CODES = frozenset((0, 1, 2, 0x80))
_FULLY_DECODED_PROTOCOLS = frozenset((("MQTT", 4), ("MQIsdp", 3)))


class Decoder:
    """Turns the bytes of one connection into packets.

    The caller must, each time bytes arrive: `feed` them, then call `next_packet` until it
    returns None, handling each packet in turn. On `ProtocolError` from either, the caller must
    close the connection and drop the decoder.

    `max_packet_size` bounds a whole packet, fixed header included; a larger one is refused as
    soon as its fixed header arrives, before its body is buffered. `max_buffer_size` bounds the
    bytes fed but not yet returned as packets: it must allow one packet short of its last byte
    plus the largest single `feed`. See MAX_PACKET_SIZE and MAX_BUFFER_SIZE.
    """

    __slots__ = ("_buffer", "_max_buffer_size", "_max_packet_size", "_start")

    def __init__(self, max_packet_size: int, max_buffer_size: int) -> None:
        if max_buffer_size < max_packet_size:
            raise ValueError("max_buffer_size must be able to hold a packet of max_packet_size")
        self._max_packet_size = max_packet_size
        self._max_buffer_size = max_buffer_size
        self._buffer = bytearray()
        # Bytes before _start are already decoded; feed drops them, so that decoding many
        # packets from one read costs no copying.
        self._start = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer; raises ProtocolError past max_buffer_size."""
        buffered = len(self._buffer) - self._start + len(data)
        if buffered > self._max_buffer_size:
            raise ProtocolError(
                f"{buffered} bytes received and not yet decoded, more than the buffer limit "
                f"of {self._max_buffer_size} bytes"
            )
        del self._buffer[: self._start]
        self._start = 0
        self._buffer += data

    def next_packet(self) -> Packet | None:
        """The next complete packet, or None until more bytes are fed."""
        buffer = self._buffer
        start = self._start
        end = len(buffer)
        if start == end:
            return None

        first = buffer[start]
        kind = first >> 4
        flags = first & 0x0F
        if kind == _PUBLISH:
            if flags & 0x06 == 0x06:
                raise ProtocolError("PUBLISH has QoS 3, which does not exist")
            if flags & 0x0E == 0x08:
                raise ProtocolError("PUBLISH with QoS 0 has the DUP flag set")
        elif kind in (0, 15):
            raise ProtocolError(f"packet type {kind} is reserved")
        elif flags != _FLAGS[kind]:
            raise ProtocolError(
                f"{_NAMES[kind]} has reserved fixed-header flags {flags:#06b}, "
                f"which must be {_FLAGS[kind]:#06b}"
            )

        length = 0
        position = start + 1
        for shift in (0, 7, 14, 21):
            if position == end:
                return None
            byte = buffer[position]
            position += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
        else:
            raise ProtocolError("remaining length is longer than 4 bytes")
        size = position - start + length
        if size > self._max_packet_size:
            raise ProtocolError(
                f"{_NAMES[kind]} of {size} bytes exceeds the packet size limit "
                f"of {self._max_packet_size} bytes"
            )
        fixed_length = _FIXED_LENGTHS[kind]
        if fixed_length is not None and length != fixed_length:
            problem = "trailing bytes" if length > fixed_length else "truncated"
            raise ProtocolError(
                f"{_NAMES[kind]} has remaining length {length}, which must be {fixed_length} "
                f"({problem})"
            )

        stop = position + length
        if stop > end:
            return None
        if kind == _PUBLISH:
            packet: Packet = _decode_publish(buffer, position, stop, flags)
        else:
            packet = _DECODERS[kind](buffer, position, stop)
        if stop == end:
            # Everything decoded: give the memory back (an idle connection would otherwise keep
            # the capacity of the largest read it ever had, a CONNECT with its JWT at least).
            buffer.clear()
            self._start = 0
        else:
            self._start = stop
        return packet


def _decode_publish(data: bytearray, position: int, end: int, flags: int) -> Publish:
    topic, position = _read_str(data, position, end, "PUBLISH topic name")
    _check_topic_name(topic, "PUBLISH topic name")
    qos = (flags >> 1) & 3
    packet_id = None
    if qos:
        packet_id = _read_packet_id(data, position, end, "PUBLISH")
        position += 2
    return Publish(
        topic, bytes(data[position:end]), qos, bool(flags & 1), bool(flags & 8), packet_id
    )


def _decode_connect(data: bytearray, position: int, end: int) -> Connect:
    name, position = _read_str(data, position, end, "CONNECT protocol name")
    if name not in ("MQTT", "MQIsdp"):
        raise ProtocolError(f"CONNECT protocol name {name!r} is neither 'MQTT' nor 'MQIsdp'")
    if end - position < 4:
        raise ProtocolError("CONNECT is truncated inside its variable header")
    level, flags = data[position], data[position + 1]
    keep_alive = (data[position + 2] << 8) | data[position + 3]
    position += 4
    clean_session = bool(flags & 0x02)
    if (name, level) not in _FULLY_DECODED_PROTOCOLS:
        return Connect(name, level, clean_session, keep_alive, "")

    if flags & 0x01:
        raise ProtocolError("CONNECT has the reserved flag bit 0 set")
    client_id, position = _read_str(data, position, end, "CONNECT client id")
    will = None
    will_qos = (flags >> 3) & 3
    if flags & 0x04:
        if will_qos == 3:
            raise ProtocolError("CONNECT has will QoS 3, which does not exist")
        will_topic, position = _read_str(data, position, end, "CONNECT will topic")
        _check_topic_name(will_topic, "CONNECT will topic")
        will_payload, position = _read_bytes(data, position, end, "CONNECT will message")
        will = Will(will_topic, will_payload, will_qos, bool(flags & 0x20))
    elif flags & 0x38:
        raise ProtocolError("CONNECT sets will QoS or will retain without the will flag")
    username = password = None
    if flags & 0x80:
        username, position = _read_str(data, position, end, "CONNECT user name")
    if flags & 0x40:
        password, position = _read_bytes(data, position, end, "CONNECT password")
    _check_consumed(position, end, "CONNECT")
    return Connect(name, level, clean_session, keep_alive, client_id, username, password, will)


def _decode_connack(data: bytearray, position: int, end: int) -> Connack:
    flags = data[position]
    if flags & 0xFE:
        raise ProtocolError(f"CONNACK has reserved acknowledge flag bits set: {flags:#010b}")
    return Connack(bool(flags), data[position + 1])


def _decode_subscribe(data: bytearray, position: int, end: int) -> Subscribe:
    packet_id = _read_packet_id(data, position, end, "SUBSCRIBE")
    position += 2
    subscriptions = []
    while position < end:
        topic_filter, position = _read_str(data, position, end, "SUBSCRIBE topic filter")
        _check_topic_filter(topic_filter, "SUBSCRIBE topic filter")
        if position == end:
            raise ProtocolError(
                f"SUBSCRIBE topic filter {topic_filter!r} lacks its requested QoS byte"
            )
        options = data[position]
        position += 1
        if options & 0xFC:
            raise ProtocolError(
                f"SUBSCRIBE options for {topic_filter!r} have reserved bits set: {options:#010b}"
            )
        if options == 3:
            raise ProtocolError(f"SUBSCRIBE requests QoS 3 for {topic_filter!r}")
        subscriptions.append((topic_filter, options))
    if not subscriptions:
        raise ProtocolError("SUBSCRIBE has no topic filters")
    return Subscribe(packet_id, tuple(subscriptions))


def _decode_suback(data: bytearray, position: int, end: int) -> Suback:
    packet_id = _read_packet_id(data, position, end, "SUBACK")
    return_codes = tuple(data[position + 2 : end])
    if not return_codes:
        raise ProtocolError("SUBACK has no return codes")
    if not _SUBACK_CODES.issuperset(return_codes):
        raise ProtocolError(f"SUBACK return codes {return_codes} include a reserved value")
    return Suback(packet_id, return_codes)


def _decode_unsubscribe(data: bytearray, position: int, end: int) -> Unsubscribe:
    packet_id = _read_packet_id(data, position, end, "UNSUBSCRIBE")
    position += 2
    topics = []
    while position < end:
        topic_filter, position = _read_str(data, position, end, "UNSUBSCRIBE topic filter")
        _check_topic_filter(topic_filter, "UNSUBSCRIBE topic filter")
        topics.append(topic_filter)
    if not topics:
        raise ProtocolError("UNSUBSCRIBE has no topic filters")
    return Unsubscribe(packet_id, tuple(topics))


_Decode: TypeAlias = Callable[[bytearray, int, int], Packet]


def _packet_id_only(packet: Callable[[int], Packet], name: str) -> _Decode:
    def decode(data: bytearray, position: int, end: int) -> Packet:
        return packet(_read_packet_id(data, position, end, name))

    return decode


def _empty(packet: Packet) -> _Decode:
    return lambda data, position, end: packet


_DECODERS: dict[int, _Decode] = {
    1: _decode_connect,
    2: _decode_connack,
    4: _packet_id_only(Puback, "PUBACK"),
    5: _packet_id_only(Pubrec, "PUBREC"),
    6: _packet_id_only(Pubrel, "PUBREL"),
    7: _packet_id_only(Pubcomp, "PUBCOMP"),
    8: _decode_subscribe,
    9: _decode_suback,
    10: _decode_unsubscribe,
    11: _packet_id_only(Unsuback, "UNSUBACK"),
    12: _empty(Pingreq()),
    13: _empty(Pingresp()),
    14: _empty(Disconnect()),
}


def _read_str(data: bytearray, position: int, end: int, what: str) -> tuple[str, int]:
    start, stop = _field_span(data, position, end, what)
    try:
        text = data[start:stop].decode()
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not well-formed UTF-8") from None
    if "\x00" in text:
        raise ProtocolError(f"{what} {text!r} contains U+0000")
    return text, stop


def _read_bytes(data: bytearray, position: int, end: int, what: str) -> tuple[bytes, int]:
    start, stop = _field_span(data, position, end, what)
    return bytes(data[start:stop]), stop


def _field_span(data: bytearray, position: int, end: int, what: str) -> tuple[int, int]:
    """Where the string or binary field with its length prefix at `position` starts and stops."""
    if end - position < 2:
        raise ProtocolError(f"{what}: its length prefix runs past the end of the packet")
    start = position + 2
    stop = start + ((data[position] << 8) | data[position + 1])
    if stop > end:
        raise ProtocolError(
            f"{what}: its length of {stop - start} bytes runs past the end of the packet"
        )
    return start, stop


def _read_packet_id(data: bytearray, position: int, end: int, name: str) -> int:
    if end - position < 2:
        raise ProtocolError(f"{name} is too short to hold its packet id")
    packet_id = (data[position] << 8) | data[position + 1]
    if not packet_id:
        raise ProtocolError(f"{name} has packet id 0, which is not allowed")
    return packet_id


def _check_consumed(position: int, end: int, name: str) -> None:
    if position != end:
        raise ProtocolError(f"{name} has {end - position} trailing bytes after its last field")


def _check_topic_name(topic: str, what: str) -> None:
    if not topic:
        raise ProtocolError(f"{what} is empty")
    if "+" in topic or "#" in topic:
        raise ProtocolError(f"{what} {topic!r} contains a wildcard ('+' or '#')")


def _check_topic_filter(topic_filter: str, what: str) -> None:
    if not topic_filter:
        raise ProtocolError(f"{what} is empty")
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        misplaced_hash = "#" in level and (level != "#" or index != len(levels) - 1)
        if misplaced_hash or ("+" in level and level != "+"):
            raise ProtocolError(
                f"{what} {topic_filter!r} misplaces a wildcard: '+' must fill a whole level "
                "and '#' must be the whole last level"
            )


def encode(packet: Packet) -> bytes:
    """The wire bytes of one packet.

    Raises ProtocolError for a packet that cannot be framed: a QoS outside 0..2, a packet id
    outside 1..65535 or present on a QoS 0 PUBLISH, DUP on QoS 0, a string or binary field over
    65535 bytes, or a reserved SUBACK code. Text is not re-checked (wildcards, U+0000): the
    caller must only encode topics it has validated.
    """
    match packet:
        case Publish():
            return _encode_publish(packet)
        case Puback():
            return _frame(0x40, _packet_id(packet.packet_id, "PUBACK"))
        case Pubrec():
            return _frame(0x50, _packet_id(packet.packet_id, "PUBREC"))
        case Pubrel():
            return _frame(0x62, _packet_id(packet.packet_id, "PUBREL"))
        case Pubcomp():
            return _frame(0x70, _packet_id(packet.packet_id, "PUBCOMP"))
        case Connect():
            return _encode_connect(packet)
        case Connack():
            return _frame(0x20, bytes((packet.session_present, packet.return_code)))
        case Subscribe():
            parts = [_packet_id(packet.packet_id, "SUBSCRIBE")]
            for topic_filter, qos in packet.subscriptions:
                parts += (_field(topic_filter.encode(), "topic filter"), bytes((_qos(qos),)))
            return _frame(0x82, *parts)
        case Suback():
            if not _SUBACK_CODES.issuperset(packet.return_codes):
                raise ProtocolError(f"SUBACK return codes {packet.return_codes} are not 0-2, 0x80")
            return _frame(0x90, _packet_id(packet.packet_id, "SUBACK"), bytes(packet.return_codes))
        case Unsubscribe():
            topics = (_field(topic.encode(), "topic filter") for topic in packet.topics)
            return _frame(0xA2, _packet_id(packet.packet_id, "UNSUBSCRIBE"), *topics)
        case Unsuback():
            return _frame(0xB0, _packet_id(packet.packet_id, "UNSUBACK"))
        case Pingreq():
            return b"\xc0\x00"
        case Pingresp():
            return b"\xd0\x00"
        case Disconnect():
            return b"\xe0\x00"
    assert_never(packet)


def _encode_publish(packet: Publish) -> bytes:
    topic = _field(packet.topic.encode(), "PUBLISH topic name")
    first = 0x30 | packet.dup << 3 | _qos(packet.qos) << 1 | packet.retain
    if packet.qos:
        packet_id = _packet_id(packet.packet_id, "PUBLISH")
        return _frame(first, topic, packet_id, packet.payload)
    if packet.packet_id is not None:
        raise ProtocolError("PUBLISH with QoS 0 cannot carry a packet id")
    if packet.dup:
        raise ProtocolError("PUBLISH with QoS 0 cannot set the DUP flag")
    return _frame(first, topic, packet.payload)


def _encode_connect(packet: Connect) -> bytes:
    flags = packet.clean_session << 1
    parts = [_field(packet.client_id.encode(), "CONNECT client id")]
    if packet.will:
        flags |= 0x04 | _qos(packet.will.qos) << 3 | packet.will.retain << 5
        parts.append(_field(packet.will.topic.encode(), "CONNECT will topic"))
        parts.append(_field(packet.will.payload, "CONNECT will message"))
    if packet.username is not None:
        flags |= 0x80
        parts.append(_field(packet.username.encode(), "CONNECT user name"))
    if packet.password is not None:
        flags |= 0x40
        parts.append(_field(packet.password, "CONNECT password"))
    return _frame(
        0x10,
        _field(packet.protocol_name.encode(), "CONNECT protocol name"),
        bytes((packet.protocol_level, flags)),
        packet.keep_alive.to_bytes(2, "big"),
        *parts,
    )


def _frame(first: int, *parts: bytes) -> bytes:
    length = sum(map(len, parts))
    if length > _MAX_REMAINING_LENGTH:
        raise ProtocolError(f"{_NAMES[first >> 4]} of {length} bytes is too large for MQTT")
    header = bytearray((first,))
    while length > 0x7F:
        header.append(length & 0x7F | 0x80)
        length >>= 7
    header.append(length)
    return b"".join((header, *parts))


def _field(value: bytes, what: str) -> bytes:
    if len(value) > _MAX_FIELD_LENGTH:
        raise ProtocolError(f"{what} of {len(value)} bytes is longer than 65535 bytes")
    return len(value).to_bytes(2, "big") + value


def _packet_id(packet_id: int | None, name: str) -> bytes:
    if packet_id is None or not 0 < packet_id <= 0xFFFF:
        raise ProtocolError(f"{name} packet id {packet_id} is not in 1..65535")
    return packet_id.to_bytes(2, "big")


def _qos(qos: int) -> int:
    if qos not in (0, 1, 2):
        raise ProtocolError(f"QoS {qos} is not 0, 1 or 2")
    return qos
