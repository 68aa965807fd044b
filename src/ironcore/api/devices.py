"""Routes for devices, configs, states and commands: thin adapters over DeviceManager.

Every device route also answers under `registries/{r}/groups/{g}/devices`, as the v1 API did.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

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
from ironcore.errors import InvalidArgument
from ironcore.registry.names import parse_num_id
from ironcore.registry.resources import Device, GatewayType
from ironcore.registry.wire import Bytes, Int64, Message

router = APIRouter()


class ModifyConfigRequest(Message):
    version_to_update: Int64 = 0
    binary_data: Bytes = b""


class SendCommandRequest(Message):
    binary_data: Bytes = b""
    subfolder: str = ""


@router.post(DEVICES, name="CreateDevice")
@router.post(GROUP_DEVICES, include_in_schema=False)
async def create_device(
    project: str, location: str, registry: str, manager: Manager, caller: CallerDep, body: Device
) -> JSONResponse:
    allowed(caller, "cloudiot.devices.create")
    device = await manager.create_device(registry_name(project, location, registry), body)
    return ok(device.to_wire())


@router.get(DEVICES, name="ListDevices")
@router.get(GROUP_DEVICES, include_in_schema=False)
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
    allowed(caller, "cloudiot.devices.list")
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
@router.get(GROUP_DEVICE, include_in_schema=False)
async def get_device(
    project: str,
    location: str,
    registry: str,
    device: str,
    manager: Manager,
    caller: CallerDep,
    field_mask: str = Query("", alias="fieldMask"),
) -> JSONResponse:
    allowed(caller, "cloudiot.devices.get")
    return ok(await manager.get_device(device_ref(project, location, registry, device), field_mask))


@router.patch(DEVICE, name="UpdateDevice")
@router.patch(GROUP_DEVICE, include_in_schema=False)
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
    allowed(caller, "cloudiot.devices.update")
    ref = device_ref(project, location, registry, device)
    return ok((await manager.update_device(ref, body, update_mask)).to_wire())


@router.delete(DEVICE, name="DeleteDevice")
@router.delete(GROUP_DEVICE, include_in_schema=False)
async def delete_device(
    project: str, location: str, registry: str, device: str, manager: Manager, caller: CallerDep
) -> JSONResponse:
    allowed(caller, "cloudiot.devices.delete")
    await manager.delete_device(device_ref(project, location, registry, device))
    return ok()


@router.post(DEVICE + ":modifyCloudToDeviceConfig", name="ModifyCloudToDeviceConfig")
@router.post(GROUP_DEVICE + ":modifyCloudToDeviceConfig", include_in_schema=False)
async def modify_config(
    project: str,
    location: str,
    registry: str,
    device: str,
    manager: Manager,
    caller: CallerDep,
    body: ModifyConfigRequest,
) -> JSONResponse:
    allowed(caller, "cloudiot.devices.updateConfig")
    ref = device_ref(project, location, registry, device)
    config = await manager.modify_config(ref, body.version_to_update, body.binary_data)
    return ok(config.to_wire())


@router.get(DEVICE + "/configVersions", name="ListDeviceConfigVersions")
@router.get(GROUP_DEVICE + "/configVersions", include_in_schema=False)
async def list_config_versions(
    project: str,
    location: str,
    registry: str,
    device: str,
    manager: Manager,
    caller: CallerDep,
    num_versions: int = Query(0, alias="numVersions"),
) -> JSONResponse:
    allowed(caller, "cloudiot.devices.get")
    ref = device_ref(project, location, registry, device)
    configs = await manager.list_config_versions(ref, num_versions)
    return ok({"deviceConfigs": [c.to_wire() for c in configs]})


@router.get(DEVICE + "/states", name="ListDeviceStates")
@router.get(GROUP_DEVICE + "/states", include_in_schema=False)
async def list_states(
    project: str,
    location: str,
    registry: str,
    device: str,
    manager: Manager,
    caller: CallerDep,
    num_states: int = Query(0, alias="numStates"),
) -> JSONResponse:
    allowed(caller, "cloudiot.devices.get")
    ref = device_ref(project, location, registry, device)
    states = await manager.list_states(ref, num_states)
    return ok({"deviceStates": [s.to_wire() for s in states]})


@router.post(DEVICE + ":sendCommandToDevice", name="SendCommandToDevice")
@router.post(GROUP_DEVICE + ":sendCommandToDevice", include_in_schema=False)
async def send_command(
    project: str,
    location: str,
    registry: str,
    device: str,
    manager: Manager,
    caller: CallerDep,
    body: SendCommandRequest,
) -> JSONResponse:
    allowed(caller, "cloudiot.devices.sendCommand")
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
