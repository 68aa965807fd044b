"""`ironcore firmware …`: the firmware signing key, signed manifests, checking them, and
rollouts.

keygen, sign and verify work on local files (and PKCS#11 tokens) and need no server; upload,
rollout and status talk to one. The format is in
docs/firmware.md; devices check the same rules in `ironcore.device.secure_boot`.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ironcore.cli.client import Context, fail, out, read_text
from ironcore.cli.keys import (
    FIRMWARE_PASSPHRASE_ENV,
    KeyStoreKind,
    Module,
    Pin,
    TokenLabel,
    key_spec,
    read_passphrase,
    read_pin,
)
from ironcore.cli.keys import FirmwarePassphraseFile as PassphraseFile
from ironcore.errors import IronCoreError
from ironcore.firmware.signing import sign
from ironcore.formats.firmware import (
    FirmwareRejected,
    Image,
    Manifest,
    ManifestError,
    check,
    kid,
    software_verifier,
)
from ironcore.pki.keystore import DEFAULT_PKCS11_MODULE, KeyRef, KeyStore

app = typer.Typer(help="Sign firmware, check manifests, roll images out.", no_args_is_help=True)


def _passphrase(path: Path | None, confirm: bool) -> bytes:
    return read_passphrase(path, FIRMWARE_PASSPHRASE_ENV, "Firmware key passphrase", confirm)


def _paths(key: Path) -> tuple[Path, Path, Path]:
    """The encrypted key file, its key reference and the public key PEM of `--key KEY`."""
    return key.with_suffix(".key"), key.with_suffix(".keyref.json"), key.with_suffix(".pub.pem")


@app.command()
def keygen(
    output: Annotated[
        Path, typer.Option("--out", help="Key file to create, e.g. release.key (see docs)")
    ],
    key_store: KeyStoreKind = "file",
    passphrase_file: PassphraseFile = None,
    pkcs11_module: Module = DEFAULT_PKCS11_MODULE,
    token_label: TokenLabel = "",
    pin: Pin = None,
) -> None:
    """Create the firmware signing key (ECDSA P-256) and export its public key."""
    key_file, ref_file, public_file = _paths(output)
    for path in (key_file, ref_file, public_file):
        if path.exists():
            fail(f"{path} exists; refusing to overwrite a key")
    passphrase = _passphrase(passphrase_file, confirm=True) if key_store == "file" else None
    spec = key_spec(key_store, passphrase, pkcs11_module, token_label, pin)
    try:
        key = spec.create(key_file, ec.SECP256R1())
    except IronCoreError as error:
        fail(error.message)
    public = key.public_key()
    public_file.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    where = key_file if key_store == "file" else f"PKCS#11 token {token_label!r}"
    out.print(f"firmware key {kid(public)} in {where}; reference {ref_file}")
    out.print(f"public key: {public_file} (provision it into slot 15 of each device)")


def _open_key(key: Path, passphrase_file: Path | None, pin: str | None) -> KeyStore:
    key_file, ref_file, _ = _paths(key)
    ref = KeyRef.load(ref_file) if ref_file.exists() else KeyRef("file", path=key_file.name)
    if ref.kind == "file":
        return ref.open(key_file.parent, _passphrase(passphrase_file, confirm=False), None)
    return ref.open(key_file.parent, None, read_pin(pin))


@app.command("sign")
def sign_image(
    image: Annotated[Path, typer.Argument(help="The firmware image")],
    key: Annotated[Path, typer.Option(help="The key made by `keygen --out`")],
    model: Annotated[str, typer.Option(help="Device model the image is for")],
    version: Annotated[int, typer.Option(help="Image version: an integer, 1, 2, 3, …")],
    output: Annotated[Path, typer.Option("--out", help="Manifest to write")],
    min_version: Annotated[
        int | None,
        typer.Option(help="Lowest version a device may boot after this one (default: version)"),
    ] = None,
    passphrase_file: PassphraseFile = None,
    pin: Pin = None,
) -> None:
    """Write the signed manifest of an image."""
    try:
        measured = Image.of_file(image)
    except OSError as exc:
        fail(f"cannot read {image}: {exc.strerror}")
    try:
        manifest = Manifest(
            model,
            version,
            measured.size,
            measured.sha256,
            version if min_version is None else min_version,
        )
        signed = sign(_open_key(key, passphrase_file, pin), manifest)
    except IronCoreError as error:
        fail(error.message)
    output.write_bytes(signed.encode())
    out.print(
        f"signed {model} version {version} (min version {manifest.min_version}, "
        f"{manifest.size} bytes) with key {signed.kid}: {output}"
    )


@app.command()
def verify(
    image: Annotated[Path, typer.Argument(help="The firmware image")],
    manifest: Annotated[Path, typer.Argument(help="Its signed manifest")],
    public_key: Annotated[Path, typer.Option(help="Firmware public key (PEM)")],
    model: Annotated[str | None, typer.Option(help="Also require this model")] = None,
) -> None:
    """Check an image against its manifest as a device would; exit 1 saying why not."""
    try:
        trusted = serialization.load_pem_public_key(read_text(public_key).encode())
    except ValueError:
        fail(f"{public_key} is not a PEM public key")
    if not isinstance(trusted, ec.EllipticCurvePublicKey):
        fail(f"{public_key} is not an EC public key")
    try:
        document = manifest.read_bytes()
        measured = Image.of_file(image)
    except OSError as exc:
        fail(f"cannot read {exc.filename}: {exc.strerror}")
    try:
        signed = check(document, measured, software_verifier(trusted), kid(trusted), model, floor=0)
    except (ManifestError, FirmwareRejected) as refused:
        fail(f"{refused.reason}: {refused.message}")
    except IronCoreError as error:
        fail(error.message)
    claims = signed.manifest
    out.print(
        f"OK: {claims.model} version {claims.version} (min version {claims.min_version}), "
        f"{claims.size} bytes, sha256 {claims.sha256.hex()}, key {signed.kid}"
    )


Registry = Annotated[str, typer.Option("--registry", "-r", help="Registry id")]


@app.command()
def upload(
    ctx: typer.Context,
    image: Annotated[Path, typer.Argument(help="The firmware image")],
    manifest: Annotated[Path, typer.Argument(help="Its signed manifest")],
    public_key: Annotated[
        Path | None, typer.Option(help="Firmware public key (PEM): check the signature too")
    ] = None,
) -> None:
    """Upload a signed image to the server, which checks it and stores it durably."""
    c: Context = ctx.obj
    try:
        data, document = image.read_bytes(), manifest.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {getattr(exc, 'filename', manifest)}: {exc}")
    body = {"image": base64.b64encode(data).decode(), "manifest": document}
    if public_key is not None:
        body["publicKey"] = read_text(public_key)
    result = c.call("POST", f"/ironcore/v1/projects/{c.project}/firmware", body)
    c.show(result, IMAGE_COLUMNS, [result])


IMAGE_COLUMNS = ["sha256", "model", "version", "size"]
ROLLOUT_COLUMNS = ["id", "state", "stage", "stagePercent", "inStage", "failed", "reason"]


@app.command()
def rollout(
    ctx: typer.Context,
    registry: Registry,
    image: Annotated[str, typer.Option(help="SHA-256 of an uploaded image")] = "",
    model: Annotated[str, typer.Option(help="With --version, instead of --image")] = "",
    version: Annotated[int | None, typer.Option(help="With --model, instead of --image")] = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", help="Only these devices (repeatable)")
    ] = None,
    stages: Annotated[str, typer.Option(help="Stage percentages")] = "1,10,100",
    threshold: Annotated[float, typer.Option(help="Halt above this failure rate")] = 0.2,
    min_stage_size: Annotated[int, typer.Option(help="Devices in a stage at least")] = 1,
) -> None:
    """Start a staged rollout of an uploaded image to a registry (or some of its devices)."""
    c: Context = ctx.obj
    try:
        percents = [float(p) for p in stages.split(",")]
    except ValueError:
        fail(f"--stages {stages!r}: expected percentages like 1,10,100")
    body: dict[str, Any] = {
        "sha256": image,
        "model": model,
        "version": version,
        "stages": percents,
        "failureThreshold": threshold,
        "minStageSize": min_stage_size,
        "deviceIds": device or None,
    }
    result = c.call("POST", f"/ironcore{c.registry_path(registry)}/rollouts", body)
    c.show(result, ROLLOUT_COLUMNS, [_rollout_row(result)])


@app.command()
def status(
    ctx: typer.Context,
    registry: Registry,
    rollout_id: Annotated[str | None, typer.Option("--rollout", help="One rollout")] = None,
) -> None:
    """Rollouts of a registry, how many devices run each version, and the failures."""
    c: Context = ctx.obj
    path = f"/ironcore{c.registry_path(registry)}/rollouts"
    if rollout_id is not None:
        result = c.call("GET", f"{path}/{rollout_id}")
        rollouts, versions = [result], result["versions"]
    else:
        result = c.call("GET", path)
        rollouts, versions = result["rollouts"], result["versions"]
    if c.as_json:
        c.show(result)
        return
    c.show(result, ROLLOUT_COLUMNS, [_rollout_row(r) for r in rollouts])
    c.show(
        versions,
        ["version", "devices"],
        [{"version": v, "devices": n} for v, n in versions.items()],
    )
    failures = [f for r in rollouts for f in r["failures"]]
    if failures:
        c.show(failures, ["deviceId", "reason", "message"], failures)


def _rollout_row(rollout: dict[str, Any]) -> dict[str, Any]:
    return {**rollout, **rollout["devices"]}
