"""An owner's PKI and reels for tests: a root CA, a batch signer, a manifest signer."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ironcore.factory.manifest import TrustedSigner, signed_entry
from ironcore.factory.reel import Reel, make_reel
from ironcore.pki.ca import CaDirectory, KeySpec, pem
from tests.vectors import MICROCHIP

VECTORS = MICROCHIP
SPEC = KeySpec("file", passphrase=b"test passphrase")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Owner:
    ca: CaDirectory

    @classmethod
    def create(cls, path: Path, batches: tuple[str, ...] = ("b1",)) -> Owner:
        ca = CaDirectory(path)
        ca.init(SPEC, ec.SECP256R1(), "Acme Root CA", "Acme", NOW)
        root_key = SPEC.open(ca.root_path)
        for batch in batches:
            ca.create_signer(batch, SPEC, root_key, NOW)
        return cls(ca)

    @property
    def root_pem(self) -> str:
        return pem(self.ca.root())

    @property
    def manifest_signer_pem(self) -> str:
        return pem(self.ca.manifest_signer())

    def signer_pem(self, batch: str = "b1") -> str:
        return pem(self.ca.signer(batch))

    def reel(self, out: Path, count: int, batch: str = "b1", when: datetime = NOW) -> Reel:
        return make_reel(
            out=out,
            count=count,
            signer=self.ca.signer(batch),
            signer_key=SPEC.open(self.ca.signer_path(batch)),
            manifest_signer=self.ca.manifest_signer(),
            manifest_key=SPEC.open(self.ca.manifest_signer_path),
            now=when,
        )


def dummy_signer() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """pytrustplatform's example signer, whose private key is public (valid 2020-10-01..2030)."""
    folder = VECTORS / "self-signed-example"
    certificate = x509.load_pem_x509_certificate((folder / "dummy_signer-ca.crt").read_bytes())
    key = serialization.load_pem_private_key((folder / "dummy_signer-ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return certificate, key


def sign_with_dummy(payload: dict[str, Any]) -> dict[str, Any]:
    certificate, key = dummy_signer()
    return signed_entry(
        payload, TrustedSigner.of(certificate), lambda data: key.sign(data, ec.ECDSA(_sha256()))
    )


def _sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def decode(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
