"""`ironcore ca …`: the owner's root CA, batch signer CAs and CRL, in a local directory.

These commands work on files (and PKCS#11 tokens) and need no server; `signer revoke
--server` also tells a running ironcore, which then refuses the batch's devices.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization

from ironcore import jose
from ironcore.cli import keys
from ironcore.cli.client import Context, err, fail, out
from ironcore.cli.keys import (
    CA_PASSPHRASE_ENV,
    KeyStoreKind,
    Module,
    Pin,
    TokenLabel,
    read_passphrase,
)
from ironcore.cli.keys import CaPassphraseFile as PassphraseFile
from ironcore.errors import IronCoreError
from ironcore.pki.ca import CaDirectory, KeySpec, ec_public_key, pem
from ironcore.pki.keystore import DEFAULT_PKCS11_MODULE, curve_named
from ironcore.settings import default_data_dir

app = typer.Typer(help="Root and batch signer CAs (local files or PKCS#11).", no_args_is_help=True)
signer_app = typer.Typer(help="Batch signer CAs.", no_args_is_help=True)
app.add_typer(signer_app, name="signer")

Dir = Annotated[
    Path | None,
    typer.Option("--dir", envvar="IRONCORE_PKI_DIR", help="CA directory (default <data-dir>/pki)"),
]


def ca_directory(path: Path | None) -> CaDirectory:
    return CaDirectory(path or default_data_dir() / "pki")


def key_spec(
    kind: str,
    passphrase_file: Path | None,
    module: str,
    token: str,
    pin: str | None,
    confirm: bool = False,
) -> KeySpec:
    passphrase = _passphrase(passphrase_file, confirm) if kind == "file" else None
    return keys.key_spec(kind, passphrase, module, token, pin)


def _passphrase(path: Path | None, confirm: bool) -> bytes:
    return read_passphrase(path, CA_PASSPHRASE_ENV, "CA key passphrase", confirm)


def now() -> datetime:
    return datetime.now(UTC)


@app.command()
def init(
    directory: Dir = None,
    curve: Annotated[str, typer.Option(help="P-256 or P-384")] = "P-256",
    common_name: Annotated[str, typer.Option("--cn", help="Root CA common name")] = "",
    organization: Annotated[str, typer.Option("--org", help="Organization (O=)")] = "ironcore",
    key_store: KeyStoreKind = "file",
    passphrase_file: PassphraseFile = None,
    pkcs11_module: Module = DEFAULT_PKCS11_MODULE,
    token_label: TokenLabel = "",
    pin: Pin = None,
) -> None:
    """Create the root CA (keep its key offline) and the manifest signer it certifies."""
    ca = ca_directory(directory)
    spec = key_spec(key_store, passphrase_file, pkcs11_module, token_label, pin, confirm=True)
    try:
        root = ca.init(
            spec, curve_named(curve), common_name or f"{organization} Root CA", organization, now()
        )
    except IronCoreError as error:
        fail(error.message)
    out.print(f"root CA: {root.subject.rfc4514_string()} in {ca.root_path}")
    out.print(f"manifest signer: {ca.manifest_signer_path} (pass it to --trust-signer)")


@signer_app.command("create")
def signer_create(
    batch: Annotated[str, typer.Option(help="Batch name, e.g. 2026-03-A")],
    directory: Dir = None,
    key_store: KeyStoreKind = "file",
    passphrase_file: PassphraseFile = None,
    pkcs11_module: Module = DEFAULT_PKCS11_MODULE,
    token_label: TokenLabel = "",
    pin: Pin = None,
) -> None:
    """Create a batch signer CA (path length 0), signed by the root."""
    ca = ca_directory(directory)
    spec = key_spec(key_store, passphrase_file, pkcs11_module, token_label, pin)
    try:
        signer = ca.create_signer(batch, spec, spec.open(ca.root_path), now())
    except IronCoreError as error:
        fail(error.message)
    out.print(f"signer CA: {signer.subject.rfc4514_string()} in {ca.signer_path(batch)}")


@signer_app.command("list")
def signer_list(ctx: typer.Context, directory: Dir = None) -> None:
    """List the batch signer CAs and whether they are revoked."""
    ca = ca_directory(directory)
    revoked = {r.batch: r for r in ca.revoked()}
    rows = []
    for batch in ca.signers():
        certificate = ca.signer(batch)
        rows.append(
            {
                "batch": batch,
                "subject": certificate.subject.rfc4514_string(),
                "keyId": jose.key_id(ec_public_key(certificate)).hex(),
                "revoked": revoked[batch].reason if batch in revoked else "",
            }
        )
    c: Context = ctx.obj
    c.show({"signers": rows}, ["batch", "subject", "keyId", "revoked"], rows)


@signer_app.command("revoke")
def signer_revoke(
    ctx: typer.Context,
    batch: Annotated[str, typer.Option(help="The batch whose signer CA is revoked")],
    reason: Annotated[
        str, typer.Option(help="keyCompromise, superseded, cessationOfOperation, … or free text")
    ] = "unspecified",
    server: Annotated[
        str | None, typer.Option("--server", help="Also revoke it on this ironcore server")
    ] = None,
    directory: Dir = None,
    key_store: KeyStoreKind = "file",
    passphrase_file: PassphraseFile = None,
    pkcs11_module: Module = DEFAULT_PKCS11_MODULE,
    token_label: TokenLabel = "",
    pin: Pin = None,
) -> None:
    """Revoke a batch signer: add it to the CRL, and with --server refuse its devices now."""
    ca = ca_directory(directory)
    spec = key_spec(key_store, passphrase_file, pkcs11_module, token_label, pin)
    try:
        signer = ca.revoke_signer(batch, reason, spec.open(ca.root_path), now())
    except IronCoreError as error:
        fail(error.message)
    signer_id = jose.key_id(ec_public_key(signer)).hex()
    out.print(f"revoked {signer.subject.rfc4514_string()} (key id {signer_id}) in the CRL")
    if server:
        c: Context = ctx.obj
        remote = Context(server, c.token, c.project, c.location, c.as_json, c.verify)
        answer = remote.call(
            "POST", "/ironcore/v1/revocations", {"certificate": pem(signer), "reason": reason}
        )
        state = "was already revoked" if answer.get("alreadyRevoked") else "revoked"
        out.print(f"{server}: {state}; its devices are refused and disconnected")


@app.command()
def crl(
    directory: Dir = None,
    output: Annotated[
        Path | None, typer.Option("--out", help="Write here (default stdout)")
    ] = None,
    key_store: KeyStoreKind = "file",
    passphrase_file: PassphraseFile = None,
    pkcs11_module: Module = DEFAULT_PKCS11_MODULE,
    token_label: TokenLabel = "",
    pin: Pin = None,
) -> None:
    """Sign a fresh CRL of the revoked signers with the root key and export it (PEM)."""
    ca = ca_directory(directory)
    spec = key_spec(key_store, passphrase_file, pkcs11_module, token_label, pin)
    try:
        revocation_list = ca.write_crl(spec.open(ca.root_path), now())
    except IronCoreError as error:
        fail(error.message)
    text = revocation_list.public_bytes(serialization.Encoding.PEM).decode()
    if output is None:
        print(text, end="")
    else:
        output.write_text(text)
        err.print(f"CRL with {len(revocation_list)} revoked signer(s) written to {output}")
