"""rpc.protojson builds the same messages as json_format.ParseDict from what the services write,
for every kind of field the device manager's resources have."""

from __future__ import annotations

import pytest
from google.cloud.iot_v1 import types as iot
from google.iam.v1 import policy_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from ironcore.registry.names import DeviceRef, LocationName, RegistryName
from ironcore.registry.resources import Device, DeviceRegistry, Policy
from ironcore.registry.service import DeviceManager
from ironcore.rpc.protojson import to_message
from tests.keys import es256_key, public_pem, rsa_key, self_signed_pem

pytestmark = pytest.mark.databases("sqlite")


def same(message_type: type[Message], wire: dict[str, object]) -> Message:
    built = to_message(message_type, wire)
    assert built == json_format.ParseDict(wire, message_type(), ignore_unknown_fields=True)
    return built


async def test_resources_convert_as_json_format_does(manager: DeviceManager) -> None:
    registry = await manager.create_registry(
        LocationName("p", "us-central1"),
        DeviceRegistry.model_validate(
            {
                "id": "reg-proto",
                "eventNotificationConfigs": [
                    {"subfolderMatches": "a", "pubsubTopicName": "projects/p/topics/sub-a"},
                    {"pubsubTopicName": "projects/p/topics/all"},
                ],
                "mqttConfig": {"mqttEnabledState": "MQTT_ENABLED"},
                "logLevel": "DEBUG",
                "credentials": [
                    {
                        "publicKeyCertificate": {
                            "format": "X509_CERTIFICATE_PEM",
                            "certificate": self_signed_pem(rsa_key()),
                        }
                    }
                ],
            }
        ),
    )
    converted = same(iot.DeviceRegistry.pb(), registry.to_wire())
    assert converted.credentials[0].public_key_certificate.x509_details.expiry_time.seconds > 0

    # Devices with plain keys live in a registry without CA certificates.
    plain = await manager.create_registry(
        LocationName("p", "us-central1"), DeviceRegistry(id="reg-plain")
    )
    parent = RegistryName.parse("p", "us-central1", plain.id)
    device = await manager.create_device(
        parent,
        Device.model_validate(
            {
                "id": "dev-proto",
                "credentials": [
                    {
                        "publicKey": {"format": "ES256_PEM", "key": public_pem(es256_key())},
                        "expirationTime": "2030-01-02T03:04:05.678Z",
                    }
                ],
                "metadata": {"k": "v", "empty": ""},
                "blocked": True,
                "logLevel": "ERROR",
                "gatewayConfig": {
                    "gatewayType": "GATEWAY",
                    "gatewayAuthMethod": "ASSOCIATION_ONLY",
                },
            }
        ),
    )
    wire = device.to_wire()
    wire["lastErrorStatus"] = {"code": 9, "message": "refused", "details": []}
    wire["ironcoreOnly"] = "left out"
    converted = same(iot.Device.pb(), wire)
    assert converted.num_id == device.num_id and converted.metadata["k"] == "v"
    assert converted.credentials[0].expiration_time.nanos == 678_000_000

    config = await manager.modify_config(DeviceRef.parse(parent, device.id), 0, b"\x00\xffconfig")
    assert same(iot.DeviceConfig.pb(), config.to_wire()).binary_data == b"\x00\xffconfig"

    policy = Policy.model_validate(
        {"version": 1, "bindings": [{"role": "roles/viewer", "members": ["user:a", "user:b"]}]}
    )
    same(policy_pb2.Policy, policy.to_wire())
    same(iot.ListDevicesResponse.pb(), {"devices": [wire, {"id": "x"}], "nextPageToken": "t"})
