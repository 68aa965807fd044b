"""`ironcore devices …`"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Any

import typer

from ironcore.cli.client import Context, fail, payload_text, read_text

app = typer.Typer(help="Devices, their configs and states.", no_args_is_help=True)
config_app = typer.Typer(help="Device configuration (cloud to device).", no_args_is_help=True)
app.add_typer(config_app, name="config")
COLUMNS = ["id", "numId", "blocked", "gateway", "credentials", "configVersion", "lastEventTime"]
FULL_MASK = "id,numId,blocked,gatewayConfig,credentials,config,lastEventTime"

Registry = Annotated[str, typer.Option("--registry", "-r", help="Registry id")]
KeyFile = Annotated[
    list[Path] | None, typer.Option("--key-file", help="Public key or certificate PEM (repeatable)")
]
KeyFormat = Annotated[str, typer.Option(help="RSA_PEM, RSA_X509_PEM, ES256_PEM or ES256_X509_PEM")]
Metadata = Annotated[list[str] | None, typer.Option("--metadata", help="KEY=VALUE (repeatable)")]


def _row(device: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": device.get("id"),
        "numId": device.get("numId"),
        "blocked": device.get("blocked", False),
        "gateway": device.get("gatewayConfig", {}).get("gatewayType") == "GATEWAY",
        "credentials": len(device.get("credentials", [])),
        "configVersion": device.get("config", {}).get("version", ""),
        "lastEventTime": device.get("lastEventTime", ""),
    }


def _credentials(key_file: list[Path], key_format: str) -> list[dict[str, Any]]:
    out = []
    for path in key_file:
        out.append({"publicKey": {"format": key_format, "key": read_text(path)}})
    return out


def _metadata(pairs: list[str]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(f"--metadata {pair!r}: expected KEY=VALUE")
        metadata[key] = value
    return metadata


@app.command()
def create(
    ctx: typer.Context,
    device_id: str,
    registry: Registry,
    key_file: KeyFile = None,
    key_format: KeyFormat = "ES256_PEM",
    metadata: Metadata = None,
    gateway: Annotated[bool, typer.Option(help="Make the device a gateway")] = False,
    auth_method: Annotated[
        str,
        typer.Option(
            help="Gateway auth method: ASSOCIATION_ONLY, DEVICE_AUTH_TOKEN_ONLY or "
            "ASSOCIATION_AND_DEVICE_AUTH_TOKEN"
        ),
    ] = "",
    blocked: Annotated[bool, typer.Option(help="Create the device blocked")] = False,
) -> None:
    """Create a device."""
    c: Context = ctx.obj
    body: dict[str, Any] = {"id": device_id, "blocked": blocked}
    if key_file:
        body["credentials"] = _credentials(key_file, key_format)
    if metadata:
        body["metadata"] = _metadata(metadata)
    if gateway or auth_method:
        body["gatewayConfig"] = {
            "gatewayType": "GATEWAY" if gateway else "NON_GATEWAY",
            **({"gatewayAuthMethod": auth_method} if auth_method else {}),
        }
    device = c.call("POST", f"{c.registry_path(registry)}/devices", body)
    c.show(device, COLUMNS, [_row(device)])


@app.command("list")
def list_(
    ctx: typer.Context,
    registry: Registry,
    gateway_id: Annotated[str, typer.Option(help="Only devices bound to this gateway")] = "",
) -> None:
    """List the devices of a registry."""
    c: Context = ctx.obj
    devices: list[dict[str, Any]] = []
    token = ""
    while True:
        params = {"fieldMask": FULL_MASK, "pageToken": token}
        if gateway_id:
            params["gatewayListOptions.associationsGatewayId"] = gateway_id
        page = c.call("GET", f"{c.registry_path(registry)}/devices", params=params)
        devices += page.get("devices", [])
        token = page.get("nextPageToken", "")
        if not token:
            break
    c.show({"devices": devices}, COLUMNS, [_row(d) for d in devices])


@app.command()
def get(ctx: typer.Context, device_id: str, registry: Registry) -> None:
    """Show a device."""
    c: Context = ctx.obj
    c.show(c.call("GET", c.device_path(registry, device_id)))


def _patch(
    c: Context, registry: str, device_id: str, body: dict[str, Any], mask: list[str]
) -> None:
    device = c.call(
        "PATCH", c.device_path(registry, device_id), body, {"updateMask": ",".join(mask)}
    )
    c.show(device, COLUMNS, [_row(device)])


@app.command()
def patch(
    ctx: typer.Context,
    device_id: str,
    registry: Registry,
    key_file: KeyFile = None,
    key_format: KeyFormat = "ES256_PEM",
    metadata: Metadata = None,
    log_level: Annotated[str, typer.Option(help="NONE, ERROR, INFO or DEBUG")] = "",
) -> None:
    """Replace a device's credentials, metadata or log level."""
    body: dict[str, Any] = {}
    if key_file is not None:
        body["credentials"] = _credentials(key_file, key_format)
    if metadata is not None:
        body["metadata"] = _metadata(metadata)
    if log_level:
        body["logLevel"] = log_level
    if not body:
        fail("nothing to change: give --key-file, --metadata or --log-level")
    _patch(ctx.obj, registry, device_id, body, list(body))


@app.command()
def block(ctx: typer.Context, device_id: str, registry: Registry) -> None:
    """Block a device: it can no longer connect."""
    _patch(ctx.obj, registry, device_id, {"blocked": True}, ["blocked"])


@app.command()
def unblock(ctx: typer.Context, device_id: str, registry: Registry) -> None:
    """Unblock a device."""
    _patch(ctx.obj, registry, device_id, {"blocked": False}, ["blocked"])


@app.command()
def delete(ctx: typer.Context, device_id: str, registry: Registry) -> None:
    """Delete a device."""
    c: Context = ctx.obj
    c.call("DELETE", c.device_path(registry, device_id))
    c.show({"deleted": device_id}, ["deleted"], [{"deleted": device_id}])


@app.command()
def states(
    ctx: typer.Context,
    device_id: str,
    registry: Registry,
    num_states: Annotated[int, typer.Option(help="How many (0: all kept)")] = 0,
) -> None:
    """List the last states a device reported, newest first."""
    c: Context = ctx.obj
    data = c.call(
        "GET", f"{c.device_path(registry, device_id)}/states", params={"numStates": num_states}
    )
    rows = [
        {"updateTime": s.get("updateTime"), "data": payload_text(s.get("binaryData", ""))}
        for s in data.get("deviceStates", [])
    ]
    c.show(data, ["updateTime", "data"], rows)


@config_app.command("set")
def config_set(
    ctx: typer.Context,
    registry: Registry,
    device_ids: Annotated[
        list[str] | None, typer.Argument(help="Device id(s); several make one bulk update")
    ] = None,
    data: Annotated[str | None, typer.Option(help="Config payload as text")] = None,
    file: Annotated[Path | None, typer.Option(help="Config payload from a file")] = None,
    version_to_update: Annotated[
        int, typer.Option(help="Only if this is the current version (0: unconditional)")
    ] = 0,
    all_devices: Annotated[
        bool, typer.Option("--all", help="Every device of the registry, in one bulk update")
    ] = False,
    gateway: Annotated[
        str, typer.Option(help="Every device bound to this gateway, in one bulk update")
    ] = "",
) -> None:
    """Push a new config version to a device, to several, to those bound to a gateway, or to
    every device of the registry (one transaction; see docs/api.md, bulk config updates)."""
    c: Context = ctx.obj
    if (data is None) == (file is None):
        fail("give exactly one of --data or --file")
    ids = device_ids or []
    if sum((bool(ids), all_devices, bool(gateway))) != 1:
        fail("name the devices with exactly one of: device id(s), --all or --gateway")
    payload = data.encode() if data is not None else _read_bytes(file)
    body: dict[str, Any] = {"binaryData": base64.b64encode(payload).decode()}
    if len(ids) == 1:
        if version_to_update:
            body["versionToUpdate"] = str(version_to_update)
        path = f"{c.device_path(registry, ids[0])}:modifyCloudToDeviceConfig"
        config = c.call("POST", path, body)
        c.show(config, ["version", "cloudUpdateTime"], [config])
        return
    if version_to_update:
        fail("--version-to-update applies to one device; a bulk update takes each one's next")
    if ids:
        body["deviceIds"] = ids
    elif all_devices:
        body["allDevices"] = True
    else:
        body["associationsGatewayId"] = gateway
    path = c.registry_path(registry).replace("/v1/", "/ironcore/v1/", 1)
    result = c.call("POST", f"{path}:modifyCloudToDeviceConfigs", body)
    rows = [
        {"version": v["version"], "devices": v["devices"], "status": "OK"}
        for v in result["versions"]
    ]
    rows += [
        {"devices": e["deviceId"], "status": f"{e['status']}: {e['message']}"}
        for e in result["errors"]
    ]
    c.show(result, ["version", "devices", "status"], rows)
    if result["errors"]:
        fail(f"{len(result['errors'])} device(s) were not updated; see the list above")


@config_app.command("versions")
def config_versions(
    ctx: typer.Context,
    device_id: str,
    registry: Registry,
    num_versions: Annotated[int, typer.Option(help="How many (0: all kept)")] = 0,
) -> None:
    """List the config versions kept for a device, newest first."""
    c: Context = ctx.obj
    data = c.call(
        "GET",
        f"{c.device_path(registry, device_id)}/configVersions",
        params={"numVersions": num_versions},
    )
    rows = [
        {
            "version": v.get("version"),
            "cloudUpdateTime": v.get("cloudUpdateTime"),
            "deviceAckTime": v.get("deviceAckTime", ""),
            "data": payload_text(v.get("binaryData", "")),
        }
        for v in data.get("deviceConfigs", [])
    ]
    c.show(data, ["version", "cloudUpdateTime", "deviceAckTime", "data"], rows)


def _read_bytes(path: Path | None) -> bytes:
    assert path is not None
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")


@app.command("rotate-key")
def rotate_key(
    ctx: typer.Context,
    device_id: str,
    registry: Registry,
    grace: Annotated[
        int, typer.Option(help="Seconds the old key stays valid after the new one is in use")
    ] = 86400,
    status: Annotated[
        bool, typer.Option("--status", help="Show the rotation, change nothing")
    ] = False,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Abandon an unfinished rotation")
    ] = False,
) -> None:
    """Rotate a device's key inside its secure element (see docs/rotation.md)."""
    c: Context = ctx.obj
    path = c.device_path(registry, device_id).replace("/v1/", "/ironcore/v1/", 1)
    if status and rollback:
        fail("give --status or --rollback, not both")
    if status:
        rotation = c.call("GET", f"{path}/keyRotation")
    elif rollback:
        rotation = c.call("POST", f"{path}:rollbackKeyRotation", {})
    else:
        rotation = c.call("POST", f"{path}:rotateKey", {"graceSeconds": grace})
    columns = ["id", "state", "graceSeconds", "startTime", "updateTime", "reason"]
    c.show(rotation, columns, [rotation] if rotation else [])


@app.command()
def provenance(ctx: typer.Context, device_id: str, registry: Registry) -> None:
    """Where each of a device's credentials came from, and whether a revoked signer cuts it
    off (see docs/revocation.md)."""
    c: Context = ctx.obj
    path = c.device_path(registry, device_id).replace("/v1/", "/ironcore/v1/", 1)
    _show_provenance(c, c.call("GET", f"{path}/credentialProvenance"))


@app.command()
def reattest(ctx: typer.Context, device_id: str, registry: Registry) -> None:
    """Vouch for a device whose credentials descend from a revoked signer: its current
    credentials are attested by you, now, and accepted again (owner role)."""
    c: Context = ctx.obj
    path = c.device_path(registry, device_id).replace("/v1/", "/ironcore/v1/", 1)
    _show_provenance(c, c.call("POST", f"{path}:reattest", {}))


def _show_provenance(c: Context, data: dict[str, Any]) -> None:
    rows = [
        {
            **row,
            "fingerprint": row["fingerprint"][:16],
            "rotatedFrom": row.get("rotatedFrom", "")[:16],
            "revoked": "revokedSigner" in row,
        }
        for row in data.get("credentials", [])
    ]
    columns = ["fingerprint", "format", "origin", "rotatedFrom", "attestedBy", "revoked"]
    c.show(data, columns, rows)


@app.command()
def command(
    ctx: typer.Context,
    device_id: str,
    registry: Registry,
    data: Annotated[str, typer.Option(help="Command payload as text")],
    subfolder: Annotated[
        str, typer.Option(help="Delivered to /devices/ID/commands/SUBFOLDER")
    ] = "",
) -> None:
    """Send a command to a connected device (not stored: it must be connected and subscribed)."""
    c: Context = ctx.obj
    body: dict[str, Any] = {"binaryData": base64.b64encode(data.encode()).decode()}
    if subfolder:
        body["subfolder"] = subfolder
    c.call("POST", f"{c.device_path(registry, device_id)}:sendCommandToDevice", body)
    sent = {"device": device_id, "sent": len(data), "subfolder": subfolder}
    c.show(sent, ["device", "sent", "subfolder"], [sent])
