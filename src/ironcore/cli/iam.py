"""`ironcore iam …`: the IAM policy of the project (the global `--project`) or, with
`--registry`, of one registry; bindings inherit downward (docs/access.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from ironcore.cli.client import Context, fail

app = typer.Typer(help="IAM policies: who may do what, on a project or a registry.")

Registry = Annotated[
    str | None, typer.Option("--registry", help="A registry's policy instead of the project's")
]
Role = Annotated[str, typer.Option("--role", help="roles/cloudiot.deviceController, …")]
Member = Annotated[
    str,
    typer.Option(
        "--member",
        help="user:EMAIL (the tokens created with --user EMAIL), serviceAccount:EMAIL, "
        "adminToken:ID (group:… grants nothing)",
    ),
]


def _path(c: Context, registry: str | None) -> str:
    if registry is not None:
        return c.registry_path(registry)
    return f"/ironcore/v1/projects/{quote(c.project, safe='')}"


def _show(c: Context, policy: dict[str, Any]) -> None:
    rows = [
        {"role": b["role"], "members": ", ".join(b.get("members", []))}
        for b in policy.get("bindings", [])
    ]
    c.show(policy, ["role", "members"], rows)


@app.command("get-policy")
def get_policy(ctx: typer.Context, registry: Registry = None) -> None:
    """Show the policy's bindings."""
    c: Context = ctx.obj
    _show(c, c.call("POST", _path(c, registry) + ":getIamPolicy", {}))


@app.command("set-policy")
def set_policy(
    ctx: typer.Context,
    policy_file: Annotated[Path, typer.Argument(help="A JSON Policy ({bindings, etag})")],
    registry: Registry = None,
) -> None:
    """Replace the policy with one from a file (with its etag, only if unchanged since)."""
    c: Context = ctx.obj
    try:
        policy = json.loads(policy_file.read_text())
    except (OSError, ValueError) as error:
        fail(f"cannot read a JSON policy from {policy_file}: {error}")
    _show(c, c.call("POST", _path(c, registry) + ":setIamPolicy", {"policy": policy}))


def _change(c: Context, registry: str | None, role: str, member: str, add: bool) -> None:
    """Read the policy, change one binding, write it back with the etag read (the server
    refuses the write with ABORTED if someone changed the policy in between)."""
    path = _path(c, registry)
    policy = c.call("POST", path + ":getIamPolicy", {})
    bindings: list[dict[str, Any]] = policy.setdefault("bindings", [])
    binding = next((b for b in bindings if b["role"] == role), None)
    if add:
        if binding is None:
            bindings.append({"role": role, "members": [member]})
        elif member not in binding["members"]:
            binding["members"].append(member)
    else:
        if binding is None or member not in binding["members"]:
            fail(f"{member} has no binding to {role} there")
        binding["members"].remove(member)
        if not binding["members"]:
            bindings.remove(binding)
    _show(c, c.call("POST", path + ":setIamPolicy", {"policy": policy}))


@app.command("add-binding")
def add_binding(ctx: typer.Context, role: Role, member: Member, registry: Registry = None) -> None:
    """Grant ROLE to MEMBER on the project (or --registry)."""
    _change(ctx.obj, registry, role, member, add=True)


@app.command("remove-binding")
def remove_binding(
    ctx: typer.Context, role: Role, member: Member, registry: Registry = None
) -> None:
    """Take ROLE from MEMBER on the project (or --registry)."""
    _change(ctx.obj, registry, role, member, add=False)


@app.command("test-permissions")
def test_permissions(
    ctx: typer.Context,
    permission: Annotated[list[str], typer.Argument(help="cloudiot.devices.updateConfig, …")],
    registry: Registry = None,
) -> None:
    """Which of these permissions the caller holds on the project (or --registry)."""
    c: Context = ctx.obj
    held = c.call(
        "POST", _path(c, registry) + ":testIamPermissions", {"permissions": permission}
    ).get("permissions", [])
    c.show(
        {"permissions": held},
        ["permission", "held"],
        [{"permission": p, "held": "yes" if p in held else "no"} for p in permission],
    )
