"""What every route needs: the device manager, the admin tokens, the caller, and resource
names from the path."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from ironcore.access.roles import Caller, require
from ironcore.access.tokens import AdminTokens
from ironcore.registry.names import DeviceRef, LocationName, RegistryName
from ironcore.registry.service import DeviceManager
from ironcore.registry.store import audit
from ironcore.registry.store.devices import DeviceRecord

REGISTRIES = "/v1/projects/{project}/locations/{location}/registries"
REGISTRY = REGISTRIES + "/{registry}"
DEVICES = REGISTRY + "/devices"
GROUP_DEVICES = REGISTRY + "/groups/{group}/devices"
DEVICE = DEVICES + "/{device}"
GROUP_DEVICE = GROUP_DEVICES + "/{device}"


# Both dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in its thread pool, which cost two thread hand-offs per request.


async def _manager(request: Request) -> DeviceManager:
    manager: DeviceManager = request.app.state.manager
    return manager


async def _caller(request: Request) -> Caller:
    # The authentication middleware has run before routing; see ironcore.api.app.
    caller: Caller = request.scope["state"]["caller"]
    name_method(request)
    return caller


async def _tokens(request: Request) -> AdminTokens:
    tokens: AdminTokens = request.app.state.tokens
    return tokens


# Routes whose writes are the data plane, not changes to audit: Pub/Sub message traffic.
_UNAUDITED = frozenset({"Publish", "Pull", "Acknowledge", "ModifyAckDeadline"})


def name_method(request: Request) -> None:
    """Once routed, the audited call's method is its route's name (`CreateDevice`), and a
    data-plane route's writes are not recorded (api/audit.py)."""
    found = audit.current()
    name = getattr(request.scope.get("route"), "name", "")
    if found is None or not name:
        return
    found.method = name
    if name in _UNAUDITED:
        found.records = False


Manager = Annotated[DeviceManager, Depends(_manager)]
CallerDep = Annotated[Caller, Depends(_caller)]
Tokens = Annotated[AdminTokens, Depends(_tokens)]


def allowed(caller: Caller, permission: str, resource: str) -> None:
    """`access.roles.require`: `resource` is the name the call acts on (`projects/P/...`)."""
    require(caller, permission, resource)


async def permitted_device(
    manager: DeviceManager,
    caller: Caller,
    permission: str,
    project: str,
    location: str,
    registry: str,
    device: str,
) -> DeviceRecord:
    """The device a route acts on, once `caller` holds `permission` on it (checked on the name
    as the path gives it, before it is parsed, as every route checks)."""
    allowed(
        caller,
        permission,
        f"projects/{project}/locations/{location}/registries/{registry}/devices/{device}",
    )
    return await manager.device_record(device_ref(project, location, registry, device))


def location_name(project: str, location: str) -> LocationName:
    return LocationName.parse(project, location)


def registry_name(project: str, location: str, registry: str) -> RegistryName:
    return RegistryName.parse(project, location, registry)


def device_ref(project: str, location: str, registry: str, device: str) -> DeviceRef:
    return DeviceRef.parse(RegistryName.parse(project, location, registry), device)


def ok(body: Any = None) -> JSONResponse:
    return JSONResponse({} if body is None else body)
