"""`ironcore tokens …`: admin tokens (owners only)."""

from __future__ import annotations

from typing import Annotated

import typer

from ironcore.cli.client import Context, err

app = typer.Typer(help="Admin API tokens.", no_args_is_help=True)


@app.command()
def create(
    ctx: typer.Context,
    role: Annotated[str, typer.Option(help="viewer, editor or owner")],
    name: Annotated[str, typer.Option(help="What the token is for")] = "",
) -> None:
    """Create a token; it is shown once and only its hash is kept."""
    c: Context = ctx.obj
    created = c.call("POST", "/ironcore/v1/tokens", {"role": role, "name": name})
    if c.as_json:
        c.show(created)
        return
    print(created["token"])
    err.print("Store this token now: it cannot be shown again.")


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List tokens (never their secrets)."""
    c: Context = ctx.obj
    data = c.call("GET", "/ironcore/v1/tokens")
    c.show(data, ["id", "role", "name", "createTime", "revoked"], data.get("tokens", []))


@app.command()
def revoke(ctx: typer.Context, token_id: str) -> None:
    """Revoke a token by its id (the hex after `ic_`)."""
    c: Context = ctx.obj
    c.call("DELETE", f"/ironcore/v1/tokens/{token_id}")
    c.show({"revoked": token_id}, ["revoked"], [{"revoked": token_id}])
