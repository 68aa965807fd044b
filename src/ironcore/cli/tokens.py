"""`ironcore tokens …`: admin tokens (owners only)."""

from __future__ import annotations

from typing import Annotated

import typer

from ironcore.access.tokens import parse_duration
from ironcore.cli.client import Context, err, fail

app = typer.Typer(help="Admin API tokens.", no_args_is_help=True)
COLUMNS = ["id", "principal", "role", "name", "createTime", "expireTime", "lastUseTime", "revoked"]


def _shown_once(c: Context, created: dict[str, object]) -> None:
    if c.as_json:
        c.show(created)
        return
    print(created["token"])
    err.print("Store this token now: it cannot be shown again.")


@app.command()
def create(
    ctx: typer.Context,
    role: Annotated[
        str,
        typer.Option(
            help="viewer, editor or owner (on every project), or none: only what IAM "
            "bindings grant the token's principal"
        ),
    ],
    name: Annotated[str, typer.Option(help="What the token is for")] = "",
    user: Annotated[
        str,
        typer.Option(
            help="The person it is for (an email address): the token acts as user:EMAIL, "
            "and bindings naming that user grant to every token of theirs"
        ),
    ] = "",
    expires_in: Annotated[
        str | None,
        typer.Option(help="Lifetime: whole numbers with units s, m, h, d, w (90m, 30d, 1d12h)"),
    ] = None,
    expires_at: Annotated[
        str | None, typer.Option(help="Expiry time, RFC 3339 (2027-01-31T00:00:00Z)")
    ] = None,
) -> None:
    """Create a token; it is shown once and only its hash is kept. Without --expires-in or
    --expires-at it never expires; without --user it acts as adminToken:ID."""
    c: Context = ctx.obj
    body: dict[str, object] = {"role": role, "name": name}
    if user:
        body["user"] = user
    if expires_in is not None and expires_at is not None:
        fail("give --expires-in or --expires-at, not both")
    if expires_in is not None:
        try:
            seconds = parse_duration(expires_in).total_seconds()
        except ValueError as error:
            fail(f"--expires-in: {error}")
        body["ttl"] = f"{seconds:.0f}s"
    if expires_at is not None:
        body["expireTime"] = expires_at
    _shown_once(c, c.call("POST", "/ironcore/v1/tokens", body))


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List tokens with their expiry and last use (never their secrets). The last use is
    written behind, so it may lag by up to a minute."""
    c: Context = ctx.obj
    data = c.call("GET", "/ironcore/v1/tokens")
    c.show(data, COLUMNS, data.get("tokens", []))


@app.command()
def rotate(ctx: typer.Context, token_id: str) -> None:
    """Give a token a new secret, shown once; its id, principal, role, name and expiry stay,
    and the old secret stops working on every server before this returns."""
    c: Context = ctx.obj
    _shown_once(c, c.call("POST", f"/ironcore/v1/tokens/{token_id}:rotate"))


@app.command()
def revoke(ctx: typer.Context, token_id: str) -> None:
    """Revoke a token by its id (the hex after `ic_`); it stops working on every server
    before this returns."""
    c: Context = ctx.obj
    c.call("DELETE", f"/ironcore/v1/tokens/{token_id}")
    c.show({"revoked": token_id}, ["revoked"], [{"revoked": token_id}])
