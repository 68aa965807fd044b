"""Routes for devices, configs, states and commands: thin adapters over DeviceManager.

Every device route also answers under `registries/{r}/groups/{g}/devices`, as the v1 API did.
The bulk config update is ironcore's own (Cloud IoT Core had none), under `/ironcore/v1`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import Field

from ironcore.api.deps import (
    DEVICE,
    DEVICES,
    GROUP_DEVICE,
    GROUP_DEVICES,
    CallerDep,
    Manager,
    allowed,
    device_ref,
    ok,
    registry_name,
)
from ironcore.errors import Code, InvalidArgument
from ironcore.registry.names import parse_num_id
from ironcore.registry.resources import Device, GatewayType
from ironcore.registry.wire import Bytes, Int64, Message, format_timestamp

router = APIRouter()
BULK_CONFIGS = (
    "/ironcore/v1/projects/{project}/locations/{location}/registries/{registry}"
    ":modifyCloudToDeviceConfigs"
)


class ModifyConfigRequest(Message):
    version_to_update: Int64 = 0
    binary_data: Bytes = b""


class ModifyConfigsRequest(Message):
    binary_data: Bytes = b""
    # Exactly one of the three chooses the devices.
    device_ids: list[str] = Field(default_factory=list)
    all_devices: bool = False
    associations_gateway_id: str = ""


class SendCommandRequest(Message):
    binary_data: Bytes = b""
    subfolder: str = ""


@router.post(DEVICES, name="CreateDevice")
@router.post(GROUP_DEVICES, name="CreateDevice", include_in_schema=False)
async def create_device(
    project: str, location: str, registry: str, manager: Manager, caller: CallerDep, body: Device
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.devices.create",
        f"projects/{project}/locations/{location}/registries/{registry}",
    )
    device = await manager.create_device(registry_name(project, location, registry), body)
    return ok(device.to_wire())


@router.get(DEVICES, name="ListDevices")
@router.get(GROUP_DEVICES, name="ListDevices", include_in_schema=False)
async def list_devices(
    project: str,
    location: str,
    registry: str,
    manager: Manager,
    caller: CallerDep,
    device_ids: list[str] = Query([], alias="deviceIds"),
    device_num_ids: list[str] = Query([], alias="deviceNumIds"),
    field_mask: str = Query("", alias="fieldMask"),
    gateway_type: str = Query("", alias="gatewayListOptions.gatewayType"),
    associations_gateway_id: str = Query("", alias="gatewayListOptions.associationsGatewayId"),
    associations_device_id: str = Query("", alias="gatewayListOptions.associationsDeviceId"),
    page_size: int = Query(0, alias="pageSize"),
    page_token: str = Query("", alias="pageToken"),
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.devices.list",
        f"projects/{project}/locations/{location}/registries/{registry}",
    )
    page = await manager.list_devices(
        registry_name(project, location, registry),
        device_ids=device_ids,
        num_ids=[_num_id(n) for n in device_num_ids],
        field_mask=field_mask,
        gateway_type=_gateway_type(gateway_type) if gateway_type else None,
        associations_gateway_id=associations_gateway_id or None,
        associations_device_id=associations_device_id or None,
        page_size=page_size,
        page_token=page_token,
    )
    out: dict[str, Any] = {"devices": page.items}
    if page.next_page_token:
        out["nextPageToken"] = page.next_page_token
    return ok(out)


@router.get(DEVICE, name="GetDevice")
@router.get(GROUP_DEVICE, name="GetDevice", include_in_schema=False)
async def get_device(
    project: str,
    location: str,
    registry: str,
    device: str,
    manager: Manager,
    caller: CallerDep,
    field_mask: str = Query("", alias="fieldMask"),
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.devices.get",
        f"projects/{project}/locations/{location}/registries/{registry}/devices/{device}",
    )
    return ok(await manager.get_device(device_ref(project, location, registry, device), field_mask))


@router.patch(DEVICE, name="UpdateDevice")
@router.patch(GROUP_DEVICE, name="UpdateDevice", include_in_schema=False)
async def update_device(
    project: str,
    location: str,
    registry: str,
    device: str,
    manager: Manager,
    caller: CallerDep,
    body: Device,
    update_mask: str = Query("", alias="updateMask"),
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.devices.update",
        f"projects/{project}/locations/{location}/registries/{registry}/devices/{device}",
    )
    ref = device_ref(project, location, registry, device)
    return ok((await manager.update_device(ref, body, update_mask)).to_wire())


@router.delete(DEVICE, name="DeleteDevice")
@router.delete(GROUP_DEVICE, name="DeleteDevice", include_in_schema=False)
async def delete_device(
    project: str, location: str, registry: str, device: str, manager: Manager, caller: CallerDep
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.devices.delete",
        f"projects/{project}/locations/{location}/registries/{registry}/devices/{device}",
    )
    await manager.delete_device(device_ref(project, location, registry, device))
    return ok()


@router.post(DEVICE + ":modifyCloudToDeviceConfig", name="ModifyCloudToDeviceConfig")
@router.post(
    GROUP_DEVICE + ":modifyCloudToDeviceConfig",
    name="ModifyCloudToDeviceConfig",
    include_in_schema=False,
)
async def modify_config(
    project: str,
    location: str,
    registry: str,
    device: str,
    manager: Manager,
    caller: CallerDep,
    body: ModifyConfigRequest,
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.devices.updateConfig",
        f"projects/{project}/locations/{location}/registries/{registry}/devices/{device}",
    )
    ref = device_ref(project, location, registry, device)
    config = await manager.modify_config(ref, body.version_to_update, body.binary_data)
    return ok(config.to_wire())


@router.post(BULK_CONFIGS, name="ModifyCloudToDeviceConfigs")
async def modify_configs(
    project: str,
    location: str,
    registry: str,
    manager: Manager,
    caller: CallerDep,
    body: ModifyConfigsRequest,
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.devices.updateConfig",
        f"projects/{project}/locations/{location}/registries/{registry}",
    )
    result = await manager.modify_configs(
        registry_name(project, location, registry),
        body.binary_data,
        device_ids=body.device_ids,
        all_devices=body.all_devices,
        gateway_id=body.associations_gateway_id,
    )
    errors = [
        _device_error(device_id, Code.NOT_FOUND, "no such device in the registry")
        for device_id in result.not_found
    ] + [
        _device_error(
            device_id,
            Code.RESOURCE_EXHAUSTED,
            "its config was updated less than a second ago; try again shortly",
        )
        for device_id in result.too_soon
    ]
    return ok(
        {
            "cloudUpdateTime": format_timestamp(result.cloud_update_time),
            "updatedDevices": result.updated,
            "versions": [
                {"version": str(version), "devices": count}
                for version, count in sorted(result.versions.items())
            ],
            "errors": errors,
        }
    )


def _device_error(device_id: str, code: Code, message: str) -> dict[str, Any]:
    return {"deviceId": device_id, "code": int(code), "status": code.name, "message": message}


@router.get(DEVICE + "/configVersions", name="ListDeviceConfigVersions")
@router.get(
    GROUP_DEVICE + "/configVersions", name="ListDeviceConfigVersions", include_in_schema=False
)
async def list_config_versions(
    project: str,
    location: str,
    registry: str,
    device: str,
    manager: Manager,
    caller: CallerDep,
    num_versions: int = Query(0, alias="numVersions"),
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.devices.get",
        f"projects/{project}/locations/{location}/registries/{registry}/devices/{device}",
    )
    ref = device_ref(project, location, registry, device)
    configs = await manager.list_config_versions(ref, num_versions)
    return ok({"deviceConfigs": [c.to_wire() for c in configs]})


@router.get(DEVICE + "/states", name="ListDeviceStates")
@router.get(GROUP_DEVICE + "/states", name="ListDeviceStates", include_in_schema=False)
async def list_states(
    project: str,
    location: str,
    registry: str,
    device: str,
    manager: Manager,
    caller: CallerDep,
    num_states: int = Query(0, alias="numStates"),
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.devices.get",
        f"projects/{project}/locations/{location}/registries/{registry}/devices/{device}",
    )
    ref = device_ref(project, location, registry, device)
    states = await manager.list_states(ref, num_states)
    return ok({"deviceStates": [s.to_wire() for s in states]})


@router.post(DEVICE + ":sendCommandToDevice", name="SendCommandToDevice")
@router.post(
    GROUP_DEVICE + ":sendCommandToDevice", name="SendCommandToDevice", include_in_schema=False
)
async def send_command(
    project: str,
    location: str,
    registry: str,
    device: str,
    manager: Manager,
    caller: CallerDep,
    body: SendCommandRequest,
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.devices.sendCommand",
        f"projects/{project}/locations/{location}/registries/{registry}/devices/{device}",
    )
    ref = device_ref(project, location, registry, device)
    await manager.send_command(ref, body.binary_data, body.subfolder)
    return ok()


def _gateway_type(value: str) -> GatewayType:
    try:
        return GatewayType[value] if not value.isdigit() else GatewayType(int(value))
    except (KeyError, ValueError):
        names = ", ".join(GatewayType.__members__)
        raise InvalidArgument.field(
            "gateway_list_options.gateway_type", f"must be one of {names}"
        ) from None


def _num_id(value: str) -> int:
    return parse_num_id(value, "device_num_ids")
