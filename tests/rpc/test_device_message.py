"""gRPC's GetDevice builds its Device from the stored row (rpc.device_message): the message
must be the one the REST answer (the device's proto3 JSON form) makes, field for field and
byte for byte, for a device with every field set and for one just created, on both databases,
by string and by numeric id."""

from __future__ import annotations

from typing import Any

from google.cloud.iot_v1 import types as iot
from google.protobuf import json_format
from google.protobuf.message import Message

from ironcore.registry.names import DeviceRef, LocationName, RegistryName
from ironcore.registry.resources import Device, DeviceRegistry
from ironcore.registry.service import DeviceManager
from ironcore.rpc.device_message import device_message
from ironcore.rpc.protojson import to_message
from tests.full_device import fill_in, full_device, unset_fields

_Device = iot.Device.pb()


async def both(manager: DeviceManager, ref: DeviceRef) -> tuple[Message, Message]:
    """The message built from the row, and the one the REST answer makes."""
    wire: dict[str, Any] = await manager.get_device(ref)
    from_rest = json_format.ParseDict(wire, _Device())
    assert to_message(_Device, wire) == from_rest
    return device_message(ref.registry, await manager.device_row(ref)), from_rest


def assert_same(built: Message, expected: Message) -> None:
    assert built == expected
    assert built.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )
    assert json_format.MessageToDict(built) == json_format.MessageToDict(expected)


async def test_every_field_as_rest_answers(manager: DeviceManager) -> None:
    await manager.create_registry(LocationName("p", "us-central1"), DeviceRegistry(id="reg-full"))
    parent = RegistryName.parse("p", "us-central1", "reg-full")
    device = await manager.create_device(parent, Device.model_validate(full_device("dev-full")))
    await fill_in(manager.store, device.num_id)
    for ref in (DeviceRef.parse(parent, "dev-full"), DeviceRef.parse(parent, str(device.num_id))):
        built, expected = await both(manager, ref)
        assert_same(built, expected)
    # Everything is compared: only the error's details (never kept) are left unset.
    assert unset_fields(built) == ["last_error_status.details"]
    assert built.gateway_config.last_accessed_gateway_time.nanos == 123_463_000
    assert built.credentials[0].expiration_time.nanos == 678_901_000


async def test_a_new_device_as_rest_answers(manager: DeviceManager) -> None:
    """Unset times are the epoch, present (Cloud IoT Core wrote them); no state, no error."""
    await manager.create_registry(LocationName("p", "us-central1"), DeviceRegistry(id="reg-new"))
    parent = RegistryName.parse("p", "us-central1", "reg-new")
    await manager.create_device(parent, Device(id="dev-new"))
    built, expected = await both(manager, DeviceRef.parse(parent, "dev-new"))
    assert_same(built, expected)
    assert built.HasField("last_heartbeat_time") and built.HasField("gateway_config")
    assert not built.HasField("state") and not built.HasField("last_error_status")
