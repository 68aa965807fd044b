"""`ironcore gateways …`"""

from __future__ import annotations

from typing import Annotated

import typer

from ironcore.cli.client import Context

app = typer.Typer(help="Gateway bindings.", no_args_is_help=True)
Registry = Annotated[str, typer.Option("--registry", "-r", help="Registry id")]
Gateway = Annotated[str, typer.Option("--gateway", help="Gateway device id")]
Device = Annotated[str, typer.Option("--device", help="Device id")]


def _call(ctx: typer.Context, verb: str, registry: str, gateway: str, device: str) -> None:
    c: Context = ctx.obj
    c.call(
        "POST", f"{c.registry_path(registry)}:{verb}", {"gatewayId": gateway, "deviceId": device}
    )
    result = {"gateway": gateway, "device": device, "action": verb}
    c.show(result, ["gateway", "device", "action"], [result])


@app.command()
def bind(ctx: typer.Context, registry: Registry, gateway: Gateway, device: Device) -> None:
    """Bind a device to a gateway."""
    _call(ctx, "bindDeviceToGateway", registry, gateway, device)


@app.command()
def unbind(ctx: typer.Context, registry: Registry, gateway: Gateway, device: Device) -> None:
    """Unbind a device from a gateway."""
    _call(ctx, "unbindDeviceFromGateway", registry, gateway, device)
