"""`ironcore service-accounts …`: service accounts and their Google-format key files (owners
only)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer

from ironcore.cli.client import Context, err, fail

app = typer.Typer(help="Service accounts and their JSON key files.", no_args_is_help=True)
keys_app = typer.Typer(help="An account's keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

Project = Annotated[
    str | None, typer.Option("--project", help="The account's project (default: --project)")
]
Name = Annotated[str, typer.Argument(help="The account id (NAME) or its email")]
KEY_FILE_MODE = 0o600


def _path(c: Context, project: str | None, name: str | None = None) -> str:
    path = f"/ironcore/v1/projects/{quote(project or c.project, safe='')}/serviceAccounts"
    return path if name is None else f"{path}/{quote(name, safe='@')}"


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Account id: 6-30 of [a-z0-9-], a letter first")],
    role: Annotated[
        list[str] | None,
        typer.Option("--role", help="roles/cloudiot.viewer, roles/pubsub.subscriber, … (repeat)"),
    ] = None,
    display_name: Annotated[str, typer.Option(help="What the account is for")] = "",
    project: Project = None,
) -> None:
    """Create a service account with Google role names."""
    c: Context = ctx.obj
    body = {"accountId": name, "roles": role or [], "displayName": display_name}
    created = c.call("POST", _path(c, project), body)
    c.show(created, ["email", "roles", "uniqueId"], [created])


@app.command("list")
def list_(ctx: typer.Context, project: Project = None) -> None:
    """List a project's service accounts."""
    c: Context = ctx.obj
    data = c.call("GET", _path(c, project))
    c.show(data, ["email", "roles", "displayName", "createTime"], data.get("accounts", []))


@app.command()
def delete(ctx: typer.Context, name: Name, project: Project = None) -> None:
    """Delete an account and its keys: its credentials stop working within seconds."""
    c: Context = ctx.obj
    c.call("DELETE", _path(c, project, name))
    c.show({"deleted": name}, ["deleted"], [{"deleted": name}])


@keys_app.command("create")
def create_key(
    ctx: typer.Context,
    name: Name,
    out: Annotated[Path, typer.Option("--out", help="Key file to write (mode 0600)")],
    project: Project = None,
) -> None:
    """Create a key and write its JSON key file, which holds the only copy of the private
    key (GOOGLE_APPLICATION_CREDENTIALS=FILE)."""
    c: Context = ctx.obj
    if out.exists():
        fail(f"{out} exists; refusing to overwrite a key file")
    created = c.call("POST", _path(c, project, name) + "/keys")
    key_id = created["name"].rpartition("/")[2]
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except OSError as exc:
        fail(
            f"cannot create {out}: {exc.strerror or exc}; key {key_id} was made but its private "
            "key is lost: delete it with `ironcore service-accounts keys delete`"
        )
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), KEY_FILE_MODE)
        file.write(base64.b64decode(created["privateKeyData"]))
    if c.as_json:
        c.show({"keyId": key_id, "file": str(out)})
        return
    print(key_id)
    err.print(f"Key file written to {out}; it holds the only copy of the private key.")


@keys_app.command("list")
def list_keys(ctx: typer.Context, name: Name, project: Project = None) -> None:
    """List an account's keys (never private data)."""
    c: Context = ctx.obj
    data = c.call("GET", _path(c, project, name) + "/keys")
    rows = [
        {"keyId": k["name"].rpartition("/")[2], "validAfterTime": k["validAfterTime"]}
        for k in data.get("keys", [])
    ]
    c.show(data, ["keyId", "validAfterTime"], rows)


@keys_app.command("delete")
def delete_key(ctx: typer.Context, name: Name, key_id: str, project: Project = None) -> None:
    """Delete a key: JWTs it signed and access tokens issued for it stop working."""
    c: Context = ctx.obj
    c.call("DELETE", f"{_path(c, project, name)}/keys/{quote(key_id, safe='')}")
    c.show({"deleted": key_id}, ["deleted"], [{"deleted": key_id}])
