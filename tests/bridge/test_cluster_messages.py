"""The cluster protocol's encoding: every message survives the trip, and `decode` raises nothing
but `MessageError`, with a reason, whatever bytes it is given."""

from __future__ import annotations

import contextlib
import json
import typing
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ironcore.bridge.cluster.messages import (
    MESSAGES,
    Command,
    ConfigChanged,
    Connected,
    Disconnected,
    Forget,
    Holding,
    Holdings,
    Message,
    MessageError,
    Metrics,
    RegistryChanged,
    decode,
    encode,
)
from ironcore.metrics import Snapshot
from ironcore.registry.names import RegistryName

REGISTRY = RegistryName.parse("my-project", "us-central1", "my-registry")

registries = st.builds(
    RegistryName.parse,
    st.from_regex(r"[a-zA-Z0-9][-a-zA-Z0-9_.:~]{0,20}", fullmatch=True),
    st.from_regex(r"[a-z][-a-z0-9]{0,20}", fullmatch=True),
    st.from_regex(r"[a-fh-zA-Z][a-zA-Z0-9._+~%-]{2,30}", fullmatch=True),
)
numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
snapshots = st.lists(
    st.tuples(
        st.text(),
        st.text(),
        st.text(),
        st.lists(st.tuples(st.text(), st.dictionaries(st.text(), st.text()), numbers).map(list)),
    ).map(list)
)
BY_TYPE: dict[object, st.SearchStrategy[Any]] = {
    int: st.integers(),
    float: st.floats(allow_nan=False, allow_infinity=False),
    str: st.text(),
    bool: st.booleans(),
    str | None: st.none() | st.text(),
    bytes: st.binary(max_size=500),
    RegistryName: registries,
    Snapshot: snapshots,
    Holdings: st.lists(
        st.tuples(st.integers(), st.floats(allow_nan=False, allow_infinity=False))
    ).map(tuple),
}


def built(cls: type[Message]) -> st.SearchStrategy[Message]:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{field.name: BY_TYPE[hints[field.name]] for field in fields(cls)})


messages = st.one_of(*(built(cls) for cls in MESSAGES))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.one_of(st.lists(inner), st.dictionaries(st.text(), inner)),
    max_leaves=10,
)


@given(messages)
def test_every_message_survives_the_trip(message: Message) -> None:
    assert decode(encode(message)) == message


def test_every_kind_is_a_different_word() -> None:
    assert len({cls.kind for cls in MESSAGES}) == len(MESSAGES)


def test_the_wire_is_json_anyone_can_read() -> None:
    assert encode(Connected("server", 7, 1.5)) == (
        b'{"kind":"connected","origin":"server","num_id":7,"at":1.5}'
    )
    assert json.loads(encode(ConfigChanged("s", 7, 3, b"\x00\xff"))) == {
        "kind": "config_changed",
        "origin": "s",
        "num_id": 7,
        "version": 3,
        "data": "AP8=",
    }
    assert json.loads(encode(RegistryChanged("s", REGISTRY)))["registry"] == [
        "my-project",
        "us-central1",
        "my-registry",
    ]


@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_raise_message_error(data: bytes) -> None:
    with contextlib.suppress(MessageError):
        decode(data)


@given(messages, st.data())
def test_any_field_of_any_value_only_raises_message_error(
    message: Message, data: st.DataObject
) -> None:
    body = json.loads(encode(message))
    for name in data.draw(st.lists(st.sampled_from(sorted(body)), max_size=3)):
        body[name] = data.draw(json_values)
    with contextlib.suppress(MessageError):
        decode(json.dumps(body).encode())


HOLDING = b'{"kind": "holding", "origin": "s", "devices": %s, "first": true, "last": false}'


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"origin": "s"}', "no message kind None"),
        (b'{"kind": ["connected"]}', "no message kind ['connected']"),
        (b'{"kind": "connect"}', "no message kind 'connect'"),
        (b'{"kind": "connected", "origin": "s", "num_id": 7}', "connected without at"),
        (b'{"kind": "connected", "origin": "s", "num_id": "7", "at": 1}', "num_id: '7' is not"),
        (b'{"kind": "connected", "origin": "s", "num_id": true, "at": 1}', "True is not an int"),
        (b'{"kind": "connected", "origin": "s", "num_id": 7, "at": NaN}', "NaN is not a number"),
        (b'{"kind": "connected", "origin": "s", "num_id": 7, "at": 1e999}', "is not a number"),
        (b'{"kind": "connected", "origin": "s", "num_id": 7, "at": 1' + b"0" * 400 + b"}", "large"),
        (b'{"kind": "command", "num_id": 7, "subfolder": "", "data": "A*=="}', "not base64"),
        (b'{"kind": "command", "num_id": 7, "subfolder": "", "data": "\xc3\xa9"}', "not base64"),
        (b'{"kind": "registry_changed", "origin": "s", "registry": ["p", "l"]}', "[project,"),
        (
            b'{"kind": "registry_changed", "origin": "s", "registry": ["p", "us", "goog1"]}',
            "is not a registry: ",
        ),
        (b'{"kind": "metrics", "families": [["n", "counter", "h", [["s", {}, "1"]]]]}', "number"),
        (b'{"kind": "metrics", "families": [["n", "counter", "h"]]}', "[name, type, help"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b'{"kind": "holding", "origin": "s", "first": true, "last": true}', "without devices"),
        (HOLDING % b'{"7": 1.5}', "is not a list of [num_id, connected at]"),
        (HOLDING % b"[[7]]", "[7] is not [num_id, connected at]"),
        (HOLDING % b"[[7, 1.5, 2]]", "is not [num_id, connected at]"),
        (HOLDING % b'[[7, "1.5"]]', "holding.devices: '1.5' is not a number"),
        (HOLDING % b"[[7.0, 1.5]]", "7.0 is not an integer"),
        (HOLDING % b"[[7, 1e999]]", "is not a number JSON allows"),
        (b'{"kind": "heartbeat", "origin": "s", "lease": "10"}', "heartbeat.lease: '10'"),
        (b'{"kind": "hello"}', "hello without origin"),
    ],
)
def test_what_is_wrong_is_said(data: bytes, says: str) -> None:
    with pytest.raises(MessageError) as error:
        decode(data)
    assert says in str(error.value)


def test_holdings_are_pairs_of_a_device_and_when_it_connected() -> None:
    message = Holding("s", ((7, 1.5), (8, 2.0)), True, False)
    assert json.loads(encode(message))["devices"] == [[7, 1.5], [8, 2.0]]
    expected = Holding("s", ((7, 1.0), (8, 2.5)), True, False)
    assert decode(HOLDING % b"[[7, 1], [8, 2.5]]") == expected


def test_keys_a_later_version_adds_are_ignored() -> None:
    data = b'{"kind": "command", "num_id": 7, "subfolder": "a", "data": "", "priority": 1}'
    assert decode(data) == Command(7, "a", b"")


def test_metrics_keep_their_shape() -> None:
    families = [["ironcore_x", "counter", "help", [["ironcore_x_total", {"k": "v"}, 2.0]]]]
    assert decode(encode(Metrics(families))) == Metrics(families)


def test_kinds_with_the_same_fields_are_told_apart() -> None:
    assert Disconnected("s", 7) != Forget("s", 7)  # type: ignore[comparison-overlap]
    assert decode(encode(Forget("s", 7))) == Forget("s", 7)
    assert type(decode(encode(Disconnected("s", 7)))) is Disconnected
