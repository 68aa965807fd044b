"""The cluster protocol: every message between the processes of a server (the primary and its
MQTT workers, over `bridge.ipc` channels) and between the servers of one database (over NATS,
`cluster.bus`), one frozen dataclass per kind.

`encode` turns a message into bytes: a JSON object of its kind and its fields, bytes as base64
text, a registry name as its three ids. `decode` turns bytes back into a message or raises
`MessageError` saying what is wrong; it raises nothing else, whatever the bytes. Keys it does
not know are ignored, so that a later version may add a field with a default.

`origin` is the process that sent the message on this hop: a server's id on the bus, a server
or worker id between the processes of a server (`cluster.hub.ClusterHub.origin`). Times are
seconds since the epoch on the sender's clock.

Between servers, `Connected` and `Disconnected` keep the directories current as devices come and
go, but a server that starts, or whose NATS connection comes back, has missed them. So a server
that (re)joins says `Hello`, and every server answers with what it holds (`Holding`, in chunks,
each a part of one snapshot that replaces what was known of its sender); and every server says
`Heartbeat` often, so that the others drop the devices of a server that stopped (its lease).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

from ironcore.errors import IronCoreError
from ironcore.metrics import Snapshot
from ironcore.registry.names import RegistryName


class MessageError(ValueError):
    """Bytes that are not a message of the cluster protocol; the text says why."""


@dataclass(frozen=True)
class Message:
    """A message of one kind. A kind that adds no field to its base is a plain subclass; the
    dataclass's equality still tells kinds apart."""

    kind: ClassVar[str]


@dataclass(frozen=True)
class AboutDevice(Message):
    """What `origin` says about one device (each kind below says what)."""

    origin: str
    num_id: int


@dataclass(frozen=True)
class ForDevice(Message):
    """A word for the process that serves one device."""

    num_id: int


# Who serves which device (`cluster.directory`).


@dataclass(frozen=True)
class Connected(AboutDevice):
    """The device connected to `origin` (or to one of its workers) at `at`."""

    kind = "connected"
    at: float


class Disconnected(AboutDevice):
    """The device `origin` served is gone from it."""

    kind = "disconnected"


# A server's devices as a whole (`cluster.bus`): [num_id, connected at], one pair each.
Holdings = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Hello(Message):
    """A server joined the bus, or its connection to NATS came back: every server answers with
    the devices it holds (`Holding`)."""

    kind = "hello"
    origin: str


@dataclass(frozen=True)
class Holding(Message):
    """One chunk of the devices `origin` holds now (its own and its workers'). The chunks from
    `first` to `last` together replace whatever was known of `origin`'s devices."""

    kind = "holding"
    origin: str
    devices: Holdings
    first: bool
    last: bool


@dataclass(frozen=True)
class Heartbeat(Message):
    """`origin` is alive; if nothing is heard of it for `lease` seconds, its devices are taken
    as not connected."""

    kind = "heartbeat"
    origin: str
    lease: float


class Kick(ForDevice):
    """From a primary to the worker serving the device: another connection took it over."""

    kind = "kick"


# Changes: each process forgets what it cached, and its connection of the device acts.


@dataclass(frozen=True)
class ConfigChanged(AboutDevice):
    kind = "config_changed"
    version: int
    data: bytes


class DeviceChanged(AboutDevice):
    """Check the device's connection again (blocked, deleted, credentials changed)."""

    kind = "device_changed"


class RotationChanged(AboutDevice):
    """The device's key rotation started or moved on: tell the device."""

    kind = "rotation_changed"


@dataclass(frozen=True)
class RegistryChanged(Message):
    """Check every connection of the registry's devices again (after the signers revoked)."""

    kind = "registry_changed"
    origin: str
    registry: RegistryName


class Forget(AboutDevice):
    """The device's cached context is stale (a key rotation step wrote its credentials)."""

    kind = "forget"


# Requests, each answered by one message, and the answers.


@dataclass(frozen=True)
class Command(ForDevice):
    """Deliver a command to the device; answered by `Delivered`."""

    kind = "command"
    subfolder: str
    data: bytes


class KeyInUse(ForDevice):
    """Which key did the device authenticate with? Answered by `Fingerprint`."""

    kind = "key_in_use"


class CatchUp(Message):
    """From a primary to its workers, after its bus came back: changes may have gone unheard,
    so check every connection against the database (`bridge.hub.LiveConnection.catch_up`)."""

    kind = "catch_up"


class CollectMetrics(Message):
    """From a primary to a worker: answered by `Metrics`."""

    kind = "collect_metrics"


@dataclass(frozen=True)
class Delivered(Message):
    kind = "delivered"
    delivered: bool


@dataclass(frozen=True)
class Fingerprint(Message):
    """None: the device is not connected there, or is behind a gateway."""

    kind = "fingerprint"
    fingerprint: str | None


@dataclass(frozen=True)
class Metrics(Message):
    """`bridge.metrics.snapshot()` of the process."""

    kind = "metrics"
    families: Snapshot


@dataclass(frozen=True)
class Failed(Message):
    """The answer to a request whose handling failed, saying how."""

    kind = "failed"
    error: str


# A process's life.


@dataclass(frozen=True)
class Ready(Message):
    """From a worker to its primary: it accepts connections."""

    kind = "ready"
    origin: str


Change = ConfigChanged | DeviceChanged | RotationChanged | RegistryChanged | Forget
Request = Command | KeyInUse | CollectMetrics
Answer = Delivered | Fingerprint | Metrics | Failed

MESSAGES: tuple[type[Message], ...] = (
    Connected,
    Disconnected,
    Hello,
    Holding,
    Heartbeat,
    Kick,
    CatchUp,
    ConfigChanged,
    DeviceChanged,
    RotationChanged,
    RegistryChanged,
    Forget,
    Command,
    KeyInUse,
    CollectMetrics,
    Delivered,
    Fingerprint,
    Metrics,
    Failed,
    Ready,
)


# How each field type is written and read back. A reader raises MessageError.


def _integer(value: object) -> int:
    if type(value) is not int:
        raise MessageError(f"{_shown(value)} is not an integer")
    return value


def _number(value: object) -> float:
    if type(value) is float:
        if not math.isfinite(value):  # 1e999 reads as infinity
            raise MessageError(f"{_shown(value)} is not a number JSON allows")
        return value
    if type(value) is not int:
        raise MessageError(f"{_shown(value)} is not a number")
    try:
        return float(value)
    except OverflowError:
        raise MessageError(f"{_shown(value)} is too large") from None


def _text(value: object) -> str:
    if type(value) is not str:
        raise MessageError(f"{_shown(value)} is not a string")
    return value


def _flag(value: object) -> bool:
    if type(value) is not bool:
        raise MessageError(f"{_shown(value)} is not true or false")
    return value


def _text_or_none(value: object) -> str | None:
    return None if value is None else _text(value)


def _to_base64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _from_base64(value: object) -> bytes:
    try:
        return base64.b64decode(_text(value), validate=True)
    except (binascii.Error, ValueError) as error:  # a non-ASCII string is a ValueError
        raise MessageError(f"{_shown(value)} is not base64: {error}") from None


def _to_registry(name: RegistryName) -> list[str]:
    return [name.project, name.location.location, name.registry]


def _from_registry(value: object) -> RegistryName:
    if type(value) is not list or len(value) != 3:
        raise MessageError(f"{_shown(value)} is not [project, location, registry]")
    try:
        return RegistryName.parse(*(_text(part) for part in value))
    except IronCoreError as error:
        raise MessageError(f"{_shown(value)} is not a registry: {error.message}") from None


def _from_snapshot(value: object) -> Snapshot:
    """[[name, type, help, [[sample name, {label: value}, number], …]], …]"""
    if type(value) is not list:
        raise MessageError(f"{_shown(value)} is not a list of metric families")
    for family in value:
        if type(family) is not list or len(family) != 4 or type(family[3]) is not list:
            raise MessageError(f"{_shown(family)} is not [name, type, help, samples]")
        for part in family[:3]:
            _text(part)
        for sample in family[3]:
            if type(sample) is not list or len(sample) != 3 or type(sample[1]) is not dict:
                raise MessageError(f"{_shown(sample)} is not [name, labels, value]")
            _text(sample[0])
            for label in (*sample[1], *sample[1].values()):
                _text(label)
            _number(sample[2])
    return value


def _to_holdings(value: Holdings) -> list[list[float]]:
    return [[num_id, at] for num_id, at in value]


def _from_holdings(value: object) -> Holdings:
    if type(value) is not list:
        raise MessageError(f"{_shown(value)} is not a list of [num_id, connected at]")
    held = []
    for pair in value:
        if type(pair) is not list or len(pair) != 2:
            raise MessageError(f"{_shown(pair)} is not [num_id, connected at]")
        held.append((_integer(pair[0]), _number(pair[1])))
    return tuple(held)


def _same(value: Any) -> Any:
    return value


_Codec = tuple[Callable[[Any], Any], Callable[[object], Any]]
_CODECS: dict[object, _Codec] = {
    int: (_same, _integer),
    float: (_same, _number),
    str: (_same, _text),
    bool: (_same, _flag),
    str | None: (_same, _text_or_none),
    bytes: (_to_base64, _from_base64),
    RegistryName: (_to_registry, _from_registry),
    Snapshot: (_same, _from_snapshot),
    Holdings: (_to_holdings, _from_holdings),
}


@dataclass(frozen=True)
class _Field:
    name: str
    write: Callable[[Any], Any]
    read: Callable[[object], Any]
    default: object


def _fields(cls: type[Message]) -> tuple[_Field, ...]:
    """The class's fields with their codecs; a type without one fails here, at import."""
    hints = typing.get_type_hints(cls)
    return tuple(
        _Field(field.name, *_CODECS[hints[field.name]], field.default) for field in fields(cls)
    )


_KINDS: dict[str, type[Message]] = {cls.kind: cls for cls in MESSAGES}
_FIELDS: dict[type[Message], tuple[_Field, ...]] = {cls: _fields(cls) for cls in MESSAGES}


def encode(message: Message) -> bytes:
    body: dict[str, Any] = {"kind": message.kind}
    for field in _FIELDS[type(message)]:
        body[field.name] = field.write(getattr(message, field.name))
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def decode(data: bytes) -> Message:
    """The message `data` encodes; MessageError if it encodes none."""
    try:
        body = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError
        raise MessageError(f"not JSON: {error}") from None
    if type(body) is not dict:
        raise MessageError("not a JSON object")
    kind = body.get("kind")
    cls = _KINDS.get(kind) if type(kind) is str else None
    if cls is None:
        raise MessageError(f"no message kind {_shown(kind)}")
    values: dict[str, Any] = {}
    for field in _FIELDS[cls]:
        if field.name in body:
            try:
                values[field.name] = field.read(body[field.name])
            except MessageError as error:
                raise MessageError(f"{cls.kind}.{field.name}: {error}") from None
        elif field.default is MISSING:
            raise MessageError(f"{cls.kind} without {field.name}")
    return cls(**values)


def about(message: Message) -> str:
    """The message in a few words, for a log line (never its data)."""
    if isinstance(message, AboutDevice | ForDevice):
        return f"{message.kind} for device {message.num_id}"
    return message.kind


def _no_constant(name: str) -> None:
    raise MessageError(f"{name} is not a number JSON allows")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
