"""Key store options shared by the commands that hold signing keys (`ca`, `firmware`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ironcore.cli.client import fail
from ironcore.pki.ca import KeySpec

KeyStoreKind = Annotated[
    str, typer.Option("--key-store", help="file (passphrase-encrypted) or pkcs11")
]
Module = Annotated[
    str, typer.Option("--pkcs11-module", envvar="IRONCORE_PKCS11_MODULE", help="PKCS#11 library")
]
TokenLabel = Annotated[str, typer.Option("--token-label", help="PKCS#11 token holding the key")]
Pin = Annotated[
    str | None, typer.Option("--pin", envvar="IRONCORE_PKCS11_PIN", help="PKCS#11 user PIN")
]


CA_PASSPHRASE_ENV = "IRONCORE_CA_PASSPHRASE"
FIRMWARE_PASSPHRASE_ENV = "IRONCORE_FIRMWARE_PASSPHRASE"
CaPassphraseFile = Annotated[
    Path | None,
    typer.Option(help=f"File holding the key passphrase (default ${CA_PASSPHRASE_ENV}, else ask)"),
]
FirmwarePassphraseFile = Annotated[
    Path | None,
    typer.Option(
        help=f"File holding the key passphrase (default ${FIRMWARE_PASSPHRASE_ENV}, else ask)"
    ),
]


def read_passphrase(path: Path | None, env: str, prompt: str, confirm: bool) -> bytes:
    """The passphrase from `path`, else from `$env`, else asked for."""
    if path is not None:
        try:
            return path.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror}")
    if os.environ.get(env):
        return os.environ[env].encode()
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)).encode()


def read_pin(pin: str | None) -> str:
    return pin or str(typer.prompt("PIN", hide_input=True))


def key_spec(
    kind: str, passphrase: bytes | None, module: str, token: str, pin: str | None
) -> KeySpec:
    """Where a new key goes; `passphrase` is needed (not None) for `file`."""
    if kind == "pkcs11":
        if not token:
            fail("--key-store pkcs11 needs --token-label")
        return KeySpec("pkcs11", module=module, token=token, pin=read_pin(pin))
    if kind != "file" or passphrase is None:
        fail(f"--key-store {kind!r}: use file or pkcs11")
    return KeySpec("file", passphrase=passphrase, pin=pin)
