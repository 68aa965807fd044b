"""`ironcore factory …`: make reels of emulated secure elements, locally."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ironcore.cli.ca import (
    Dir,
    ca_directory,
    key_spec,
    now,
)
from ironcore.cli.client import fail, out
from ironcore.cli.keys import CaPassphraseFile as PassphraseFile
from ironcore.cli.keys import KeyStoreKind, Module, Pin, TokenLabel
from ironcore.device.secure_element import SecureElementError
from ironcore.errors import IronCoreError
from ironcore.factory.reel import Pkcs11Options, make_reel
from ironcore.pki.keystore import DEFAULT_PKCS11_MODULE

app = typer.Typer(help="Emulated secure element reels and their manifests.", no_args_is_help=True)


@app.command()
def reel(
    signer: Annotated[str, typer.Option("--signer", help="Batch whose signer CA issues the certs")],
    count: Annotated[int, typer.Option(help="How many secure elements")],
    output: Annotated[Path, typer.Option("--out", help="New directory for the reel")],
    backend: Annotated[
        str, typer.Option(help="software (element files) or pkcs11 (a SoftHSM2 token each)")
    ] = "software",
    part_number: Annotated[str, typer.Option(help="partNumber in the manifest")] = (
        "ATECC608B-TFLXTLS"
    ),
    directory: Dir = None,
    key_store: KeyStoreKind = "file",
    passphrase_file: PassphraseFile = None,
    pkcs11_module: Module = DEFAULT_PKCS11_MODULE,
    token_label: TokenLabel = "",
    pin: Pin = None,
    element_pin: Annotated[
        str, typer.Option(envvar="IRONCORE_ELEMENT_PIN", help="User and SO PIN of element tokens")
    ] = "1234",
) -> None:
    """Provision COUNT elements, certify them with the batch signer, write a signed manifest."""
    ca = ca_directory(directory)
    spec = key_spec(key_store, passphrase_file, pkcs11_module, token_label, pin)
    started = time.perf_counter()
    try:
        made = make_reel(
            out=output,
            count=count,
            signer=ca.signer(signer),
            signer_key=spec.open(ca.signer_path(signer)),
            manifest_signer=ca.manifest_signer(),
            manifest_key=spec.open(ca.manifest_signer_path),
            now=now(),
            backend=backend,
            pkcs11=Pkcs11Options(pkcs11_module, element_pin, element_pin),
            part_number=part_number,
        )
    except (IronCoreError, SecureElementError) as error:
        fail(str(error))
    seconds = time.perf_counter() - started
    out.print(
        f"{count} elements (group {made.group_id}) in {seconds:.1f} s; manifest {made.manifest}"
    )
