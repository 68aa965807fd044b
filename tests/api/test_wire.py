"""The proto3 JSON mapping of ironcore.registry.wire: Int64, Bytes, Timestamp, enums and
messages, with unit examples and hypothesis properties."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

from ironcore.registry.resources import (
    Device,
    DeviceConfig,
    DeviceCredential,
    GatewayConfig,
    LogLevel,
    MqttConfig,
    MqttState,
    PublicKeyFormat,
)
from ironcore.registry.wire import (
    EPOCH,
    Bytes,
    Int64,
    Message,
    Timestamp,
    format_timestamp,
    parse_timestamp,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Holder(BaseModel):
    number: Int64 = 0
    data: Bytes = b""
    time: Timestamp = EPOCH


def parse(**fields: Any) -> Holder:
    return Holder.model_validate(fields)


# Int64


@pytest.mark.parametrize(
    ("given_value", "expected"),
    [
        (0, 0),
        (42, 42),
        ("42", 42),
        ("-7", -7),
        (" 12 ", 12),
        (3.0, 3),
        (str(INT64_MAX), INT64_MAX),
        (str(INT64_MIN), INT64_MIN),
        (INT64_MAX, INT64_MAX),
    ],
)
def test_int64_accepts_numbers_and_strings(given_value: object, expected: int) -> None:
    assert parse(number=given_value).number == expected


@pytest.mark.parametrize(
    "bad",
    [True, False, 1.5, "1.5", "abc", "", "0x10", "1e3", [], {}, str(INT64_MAX + 1), INT64_MIN - 1],
)
def test_int64_refuses_what_is_not_a_64_bit_integer(bad: object) -> None:
    with pytest.raises(ValidationError) as caught:
        parse(number=bad)
    assert caught.value.errors()[0]["loc"] == ("number",)


def test_int64_is_written_as_a_string() -> None:
    assert Holder(number=2928540609735937).model_dump(mode="json")["number"] == "2928540609735937"
    assert DeviceConfig(version=3).to_wire() == {"version": "3"}


@given(st.integers(INT64_MIN, INT64_MAX))
def test_int64_round_trips_as_number_and_string(value: int) -> None:
    assert parse(number=value).number == value
    assert parse(number=str(value)).number == value
    dumped = Holder(number=value).model_dump(mode="json")["number"]
    assert dumped == str(value)
    assert parse(number=dumped).number == value


@given(st.one_of(st.integers(max_value=INT64_MIN - 1), st.integers(min_value=INT64_MAX + 1)))
def test_int64_out_of_range_is_refused(value: int) -> None:
    with pytest.raises(ValidationError):
        parse(number=value)
    with pytest.raises(ValidationError):
        parse(number=str(value))


# Bytes


def encodings(data: bytes) -> list[str]:
    standard = base64.b64encode(data).decode()
    url_safe = base64.urlsafe_b64encode(data).decode()
    return [standard, standard.rstrip("="), url_safe, url_safe.rstrip("=")]


@pytest.mark.parametrize("text", encodings(b"test\xff\xfe\xfb"))
def test_bytes_accepts_standard_and_url_safe_with_or_without_padding(text: str) -> None:
    assert parse(data=text).data == b"test\xff\xfe\xfb"


def test_bytes_examples_from_the_clients() -> None:
    # The python client's modifyCloudToDeviceConfig body and the HTTP bridge sample's encoding.
    assert parse(data="dGVzdP8=").data == b"test\xff"
    assert parse(data="dGVzdP8").data == b"test\xff"
    assert parse(data="").data == b""


@pytest.mark.parametrize("bad", ["a", "abcde", "!!!!", "ab=c", "é", "YQ==YQ==", 12, None])
def test_bytes_refuses_what_is_not_base64(bad: object) -> None:
    with pytest.raises(ValidationError) as caught:
        parse(data=bad)
    assert caught.value.errors()[0]["loc"] == ("data",)


def test_bytes_error_names_the_value_like_google() -> None:
    with pytest.raises(ValidationError) as caught:
        parse(data="12345")
    assert 'Base64 decoding failed for "12345"' in str(caught.value)


def test_bytes_are_written_as_padded_standard_base64() -> None:
    assert Holder(data=b"\xfb\xff").model_dump(mode="json")["data"] == "+/8="
    assert DeviceConfig(binary_data=b"test\xff").to_wire() == {"binaryData": "dGVzdP8="}


@given(st.binary(max_size=300))
def test_bytes_round_trip_in_every_alphabet(data: bytes) -> None:
    for text in encodings(data):
        assert parse(data=text).data == data
    written = Holder(data=data).model_dump(mode="json")["data"]
    assert written == base64.b64encode(data).decode()


# Timestamps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-04-19T09:15:53Z", datetime(2023, 4, 19, 9, 15, 53, tzinfo=UTC)),
        # Google wrote nine fractional digits; Python keeps six (truncated, not rounded).
        ("2023-04-19T09:15:53.450757285Z", datetime(2023, 4, 19, 9, 15, 53, 450757, tzinfo=UTC)),
        ("2023-04-19T09:15:53.999999999Z", datetime(2023, 4, 19, 9, 15, 53, 999999, tzinfo=UTC)),
        ("2023-04-19T09:15:53.4Z", datetime(2023, 4, 19, 9, 15, 53, 400000, tzinfo=UTC)),
        ("2023-04-19T09:15:53+02:00", datetime(2023, 4, 19, 7, 15, 53, tzinfo=UTC)),
        ("2023-04-19T09:15:53.123456789-05:30", datetime(2023, 4, 19, 14, 45, 53, 123456, UTC)),
        ("1970-01-01T00:00:00Z", EPOCH),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
    ],
)
def test_timestamp_parses_rfc3339_with_fractions_and_offsets(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "bad",
    [
        "2023-04-19T09:15:53",  # no zone
        "2023-04-19",
        "yesterday",
        "",
        "2023-13-01T00:00:00Z",
        "2023-04-19T25:00:00Z",
        12345,
        # In range as written, out of range once moved to UTC.
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
    ],
)
def test_timestamp_refuses_what_is_not_an_rfc3339_instant(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(bad)
    with pytest.raises(ValidationError):
        parse(time=bad)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (EPOCH, "1970-01-01T00:00:00Z"),
        (datetime(2023, 4, 19, 9, 15, 53, 450757, tzinfo=UTC), "2023-04-19T09:15:53.450757Z"),
        (datetime(2023, 4, 19, 9, 15, 53, 450000, tzinfo=UTC), "2023-04-19T09:15:53.45Z"),
        (datetime(2023, 4, 19, 11, 0, tzinfo=timezone(timedelta(hours=2))), "2023-04-19T09:00:00Z"),
        # Years before 1000 keep four digits, or the text would not parse back.
        (datetime(1, 1, 1, tzinfo=UTC), "0001-01-01T00:00:00Z"),
        (datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC), "0999-12-31T23:59:59Z"),
    ],
)
def test_timestamp_is_written_in_utc_with_z(value: datetime, text: str) -> None:
    assert format_timestamp(value) == text
    assert parse_timestamp(text) == value


aware_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@given(aware_datetimes)
def test_timestamp_round_trips(value: datetime) -> None:
    text = format_timestamp(value)
    assert text.endswith("Z")
    assert parse_timestamp(text) == value
    assert parse(time=text).time == value


@given(
    st.datetimes(
        min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)
    ),
    st.integers(0, 999),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
)
def test_timestamp_nine_digits_and_offsets(value: datetime, nanos: int, offset: int) -> None:
    """Any instant written with nine fractional digits and any offset reads back as that
    instant, truncated to microseconds."""
    local = value.astimezone(timezone(timedelta(minutes=offset)))
    sign, minutes = ("-", -offset) if offset < 0 else ("+", offset)
    text = (
        f"{local.year:04d}-{local:%m-%dT%H:%M:%S}.{local.microsecond:06d}{nanos:03d}"
        f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    )
    assert parse_timestamp(text) == value


# Enums


@pytest.mark.parametrize("given_value", ["MQTT_DISABLED", 2])
def test_enum_accepts_name_or_number(given_value: object) -> None:
    config = MqttConfig.model_validate({"mqttEnabledState": given_value})
    assert config.mqtt_enabled_state is MqttState.MQTT_DISABLED
    assert config.to_wire() == {"mqttEnabledState": "MQTT_DISABLED"}


@pytest.mark.parametrize("bad", ["mqtt_disabled", "2", 3, -1, True, 2.0, "NOPE", ""])
def test_enum_refuses_unknown_names_and_numbers(bad: object) -> None:
    with pytest.raises(ValidationError) as caught:
        MqttConfig.model_validate({"mqttEnabledState": bad})
    assert "MQTT_ENABLED" in str(caught.value)


def test_enum_numbers_are_cloud_iot_cores_not_positions() -> None:
    # RSA_X509_PEM=1, ES256_PEM=2, RSA_PEM=3, ES256_X509_PEM=4; LogLevel jumps by tens.
    for number, member in [
        (1, "RSA_X509_PEM"),
        (2, "ES256_PEM"),
        (3, "RSA_PEM"),
        (4, "ES256_X509_PEM"),
    ]:
        credential = DeviceCredential.model_validate({"publicKey": {"format": number, "key": "k"}})
        assert credential.public_key is not None
        assert credential.public_key.format is PublicKeyFormat[member]
    assert Device.model_validate({"logLevel": 40}).log_level is LogLevel.DEBUG
    with pytest.raises(ValidationError):
        Device.model_validate({"logLevel": 4})


@given(st.sampled_from(list(LogLevel)))
def test_enum_round_trips_by_name_and_number(level: LogLevel) -> None:
    by_name = Device.model_validate({"logLevel": level.name})
    by_number = Device.model_validate({"log_level": int(level)})
    assert by_name.log_level is by_number.log_level is level
    wire = by_name.to_wire()
    if level is LogLevel.LOG_LEVEL_UNSPECIFIED:
        assert "logLevel" not in wire  # a default is left out
    else:
        assert wire["logLevel"] == level.name


# Messages


def test_message_accepts_snake_and_camel_case() -> None:
    camel = GatewayConfig.model_validate({"gatewayType": "GATEWAY", "gatewayAuthMethod": 1})
    snake = GatewayConfig.model_validate(
        {"gateway_type": 1, "gateway_auth_method": "ASSOCIATION_ONLY"}
    )
    assert camel == snake
    assert snake.to_wire() == {"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"}


def test_message_null_means_unset() -> None:
    device = Device.model_validate({"id": "dev", "config": None, "metadata": None, "blocked": None})
    assert device.config is None and device.metadata == {} and device.blocked is False


def test_message_refuses_unknown_fields_by_name() -> None:
    with pytest.raises(ValidationError) as caught:
        GatewayConfig.model_validate({"gatewayType": 1, "gatewayTipe": 2})
    assert caught.value.errors()[0]["loc"] == ("gatewayTipe",)
    assert caught.value.errors()[0]["type"] == "extra_forbidden"


def test_message_leaves_out_defaults_but_keeps_cloud_iot_cores_always_fields() -> None:
    wire = Device(id="dev", num_id=2928540609735937).to_wire()
    assert wire["numId"] == "2928540609735937"
    for key in (
        "lastHeartbeatTime",
        "lastEventTime",
        "lastStateTime",
        "lastConfigAckTime",
        "lastConfigSendTime",
        "lastErrorTime",
    ):
        assert wire[key] == "1970-01-01T00:00:00Z"
    assert wire["gatewayConfig"] == {}
    for key in ("blocked", "metadata", "credentials", "logLevel", "config", "state"):
        assert key not in wire
    assert all("_" not in key for key in wire)
    credential = DeviceCredential.model_validate({"publicKey": {"format": "RSA_PEM", "key": "k"}})
    assert credential.to_wire()["expirationTime"] == "1970-01-01T00:00:00Z"


class _Nested(Message):
    some_value: Int64 = 0
    inner_list: list[GatewayConfig] = Field(default_factory=list)


def test_message_nested_fields_are_camel_case_and_defaults_dropped_recursively() -> None:
    message = _Nested.model_validate({"some_value": "5", "innerList": [{"gateway_type": 2}, {}]})
    assert message.to_wire() == {
        "someValue": "5",
        "innerList": [{"gatewayType": "NON_GATEWAY"}, {}],
    }


@pytest.mark.parametrize("bad", ["a\x00b", "\x00", "a\ud800", "\udfff"])
def test_message_refuses_text_no_database_can_keep(bad: str) -> None:
    """NUL cannot be stored in PostgreSQL text; a lone surrogate is not Unicode at all."""
    for data, loc in [
        ({"id": bad}, ("id",)),
        ({"metadata": {"k": bad}}, ("metadata",)),
        ({"metadata": {bad: "v"}}, ("metadata",)),
        ({"credentials": [{"publicKey": {"key": bad}}]}, ("credentials", 0, "publicKey", "key")),
    ]:
        with pytest.raises(ValidationError) as caught:
            Device.model_validate(data)
        assert caught.value.errors()[0]["loc"] == loc
        assert "NUL" in caught.value.errors()[0]["msg"]


@given(st.text())
def test_message_keeps_any_other_text(text: str) -> None:
    if "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return
    device = Device.model_validate({"id": text, "metadata": {"k": text}})
    assert device.id == text and device.metadata == {"k": text}
