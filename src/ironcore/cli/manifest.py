"""`ironcore manifest import`: send a manifest to the server, print what became of each entry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ironcore.cli.client import Context, fail, read_text
from ironcore.factory.importer import DEFAULT_TEMPLATE

app = typer.Typer(
    help="Secure element manifests (Microchip Trust Platform format).", no_args_is_help=True
)


@app.command("import")
def import_(
    ctx: typer.Context,
    manifest: Path,
    registry: Annotated[str, typer.Option("--registry", "-r", help="Registry id")],
    trust_signer: Annotated[
        list[Path] | None,
        typer.Option(help="Also trust this manifest signer certificate (repeatable)"),
    ] = None,
    trust_root: Annotated[
        list[Path] | None,
        typer.Option(help="Also accept device certificate chains to this root (repeatable)"),
    ] = None,
    device_id_template: Annotated[
        str, typer.Option(help="Device id from {serial} (lowercase) or {SERIAL} (uppercase)")
    ] = DEFAULT_TEMPLATE,
    dry_run: Annotated[bool, typer.Option(help="Verify and report; create nothing")] = False,
) -> None:
    """Import a manifest: one device per entry. Exits 1 if any entry was rejected."""
    c: Context = ctx.obj
    try:
        text = manifest.read_bytes().decode("utf-8")
    except OSError as exc:
        fail(f"cannot read {manifest}: {exc.strerror}")
    except UnicodeDecodeError:
        fail(f"{manifest} is not UTF-8 text, so not a manifest")
    report = c.call(
        "POST",
        f"/ironcore{c.registry_path(registry)}:importManifest",
        {
            "manifest": text,
            "trustSigners": [read_text(p) for p in trust_signer or []],
            "trustRoots": [read_text(p) for p in trust_root or []],
            "deviceIdTemplate": device_id_template,
            "dryRun": dry_run,
        },
    )
    entries = report.get("entries", [])
    c.show(report, ["index", "status", "uniqueId", "deviceId", "reason"], entries)
    if not c.as_json:
        verb = "would import" if dry_run else "imported"
        print(
            f"{verb} {report['imported']}, unchanged {report['unchanged']}, "
            f"rejected {report['rejected']}"
        )
    if report.get("rejected"):
        raise typer.Exit(1)
