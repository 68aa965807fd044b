"""GetDevice's answer, the `google.cloud.iot.v1.Device` message, straight from the device's
stored row (`DeviceRow`).

The other methods answer with the resource's proto3 JSON form (`to_wire`) made a message
(`rpc.protojson`); for a device that is the store's pydantic model, its JSON form with eight
timestamps written out as text, and the text parsed back: about three quarters of the CPU time
of the gRPC call, outside grpcio. Here each field goes from the row to the message once. The
message is the one the JSON form makes, field for field, including the ones Cloud IoT Core
always wrote (`Device.ALWAYS`: the `last*Time` fields at the epoch when never, `gatewayConfig`)
and the config, which a device always has; tests/rpc/test_device_message.py holds the two
side by side.
"""

from __future__ import annotations

import warnings
from typing import Any

from google.protobuf.message import Message

from ironcore.registry.names import RegistryName, device_name
from ironcore.registry.store.devices import DeviceRow
from ironcore.rpc.protojson import arguments

with warnings.catch_warnings():
    # google-api-core warns at import about Python versions it will stop supporting.
    warnings.simplefilter("ignore", FutureWarning)
    from google.cloud.iot_v1 import types as iot

_Device = iot.Device.pb()
_Credential = iot.DeviceCredential.pb().DESCRIPTOR


def device_message(registry: RegistryName, row: DeviceRow) -> Message:
    """The Device message of a device of `registry` (the whole of it: no field mask)."""
    body = row.body
    config: dict[str, Any] = {
        "version": row.config_version,
        "cloud_update_time": _timestamp(row.config_update_time),
        "binary_data": row.config_data,
    }
    if row.config_ack_time:
        config["device_ack_time"] = _timestamp(row.config_ack_time)
    gateway: dict[str, Any] = {
        "gateway_type": row.gateway_type,
        "gateway_auth_method": body["gatewayAuthMethod"],
        "last_accessed_gateway_id": row.last_gateway_id,
    }
    if row.last_gateway_time:
        gateway["last_accessed_gateway_time"] = _timestamp(row.last_gateway_time)
    fields: dict[str, Any] = {
        "id": row.device_id,
        "name": device_name(registry, row.num_id),
        "num_id": row.num_id,
        # Written by `DeviceCredential.to_wire`, so in the proto3 JSON form.
        "credentials": [arguments(_Credential, credential) for credential in body["credentials"]],
        "last_heartbeat_time": _timestamp(row.last_heartbeat_time),
        "last_event_time": _timestamp(row.last_event_time),
        "last_state_time": _timestamp(row.last_state_time),
        "last_config_ack_time": _timestamp(row.last_config_ack_time),
        "last_config_send_time": _timestamp(row.last_config_send_time),
        "blocked": row.blocked,
        "last_error_time": _timestamp(row.last_error_time),
        "config": config,
        "log_level": body["logLevel"],
        "metadata": body["metadata"],
        "gateway_config": gateway,
    }
    if row.state_time:
        fields["state"] = {
            "update_time": _timestamp(row.state_time),
            "binary_data": row.state_data,
        }
    if row.last_error_code or row.last_error_message:
        fields["last_error_status"] = {
            "code": row.last_error_code,
            "message": row.last_error_message,
        }
    return _Device(**fields)


def _timestamp(microseconds: int) -> dict[str, int]:
    """A google.protobuf.Timestamp's fields for a stored time (0, never, is the epoch)."""
    seconds, fraction = divmod(microseconds, 1_000_000)
    return {"seconds": seconds, "nanos": fraction * 1000}
