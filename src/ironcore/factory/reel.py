"""Reels: N emulated secure elements provisioned the way Microchip provisions a reel.

Each element makes its own keys inside (slot 0 and slots 2-4), its device certificate is
issued by the batch signer CA from the slot 0 public key, and the certificates are written
into the element (slots 10 and 12). The reel ships with a manifest signed by the owner's
manifest signer, in the Trust Platform format, that `ironcore manifest import` takes.

    <out>/manifest.json            the signed manifest
    <out>/elements/<serial>.json   software elements (the pkcs11 backend uses tokens instead)
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ironcore.device import secure_element as se
from ironcore.device.pkcs11_element import Pkcs11Element, init_softhsm_token
from ironcore.device.software_element import SoftwareElement
from ironcore.errors import FailedPrecondition, InvalidArgument
from ironcore.factory.manifest import TrustedSigner, element_payload, signed_entry
from ironcore.pki.ca import device_certificate
from ironcore.pki.keystore import KeyStore

BACKENDS = ("software", "pkcs11")
MAX_COUNT = 1_000_000
_DER = serialization.Encoding.DER
_GROUP_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class Pkcs11Options:
    module: str
    pin: str
    so_pin: str


@dataclass(frozen=True)
class Reel:
    manifest: Path
    group_id: str
    # In manifest order.
    serials: list[bytes]


def make_reel(
    *,
    out: Path,
    count: int,
    signer: x509.Certificate,
    signer_key: KeyStore,
    manifest_signer: x509.Certificate,
    manifest_key: KeyStore,
    now: datetime,
    backend: str = "software",
    pkcs11: Pkcs11Options | None = None,
    part_number: str = "ATECC608B-TFLXTLS",
    model: str = "ATECC608B",
) -> Reel:
    if not 1 <= count <= MAX_COUNT:
        raise InvalidArgument(f"--count must be between 1 and {MAX_COUNT}, not {count}")
    if backend not in BACKENDS:
        raise InvalidArgument(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
    if backend == "pkcs11" and pkcs11 is None:
        raise InvalidArgument("the pkcs11 backend needs a module and PINs")
    if signer.public_key() != signer_key.public_key():
        raise InvalidArgument("the signer key given is not the batch signer CA's key")
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        raise FailedPrecondition(f"{manifest_path} exists; make each reel in a new directory")
    (out / "elements").mkdir(parents=True, exist_ok=True)
    provision = _software(out / "elements") if backend == "software" else _token(pkcs11)
    signer_der = signer.public_bytes(_DER)
    manifest_id = TrustedSigner.of(manifest_signer)
    organization = _organization(signer)
    group_id = "".join(secrets.choice(_GROUP_ALPHABET) for _ in range(16))
    seen: set[bytes] = set()
    serials: list[bytes] = []
    entries = []

    def personalize(element: se.SecureElement) -> None:
        public_key = se.public_key_from_raw(element.get_pubkey(0))
        certificate = device_certificate(
            signer, signer_key, public_key, element.serial_number(), now
        )
        element.write_cert(se.DEVICE_CERT_SLOT, certificate.public_bytes(_DER))
        element.write_cert(se.SIGNER_CERT_SLOT, signer_der)

    for _ in range(count):
        serial = se.new_serial_number()
        while serial in seen:
            serial = se.new_serial_number()
        seen.add(serial)
        serials.append(serial)
        element = provision(serial, personalize)
        keys = {slot: element.get_pubkey(slot) for slot in se.KEY_SLOTS}
        device_der = element.read_cert(se.DEVICE_CERT_SLOT)
        payload = element_payload(
            unique_id=serial.hex(),
            keys=keys,
            certificates=[device_der, signer_der],
            provisioned_at=now,
            group_id=group_id,
            organization=organization,
            part_number=part_number,
            model=model,
        )
        entries.append(signed_entry(payload, manifest_id, manifest_key.sign))
    manifest_path.write_text(json.dumps(entries, indent=2) + "\n")
    return Reel(manifest_path, group_id, serials)


Personalize = Callable[[se.SecureElement], None]


def _software(folder: Path) -> Callable[[bytes, Personalize], se.SecureElement]:
    def provision(serial: bytes, personalize: Personalize) -> se.SecureElement:
        return SoftwareElement.provision(folder / f"{serial.hex()}.json", serial, personalize)

    return provision


def _token(options: Pkcs11Options | None) -> Callable[[bytes, Personalize], se.SecureElement]:
    assert options is not None

    def provision(serial: bytes, personalize: Personalize) -> se.SecureElement:
        init_softhsm_token(serial, options.pin, options.so_pin)
        element = Pkcs11Element.provision(options.module, serial, options.pin)
        personalize(element)
        return element

    return provision


def _organization(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    return str(names[0].value) if names else "ironcore"
