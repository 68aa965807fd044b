"""ironcore.bodies: request bodies read up to a cap, and JSON parsed no deeper than a limit.

Property tests: whatever the bytes, the parser answers a value or InvalidArgument (the 400 its
callers send), never another exception; whatever the chunks, the reader returns the body or
refuses it as soon as it passes the cap, never reading further.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ironcore import bodies, limits
from ironcore.bodies import (
    JSON_MAX_DEPTH,
    ClientGone,
    PayloadTooLarge,
    RequestBody,
    body_cap,
    check_json_depth,
    parse_json,
)
from ironcore.errors import Code, InvalidArgument

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
# Text that looks like JSON often enough to get past the first character.
jsonish = st.text(alphabet='[]{}",:\\ 0123456789.eE+-truefalsnu\n\tx\u00e9\ud800', max_size=200)


def nested(depth: int, close: bool = True, kind: str = "[") -> bytes:
    """JSON `depth` levels deep: arrays, or objects; without its closing brackets unless
    `close`."""
    if kind == "[":
        return b"[" * depth + (b"]" * depth if close else b"")
    return b'{"a":' * depth + b"0" + (b"}" * depth if close else b"")


def test_the_caps_are_the_contract_in_base64_and_an_envelope() -> None:
    assert bodies.base64_length(0) == 0
    assert bodies.base64_length(1) == 4
    assert bodies.base64_length(3) == 4
    assert bodies.base64_length(4) == 8
    assert body_cap(limits.EVENT_BYTES) == 349_528 + 16_384
    assert body_cap(limits.STATE_BYTES) == 87_384 + 16_384


@given(st.binary(max_size=300))
@example(nested(1000))
@example(nested(1000, close=False))
@example(b'{"a": ' * 2000)
@example(b"1" * 5000)
@example("[1]".encode("utf-16"))
@example(b"\xff\xfe\x00")
def test_any_bytes_parse_or_are_invalid_argument(raw: bytes) -> None:
    try:
        parse_json(raw)
    except InvalidArgument as error:
        assert error.code is Code.INVALID_ARGUMENT
        assert error.message.startswith("Invalid value at 'body': Invalid JSON payload received")
        assert [v.field for v in error.violations] == ["body"]


@given(jsonish)
def test_jsonish_text_parses_or_is_invalid_argument(text: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    try:
        value = parse_json(raw)
    except InvalidArgument:
        return
    assert value == json.loads(raw)


@given(json_values)
def test_json_parses_as_json(value: Any) -> None:
    raw = json.dumps(value).encode()
    assert parse_json(raw) == json.loads(raw)
    check_json_depth(raw)


@given(st.integers(1, 3000), st.sampled_from("[{"), st.booleans())
@example(JSON_MAX_DEPTH, "[", True)
@example(JSON_MAX_DEPTH + 1, "[", True)
@example(JSON_MAX_DEPTH + 1, "{", True)
@example(100_000, "[", True)
def test_depth_is_limited_exactly(depth: int, kind: str, close: bool) -> None:
    raw = nested(depth, close, kind)
    if not close and depth <= JSON_MAX_DEPTH:
        with pytest.raises(InvalidArgument, match="Invalid JSON payload received \\(Expecting"):
            parse_json(raw)
    elif depth > JSON_MAX_DEPTH:
        # Too deep whether it closes its levels or not.
        with pytest.raises(InvalidArgument, match="nested too deeply: at most 32 levels"):
            parse_json(raw)
        with pytest.raises(InvalidArgument, match="nested too deeply: at most 32 levels"):
            check_json_depth(raw)
    else:
        assert parse_json(raw) == json.loads(raw)
        check_json_depth(raw)


def test_brackets_inside_strings_do_not_count() -> None:
    raw = json.dumps({"a": "[" * 1000, "b": ["{" * 1000, '\\"[' * 100]}).encode()
    assert parse_json(raw)["a"] == "[" * 1000
    check_json_depth(raw)
    # Nor in an unfinished document: its syntax error is what it is told.
    for unfinished in (raw[:-1], raw + b"x", b'{"a": "' + b"[" * 1000):
        with pytest.raises(InvalidArgument, match="Invalid JSON payload received \\("):
            parse_json(unfinished)
        check_json_depth(unfinished)


@given(st.binary(max_size=300) | jsonish.map(lambda t: t.encode("utf-8", "surrogatepass")))
@example(nested(5000))
def test_the_depth_check_only_ever_refuses_depth(raw: bytes) -> None:
    try:
        check_json_depth(raw)
    except InvalidArgument as error:
        assert "nested too deeply" in error.message


# Reading


class Receiver:
    """An ASGI receive channel that hands out `chunks`, counting what it handed out."""

    def __init__(self, chunks: list[bytes], disconnect: bool = False) -> None:
        self.chunks = chunks
        self.disconnect = disconnect
        self.taken = 0

    async def __call__(self) -> dict[str, Any]:
        if self.taken == len(self.chunks):
            assert self.disconnect, "read past the end of the body"
            return {"type": "http.disconnect"}
        self.taken += 1
        more = self.taken < len(self.chunks) or self.disconnect
        return {"type": "http.request", "body": self.chunks[self.taken - 1], "more_body": more}


def scope(length: int | None, chunked: bool = False) -> dict[str, Any]:
    headers = []
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    return {"type": "http", "headers": headers}


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=20), st.integers(0, 600), st.booleans())
def test_a_body_is_read_whole_or_refused_at_the_chunk_past_the_cap(
    chunks: list[bytes], cap: int, declare: bool
) -> None:
    size = sum(map(len, chunks))
    receive = Receiver(chunks or [b""])
    body = RequestBody(scope(size if declare else None, chunked=not declare), receive, cap, "x")
    if size <= cap:
        assert asyncio.run(body.read()) == b"".join(chunks)
        assert not body.pending and not body.must_close
        return
    with pytest.raises(PayloadTooLarge) as refused:
        asyncio.run(body.read())
    assert refused.value.http_status == 413
    assert refused.value.code is Code.INVALID_ARGUMENT
    assert refused.value.message == f"Request payload size exceeds the limit: {cap} bytes (x)."
    assert body.pending and body.must_close
    if declare:
        assert receive.taken == 0  # refused on the header, before a byte was read
    else:
        # Nothing past the chunk that crossed the cap.
        taken = chunks[: receive.taken]
        assert sum(map(len, taken)) > cap >= sum(map(len, taken[:-1]))


def test_a_client_that_leaves_is_gone() -> None:
    body = RequestBody(scope(10), Receiver([b"12345"], disconnect=True), 100, "x")
    with pytest.raises(ClientGone):
        asyncio.run(body.read())


@pytest.mark.parametrize(
    ("length", "chunked", "cap", "must_close"),
    [
        (None, False, 100, False),  # no body
        (0, False, 100, False),
        (100, False, 100, False),  # small, declared: the server may drain it
        (101, False, 100, True),  # over the cap
        (None, True, 100, True),  # of unknown size
        (bodies.DRAIN_MAX_BYTES + 1, False, 1 << 30, True),  # too much to drain
    ],
)
def test_an_unread_body_closes_the_connection_when_large(
    length: int | None, chunked: bool, cap: int, must_close: bool
) -> None:
    assert RequestBody(scope(length, chunked), Receiver([]), cap, "x").must_close is must_close
