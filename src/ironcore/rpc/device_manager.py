"""`google.cloud.iot.v1.DeviceManager`: every method the REST API serves, over the same
`DeviceManager`, with the same permission per method (`api.registries`, `api.devices`)."""

from __future__ import annotations

import warnings
from typing import Any

import grpc
from google.iam.v1 import iam_policy_pb2
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from ironcore.access.callers import Authenticator
from ironcore.access.grants import granted_permissions
from ironcore.access.policies import bindable
from ironcore.access.roles import Caller, require
from ironcore.errors import InvalidArgument
from ironcore.registry.names import (
    parse_device_name,
    parse_location_name,
    parse_num_id,
    parse_registry_name,
)
from ironcore.registry.resources import Device, DeviceRegistry, GatewayType, Policy
from ironcore.registry.service import DeviceManager
from ironcore.rpc.calls import Method, mask, message, model, policy_message, unary
from ironcore.rpc.device_message import device_message

with warnings.catch_warnings():
    # google-api-core warns at import about Python versions it will stop supporting; a
    # server's log is not the place for it.
    warnings.simplefilter("ignore", FutureWarning)
    from google.cloud.iot_v1 import types as iot

SERVICE = "google.cloud.iot.v1.DeviceManager"
_Registry = iot.DeviceRegistry.pb()
_Device = iot.Device.pb()


class DeviceManagerService:
    def __init__(self, manager: DeviceManager, authenticator: Authenticator) -> None:
        self.manager = manager
        self.authenticator = authenticator

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[Method, type[Message]]] = {
            "CreateDeviceRegistry": (self.create_registry, iot.CreateDeviceRegistryRequest.pb()),
            "GetDeviceRegistry": (self.get_registry, iot.GetDeviceRegistryRequest.pb()),
            "UpdateDeviceRegistry": (self.update_registry, iot.UpdateDeviceRegistryRequest.pb()),
            "DeleteDeviceRegistry": (self.delete_registry, iot.DeleteDeviceRegistryRequest.pb()),
            "ListDeviceRegistries": (self.list_registries, iot.ListDeviceRegistriesRequest.pb()),
            "CreateDevice": (self.create_device, iot.CreateDeviceRequest.pb()),
            "GetDevice": (self.get_device, iot.GetDeviceRequest.pb()),
            "UpdateDevice": (self.update_device, iot.UpdateDeviceRequest.pb()),
            "DeleteDevice": (self.delete_device, iot.DeleteDeviceRequest.pb()),
            "ListDevices": (self.list_devices, iot.ListDevicesRequest.pb()),
            "ModifyCloudToDeviceConfig": (
                self.modify_config,
                iot.ModifyCloudToDeviceConfigRequest.pb(),
            ),
            "ListDeviceConfigVersions": (
                self.list_config_versions,
                iot.ListDeviceConfigVersionsRequest.pb(),
            ),
            "ListDeviceStates": (self.list_states, iot.ListDeviceStatesRequest.pb()),
            "SetIamPolicy": (self.set_iam_policy, iam_policy_pb2.SetIamPolicyRequest),
            "GetIamPolicy": (self.get_iam_policy, iam_policy_pb2.GetIamPolicyRequest),
            "TestIamPermissions": (
                self.test_iam_permissions,
                iam_policy_pb2.TestIamPermissionsRequest,
            ),
            "SendCommandToDevice": (self.send_command, iot.SendCommandToDeviceRequest.pb()),
            "BindDeviceToGateway": (self.bind, iot.BindDeviceToGatewayRequest.pb()),
            "UnbindDeviceFromGateway": (self.unbind, iot.UnbindDeviceFromGatewayRequest.pb()),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: unary(
                    name, method, request_type, self.authenticator, self.manager.store.audit
                )
                for name, (method, request_type) in methods.items()
            },
        )

    # Registries

    async def create_registry(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.registries.create", request.parent)
        registry = await self.manager.create_registry(
            parse_location_name(request.parent), model(DeviceRegistry, request.device_registry)
        )
        return message(_Registry, registry.to_wire())

    async def get_registry(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.registries.get", request.name)
        registry = await self.manager.get_registry(parse_registry_name(request.name))
        return message(_Registry, registry.to_wire())

    async def update_registry(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.registries.update", request.device_registry.name)
        registry = await self.manager.update_registry(
            parse_registry_name(request.device_registry.name, "device_registry.name"),
            model(DeviceRegistry, request.device_registry),
            mask(request.update_mask),
        )
        return message(_Registry, registry.to_wire())

    async def delete_registry(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.registries.delete", request.name)
        await self.manager.delete_registry(parse_registry_name(request.name))
        return empty_pb2.Empty()

    async def list_registries(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.registries.list", request.parent)
        page = await self.manager.list_registries(
            parse_location_name(request.parent), request.page_size, request.page_token
        )
        return message(
            iot.ListDeviceRegistriesResponse.pb(),
            {
                "deviceRegistries": [r.to_wire() for r in page.items],
                "nextPageToken": page.next_page_token,
            },
        )

    async def bind(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.devices.bindGateway", request.parent)
        await self.manager.bind(
            parse_registry_name(request.parent, "parent"), request.gateway_id, request.device_id
        )
        return iot.BindDeviceToGatewayResponse.pb()()

    async def unbind(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.devices.unbindGateway", request.parent)
        await self.manager.unbind(
            parse_registry_name(request.parent, "parent"), request.gateway_id, request.device_id
        )
        return iot.UnbindDeviceFromGatewayResponse.pb()()

    # IAM, on registries

    async def get_iam_policy(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.registries.getIamPolicy", request.resource)
        policy = await self.manager.get_iam_policy(
            parse_registry_name(request.resource, "resource")
        )
        return policy_message(policy)

    async def set_iam_policy(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.registries.setIamPolicy", request.resource)
        policy = await self.manager.set_iam_policy(
            parse_registry_name(request.resource, "resource"),
            bindable(model(Policy, request.policy)),
        )
        return policy_message(policy)

    async def test_iam_permissions(self, request: Any, caller: Caller) -> Message:
        granted = await granted_permissions(
            self.manager,
            caller,
            parse_registry_name(request.resource, "resource"),
            request.permissions,
        )
        return iam_policy_pb2.TestIamPermissionsResponse(permissions=granted)

    # Devices

    async def create_device(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.devices.create", request.parent)
        device = await self.manager.create_device(
            parse_registry_name(request.parent, "parent"), model(Device, request.device)
        )
        return message(_Device, device.to_wire())

    async def get_device(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.devices.get", request.name)
        ref = parse_device_name(request.name)
        if not request.field_mask.paths:
            # The whole device, the hottest read: built from its row (rpc.device_message).
            return device_message(ref.registry, await self.manager.device_row(ref))
        device = await self.manager.get_device(ref, mask(request.field_mask))
        return message(_Device, device)

    async def update_device(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.devices.update", request.device.name)
        device = await self.manager.update_device(
            parse_device_name(request.device.name, "device.name"),
            model(Device, request.device),
            mask(request.update_mask),
        )
        return message(_Device, device.to_wire())

    async def delete_device(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.devices.delete", request.name)
        await self.manager.delete_device(parse_device_name(request.name))
        return empty_pb2.Empty()

    async def list_devices(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.devices.list", request.parent)
        options = request.gateway_list_options
        page = await self.manager.list_devices(
            parse_registry_name(request.parent, "parent"),
            device_ids=list(request.device_ids),
            num_ids=[parse_num_id(str(n), "device_num_ids") for n in request.device_num_ids],
            field_mask=mask(request.field_mask),
            gateway_type=_gateway_type(options.gateway_type),
            associations_gateway_id=options.associations_gateway_id or None,
            associations_device_id=options.associations_device_id or None,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return message(
            iot.ListDevicesResponse.pb(),
            {"devices": page.items, "nextPageToken": page.next_page_token},
        )

    async def modify_config(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.devices.updateConfig", request.name)
        config = await self.manager.modify_config(
            parse_device_name(request.name), request.version_to_update, request.binary_data
        )
        return message(iot.DeviceConfig.pb(), config.to_wire())

    async def list_config_versions(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.devices.get", request.name)
        configs = await self.manager.list_config_versions(
            parse_device_name(request.name), request.num_versions
        )
        return message(
            iot.ListDeviceConfigVersionsResponse.pb(),
            {"deviceConfigs": [c.to_wire() for c in configs]},
        )

    async def list_states(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.devices.get", request.name)
        states = await self.manager.list_states(parse_device_name(request.name), request.num_states)
        return message(
            iot.ListDeviceStatesResponse.pb(), {"deviceStates": [s.to_wire() for s in states]}
        )

    async def send_command(self, request: Any, caller: Caller) -> Message:
        require(caller, "cloudiot.devices.sendCommand", request.name)
        await self.manager.send_command(
            parse_device_name(request.name), request.binary_data, request.subfolder
        )
        return iot.SendCommandToDeviceResponse.pb()()


def _gateway_type(value: int) -> GatewayType | None:
    """The enum's number (0: not asked); a number it does not have is refused as REST
    refuses it."""
    try:
        return GatewayType(value) or None
    except ValueError:
        names = ", ".join(GatewayType.__members__)
        raise InvalidArgument.field(
            "gateway_list_options.gateway_type", f"must be one of {names}"
        ) from None
