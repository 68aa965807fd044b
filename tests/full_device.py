"""A device with every field of the v1 `Device` message set: what the device manager takes at
creation (`FULL_DEVICE`), then what only devices and bridges write (`fill_in`: state, config
acknowledgement, `last*` times, the last error, the gateway that last spoke for it), with
times that have fractions of a second. `unset_fields` names the fields a message leaves at
their default, so a test can check that it compares everything."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ironcore.registry.store import Store
from tests.keys import es256_key, public_pem, rsa_key, self_signed_pem

# 2026-12-04T20:00:00.123456Z in microseconds, and later times from it.
BASE_US = 1_796_414_400_123_456


def full_device(device_id: str) -> dict[str, Any]:
    return {
        "id": device_id,
        "credentials": [
            {
                "publicKey": {"format": "ES256_PEM", "key": public_pem(es256_key())},
                "expirationTime": "2030-01-02T03:04:05.678901Z",
            },
            {"publicKey": {"format": "RSA_X509_PEM", "key": self_signed_pem(rsa_key())}},
        ],
        "metadata": {"k": "v", "empty": "", "unicode": "cödé ✓"},
        "blocked": True,
        "logLevel": "DEBUG",
        "config": {"binaryData": "AP9jb25maWc="},
        "gatewayConfig": {"gatewayType": "GATEWAY", "gatewayAuthMethod": "ASSOCIATION_ONLY"},
    }


async def fill_in(store: Store, num_id: int) -> None:
    """What a device's connections write: its state, an acknowledgement of config version 1,
    every `last*` time, an error and the gateway it last came through."""
    state_at = datetime.fromtimestamp((BASE_US + 1) / 1e6, UTC)
    await store.configs.add_state(num_id, b"\x00state\xff", state_at, keep=10)
    await store.bridge.ack_configs([(num_id, 1, BASE_US + 2)])
    await store.bridge.update_device_times(
        {
            num_id: {
                "last_heartbeat_time": BASE_US + 3,
                "last_event_time": BASE_US + 4,
                "last_config_send_time": BASE_US + 5,
                "last_error_time": BASE_US + 6,
                "last_error_code": 9,
                "last_error_message": "mqtt: refused",
                "last_gateway_id": "gw-1",
                "last_gateway_time": BASE_US + 7,
            }
        }
    )


def unset_fields(message: Message, prefix: str = "") -> list[str]:
    """The fields of `message` (and of the messages it holds) left at their default."""
    unset = []
    for field in message.DESCRIPTOR.fields:
        name = prefix + field.name
        value = getattr(message, field.name)
        if field.label == FieldDescriptor.LABEL_REPEATED:
            if not value:
                unset.append(name)
            elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
                for item in value:
                    unset += unset_fields(item, f"{name}[].")
        elif field.message_type is not None:
            if not message.HasField(field.name):
                unset.append(name)
            elif not field.message_type.full_name.startswith("google.protobuf."):
                unset += unset_fields(value, f"{name}.")
        elif value == field.default_value:
            unset.append(name)
    return unset
