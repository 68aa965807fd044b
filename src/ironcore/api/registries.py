"""Routes for registries, bindings and IAM: thin adapters over DeviceManager."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Query
from fastapi.responses import JSONResponse
from pydantic import Field

from ironcore.access.grants import granted_permissions
from ironcore.access.policies import bindable
from ironcore.api.deps import (
    REGISTRIES,
    REGISTRY,
    CallerDep,
    Manager,
    allowed,
    location_name,
    ok,
    registry_name,
)
from ironcore.registry.resources import DeviceRegistry, Policy
from ironcore.registry.wire import Message

router = APIRouter()


class BindRequest(Message):
    gateway_id: str = ""
    device_id: str = ""


class SetIamPolicyRequest(Message):
    policy: Policy = Policy()
    update_mask: str = ""


class GetIamPolicyRequest(Message):
    options: dict[str, Any] = Field(default_factory=dict)


class TestIamPermissionsRequest(Message):
    permissions: list[str] = Field(default_factory=list)


@router.post(REGISTRIES, name="CreateDeviceRegistry")
async def create_registry(
    project: str, location: str, manager: Manager, caller: CallerDep, body: DeviceRegistry
) -> JSONResponse:
    allowed(caller, "cloudiot.registries.create", f"projects/{project}/locations/{location}")
    registry = await manager.create_registry(location_name(project, location), body)
    return ok(registry.to_wire())


@router.get(REGISTRIES, name="ListDeviceRegistries")
async def list_registries(
    project: str,
    location: str,
    manager: Manager,
    caller: CallerDep,
    page_size: int = Query(0, alias="pageSize"),
    page_token: str = Query("", alias="pageToken"),
) -> JSONResponse:
    allowed(caller, "cloudiot.registries.list", f"projects/{project}/locations/{location}")
    page = await manager.list_registries(location_name(project, location), page_size, page_token)
    out: dict[str, Any] = {"deviceRegistries": [r.to_wire() for r in page.items]}
    if page.next_page_token:
        out["nextPageToken"] = page.next_page_token
    return ok(out)


@router.get(REGISTRY, name="GetDeviceRegistry")
async def get_registry(
    project: str, location: str, registry: str, manager: Manager, caller: CallerDep
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.registries.get",
        f"projects/{project}/locations/{location}/registries/{registry}",
    )
    found = await manager.get_registry(registry_name(project, location, registry))
    return ok(found.to_wire())


@router.patch(REGISTRY, name="UpdateDeviceRegistry")
async def update_registry(
    project: str,
    location: str,
    registry: str,
    manager: Manager,
    caller: CallerDep,
    body: DeviceRegistry,
    update_mask: str = Query("", alias="updateMask"),
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.registries.update",
        f"projects/{project}/locations/{location}/registries/{registry}",
    )
    updated = await manager.update_registry(
        registry_name(project, location, registry), body, update_mask
    )
    return ok(updated.to_wire())


@router.delete(REGISTRY, name="DeleteDeviceRegistry")
async def delete_registry(
    project: str, location: str, registry: str, manager: Manager, caller: CallerDep
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.registries.delete",
        f"projects/{project}/locations/{location}/registries/{registry}",
    )
    await manager.delete_registry(registry_name(project, location, registry))
    return ok()


@router.post(REGISTRY + ":bindDeviceToGateway", name="BindDeviceToGateway")
@router.post(REGISTRY + "/groups/{group}:bindDeviceToGateway", include_in_schema=False)
async def bind(
    project: str,
    location: str,
    registry: str,
    manager: Manager,
    caller: CallerDep,
    body: BindRequest,
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.devices.bindGateway",
        f"projects/{project}/locations/{location}/registries/{registry}",
    )
    await manager.bind(registry_name(project, location, registry), body.gateway_id, body.device_id)
    return ok()


@router.post(REGISTRY + ":unbindDeviceFromGateway", name="UnbindDeviceFromGateway")
@router.post(REGISTRY + "/groups/{group}:unbindDeviceFromGateway", include_in_schema=False)
async def unbind(
    project: str,
    location: str,
    registry: str,
    manager: Manager,
    caller: CallerDep,
    body: BindRequest,
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.devices.unbindGateway",
        f"projects/{project}/locations/{location}/registries/{registry}",
    )
    await manager.unbind(
        registry_name(project, location, registry), body.gateway_id, body.device_id
    )
    return ok()


@router.post(REGISTRY + ":getIamPolicy", name="GetIamPolicy")
@router.post(REGISTRY + "/groups/{group}:getIamPolicy", include_in_schema=False)
async def get_iam_policy(
    project: str,
    location: str,
    registry: str,
    manager: Manager,
    caller: CallerDep,
    body: GetIamPolicyRequest = Body(GetIamPolicyRequest()),
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.registries.getIamPolicy",
        f"projects/{project}/locations/{location}/registries/{registry}",
    )
    policy = await manager.get_iam_policy(registry_name(project, location, registry))
    return ok(policy_wire(policy))


@router.post(REGISTRY + ":setIamPolicy", name="SetIamPolicy")
@router.post(REGISTRY + "/groups/{group}:setIamPolicy", include_in_schema=False)
async def set_iam_policy(
    project: str,
    location: str,
    registry: str,
    manager: Manager,
    caller: CallerDep,
    body: SetIamPolicyRequest,
) -> JSONResponse:
    allowed(
        caller,
        "cloudiot.registries.setIamPolicy",
        f"projects/{project}/locations/{location}/registries/{registry}",
    )
    policy = await manager.set_iam_policy(
        registry_name(project, location, registry), bindable(body.policy)
    )
    return ok(policy_wire(policy))


@router.post(REGISTRY + ":testIamPermissions", name="TestIamPermissions")
@router.post(REGISTRY + "/groups/{group}:testIamPermissions", include_in_schema=False)
async def test_iam_permissions(
    project: str,
    location: str,
    registry: str,
    manager: Manager,
    caller: CallerDep,
    body: TestIamPermissionsRequest,
) -> JSONResponse:
    granted = await granted_permissions(
        manager, caller, registry_name(project, location, registry), body.permissions
    )
    return ok({"permissions": granted} if granted else {})


def policy_wire(policy: Policy) -> dict[str, Any]:
    wire = policy.to_wire()
    # Clients compare etags on read-modify-write; an etag is always present.
    wire["etag"] = Policy(etag=policy.etag).to_wire()["etag"]
    return wire
