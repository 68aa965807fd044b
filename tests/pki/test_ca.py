"""Root and batch signer CAs, with keys in encrypted files and on a PKCS#11 token."""

from __future__ import annotations

import base64
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ironcore import jose
from ironcore.errors import AlreadyExists, InvalidArgument, NotFound
from ironcore.pki.ca import CaDirectory, KeySpec, device_certificate, ec_public_key
from ironcore.pki.keystore import curve_named
from tests.softhsm import PIN, SoftHsm
from tests.vectors import MICROCHIP

NOW = datetime(2026, 3, 1, 12, 34, 56, tzinfo=UTC)
VECTORS = MICROCHIP
FILE = KeySpec("file", passphrase=b"correct horse")


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(kind)


@pytest.mark.parametrize("curve", ["P-256", "P-384"])
def test_root_and_signer_with_file_keys(tmp_path: Path, curve: str) -> None:
    ca = CaDirectory(tmp_path / "pki")
    root = ca.init(FILE, curve_named(curve), "Acme Root CA", "Acme", NOW)
    assert root.subject == root.issuer
    assert _ext(root, x509.BasicConstraints).value.ca
    assert _ext(root, x509.BasicConstraints).critical
    assert _ext(root, x509.KeyUsage).value.key_cert_sign
    key_file = (tmp_path / "pki" / "root.key").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in key_file
    assert (tmp_path / "pki" / "root.key").stat().st_mode & 0o777 == 0o600

    root_key = FILE.open(ca.root_path)
    signer = ca.create_signer("batch-1", FILE, root_key, NOW)
    signer.verify_directly_issued_by(root)
    constraints = _ext(signer, x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    aki = _ext(signer, x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == _ext(root, x509.SubjectKeyIdentifier).value.digest
    assert signer.subject.rfc4514_string() == "CN=Acme Signer batch-1,O=Acme"
    assert ca.signers() == ["batch-1"]
    manifest_signer = ca.manifest_signer()
    manifest_signer.verify_directly_issued_by(root)
    assert not _ext(manifest_signer, x509.BasicConstraints).value.ca


def test_wrong_passphrase_and_existing_things_are_refused(tmp_path: Path) -> None:
    ca = CaDirectory(tmp_path)
    ca.init(FILE, ec.SECP256R1(), "Root", "Acme", NOW)
    with pytest.raises(InvalidArgument, match="wrong passphrase"):
        KeySpec("file", passphrase=b"not the one").open(ca.root_path)
    with pytest.raises(AlreadyExists):
        ca.init(FILE, ec.SECP256R1(), "Root", "Acme", NOW)
    root_key = FILE.open(ca.root_path)
    ca.create_signer("b1", FILE, root_key, NOW)
    with pytest.raises(AlreadyExists, match="b1"):
        ca.create_signer("b1", FILE, root_key, NOW)
    with pytest.raises(InvalidArgument, match="batch name"):
        ca.signer_path("../escape")
    with pytest.raises(NotFound, match="nope"):
        ca.signer("nope")
    with pytest.raises(InvalidArgument, match="at least 8"):
        CaDirectory(tmp_path / "other").init(
            KeySpec("file", passphrase=b"short"), ec.SECP256R1(), "R", "A", NOW
        )


def test_revoke_signer_writes_a_crl(tmp_path: Path) -> None:
    ca = CaDirectory(tmp_path)
    root = ca.init(FILE, ec.SECP384R1(), "Root", "Acme", NOW)
    root_key = FILE.open(ca.root_path)
    signer = ca.create_signer("b1", FILE, root_key, NOW)
    ca.create_signer("b2", FILE, root_key, NOW)
    ca.revoke_signer("b1", "keyCompromise", root_key, NOW)
    ca.revoke_signer("b1", "keyCompromise", root_key, NOW)  # twice: no error, one entry
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    assert len(crl) == 1
    entry = crl.get_revoked_certificate_by_serial_number(signer.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )
    assert [r.batch for r in ca.revoked()] == ["b1"]
    assert ca.revoked()[0].key_id == jose.key_id(ec_public_key(signer)).hex()
    # OpenSSL agrees with the chain and the CRL.
    (tmp_path / "chain.pem").write_bytes(
        root.public_bytes(serialization.Encoding.PEM) + (tmp_path / "crl.pem").read_bytes()
    )
    result = subprocess.run(
        ["openssl", "crl", "-in", str(tmp_path / "crl.pem"), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Key Compromise" in result.stdout


def test_device_certificate_is_made_the_microchip_way(tmp_path: Path) -> None:
    """The serial-number rule reproduces real Microchip certificates bit for bit."""
    manifest = json.loads((VECTORS / "manifest_ATECC608A-MAH4I.json").read_text())
    payload = json.loads(base64.urlsafe_b64decode(manifest[0]["payload"] + "=="))
    real_der = base64.b64decode(payload["publicKeySet"]["keys"][0]["x5c"][0])
    real = x509.load_der_x509_certificate(real_der)

    ca = CaDirectory(tmp_path)
    ca.init(FILE, ec.SECP256R1(), "Root", "Microchip Technology Inc", NOW)
    root_key = FILE.open(ca.root_path)
    signer = ca.create_signer("2C00", FILE, root_key, NOW)
    signer_key = FILE.open(ca.signer_path("2C00"))
    public = real.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    made = device_certificate(
        signer, signer_key, public, bytes.fromhex("01230390b3d1450c01"), real.not_valid_before_utc
    )
    assert made.serial_number == real.serial_number
    assert made.subject == real.subject
    assert made.not_valid_before_utc == real.not_valid_before_utc
    assert made.not_valid_after_utc == real.not_valid_after_utc
    for kind in (x509.BasicConstraints, x509.KeyUsage, x509.SubjectKeyIdentifier):
        assert _ext(made, kind) == _ext(real, kind)
    made.verify_directly_issued_by(signer)

    later = device_certificate(
        signer, signer_key, public, b"\x01" * 9, datetime(2026, 5, 2, 17, 59, 59, tzinfo=UTC)
    )
    assert later.not_valid_before_utc == datetime(2026, 5, 2, 17, tzinfo=UTC)
    assert later.not_valid_after_utc == datetime(2054, 5, 2, 17, tzinfo=UTC)


def test_ca_keys_on_a_pkcs11_token(tmp_path: Path, softhsm: SoftHsm) -> None:
    token = softhsm.new_token("ca")
    spec = KeySpec("pkcs11", module=softhsm.module, token=token, pin=PIN)
    ca = CaDirectory(tmp_path)
    root = ca.init(spec, ec.SECP384R1(), "HSM Root", "Acme", NOW)
    assert not (tmp_path / "root.key").exists()
    root.verify_directly_issued_by(root)
    root_key = spec.open(ca.root_path)
    signer = ca.create_signer("b1", spec, root_key, NOW)
    signer.verify_directly_issued_by(root)
    signer_key = spec.open(ca.signer_path("b1"))
    device_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    device = device_certificate(signer, signer_key, device_key, b"\x01\x23" + b"\x00" * 7, NOW)
    device.verify_directly_issued_by(signer)
    ca.revoke_signer("b1", "superseded", root_key, NOW)
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="wrong PIN"):
        KeySpec("pkcs11", module=softhsm.module, token=token, pin="9999").open(ca.root_path)
