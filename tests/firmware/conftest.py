"""Secure elements and firmware signing keys on each backend that runs here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ironcore.device import secure_element as se
from ironcore.device.pkcs11_element import Pkcs11Element, init_softhsm_token
from ironcore.device.secure_element import SecureElement
from ironcore.device.software_element import SoftwareElement
from ironcore.pki.keystore import EncryptedFileKey, KeyStore, Pkcs11Key
from tests.softhsm import PIN, SoftHsm, softhsm_session


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    yield from softhsm_session(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture(params=["software", "pkcs11"])
def element(request: pytest.FixtureRequest, tmp_path: Path) -> SecureElement:
    serial = se.new_serial_number()
    if request.param == "software":
        return SoftwareElement.provision(tmp_path / f"{serial.hex()}.json", serial)
    softhsm: SoftHsm = request.getfixturevalue("softhsm")
    init_softhsm_token(serial, PIN, PIN)
    return Pkcs11Element.provision(softhsm.module, serial, PIN)


@pytest.fixture(params=["file", "pkcs11"])
def signing_key(request: pytest.FixtureRequest, tmp_path: Path) -> KeyStore:
    """The firmware signing key, in an encrypted file or on a SoftHSM2 token."""
    if request.param == "file":
        return EncryptedFileKey.generate(tmp_path / "fw.key", ec.SECP256R1(), b"passphrase")
    softhsm: SoftHsm = request.getfixturevalue("softhsm")
    return Pkcs11Key.generate(
        softhsm.module, softhsm.new_token("fw"), "firmware", PIN, ec.SECP256R1()
    )


@pytest.fixture
def other_key(tmp_path: Path) -> KeyStore:
    """A well-formed signing key that devices do not trust."""
    return EncryptedFileKey.generate(tmp_path / "other.key", ec.SECP256R1(), b"passphrase")
