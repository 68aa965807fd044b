"""`ironcore audit …`: the audit log (owners only): who changed what, from where."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ironcore.cli.client import Context

app = typer.Typer(help="The audit log.", no_args_is_help=True)
_COLUMNS = ["time", "principal", "clientAddress", "method", "resource", "status"]


@app.command("list")
def list_(
    ctx: typer.Context,
    project: Annotated[
        str | None,
        typer.Option(help="The project (default: the global --project); - for every project"),
    ] = None,
    filter_: Annotated[
        str,
        typer.Option(
            "--filter",
            help="e.g. resource:projects/p/locations/l/registries/r AND status=PERMISSION_DENIED "
            'AND time>="2026-01-01T00:00:00Z" (fields: resource, principal, method, status, '
            "authentication, clientAddress, time)",
        ),
    ] = "",
    limit: Annotated[int, typer.Option(help="At most this many entries; 0: all")] = 100,
) -> None:
    """List entries, newest first, following pages up to --limit."""
    c: Context = ctx.obj
    entries: list[dict[str, Any]] = []
    token = ""
    while True:
        params: dict[str, Any] = {"filter": filter_, "pageToken": token}
        if limit:
            params["pageSize"] = min(limit - len(entries), 1000)
        page = c.call(
            "GET", f"/ironcore/v1/projects/{project or c.project}/auditLogs", params=params
        )
        entries.extend(page.get("auditLogs", []))
        token = page.get("nextPageToken", "")
        if not token or (limit and len(entries) >= limit):
            break
    c.show({"auditLogs": entries}, _COLUMNS, entries)
