"""The owner's certificate authorities: an offline root, one signer CA per batch, a manifest
signer, and the CRL that lists revoked signers.

Everything lives in one directory (`ironcore ca --dir`, by default `<data-dir>/pki`):

    root.crt, root.keyref.json [, root.key]          the root CA (keep offline)
    manifest-signer.crt, manifest-signer.keyref.json  signs reel manifests
    signers/<batch>.crt, signers/<batch>.keyref.json  one signer CA per batch (path length 0)
    revoked.json, crl.pem                             revoked signers and the root's CRL

The certificates carry what real device PKIs carry (Microchip's Trust&GO chain is the model):
SKI = SHA-1 of the public point, AKI = the issuer's SKI, critical basic constraints and key
usage. Device certificates are made exactly the way Microchip makes them (`device_certificate`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ironcore import jose
from ironcore.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ironcore.pki.keystore import (
    EncryptedFileKey,
    KeyRef,
    KeyStore,
    Pkcs11Key,
)

ROOT_YEARS = 40
SIGNER_YEARS = 31
MANIFEST_SIGNER_YEARS = 10
# Microchip's device certificates last 28 years (`expire_years = 28` in cryptoauthlib's
# certificate definitions); the value is also encoded in the certificate serial number.
DEVICE_YEARS = 28
CRL_DAYS = 30
_BATCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True)
class KeySpec:
    """How to make and open the keys of a CA directory."""

    kind: str = "file"
    passphrase: bytes | None = None
    module: str = ""
    token: str = ""
    pin: str | None = None

    def create(self, path: Path, curve: ec.EllipticCurve) -> KeyStore:
        """Generate a key for the certificate at `path` (its name without suffix labels it)."""
        ref_path = path.with_suffix(".keyref.json")
        if self.kind == "file":
            if self.passphrase is None:
                raise InvalidArgument("a passphrase is needed for a file key")
            key: KeyStore = EncryptedFileKey.generate(
                path.with_suffix(".key"), curve, self.passphrase
            )
            ref = KeyRef("file", path=path.with_suffix(".key").name)
        elif self.kind == "pkcs11":
            if not self.token or self.pin is None:
                raise InvalidArgument("a PKCS#11 key needs --token-label and --pin")
            label = _key_label(path)
            key = Pkcs11Key.generate(self.module, self.token, label, self.pin, curve)
            ref = KeyRef("pkcs11", module=self.module, token=self.token, label=label)
        else:
            raise InvalidArgument(f"unknown key store {self.kind!r}; use file or pkcs11")
        ref.save(ref_path)
        return key

    def open(self, path: Path) -> KeyStore:
        """The key of the certificate at `path`."""
        if not path.exists():
            raise NotFound(f"{path} does not exist; create it first (`ironcore ca init`)")
        ref = KeyRef.load(path.with_suffix(".keyref.json"))
        return ref.open(path.parent, self.passphrase, self.pin)


def _key_label(path: Path) -> str:
    prefix = "ironcore-signer-" if path.parent.name == "signers" else "ironcore-"
    return prefix + path.stem


@dataclass(frozen=True)
class Revoked:
    batch: str
    serial_number: int
    key_id: str
    revoked_at: str
    reason: str


class CaDirectory:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def root_path(self) -> Path:
        return self.path / "root.crt"

    @property
    def manifest_signer_path(self) -> Path:
        return self.path / "manifest-signer.crt"

    def signer_path(self, batch: str) -> Path:
        if not _BATCH.fullmatch(batch):
            raise InvalidArgument(
                f"{batch[:60]!r} is not a batch name: 1 to 63 of [A-Za-z0-9._-], "
                "starting with a letter or digit"
            )
        return self.path / "signers" / f"{batch}.crt"

    def root(self) -> x509.Certificate:
        return _read_certificate(self.root_path, "no root CA here; run `ironcore ca init` first")

    def signer(self, batch: str) -> x509.Certificate:
        return _read_certificate(self.signer_path(batch), f"no signer CA for batch {batch!r}")

    def manifest_signer(self) -> x509.Certificate:
        return _read_certificate(self.manifest_signer_path, "no manifest signer here")

    def signers(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "signers").glob("*.crt"))

    def revoked(self) -> list[Revoked]:
        path = self.path / "revoked.json"
        if not path.exists():
            return []
        return [Revoked(**entry) for entry in json.loads(path.read_text())]

    # Creating

    def init(
        self,
        spec: KeySpec,
        curve: ec.EllipticCurve,
        common_name: str,
        organization: str,
        now: datetime,
    ) -> x509.Certificate:
        """Create the root CA and the manifest signer it certifies."""
        if self.root_path.exists():
            raise AlreadyExists(f"{self.root_path} exists; this directory already has a root CA")
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "signers").mkdir(exist_ok=True)
        key = spec.create(self.root_path, curve)
        name = _name(organization, common_name)
        builder = _ca_builder(name, name, key.public_key(), key.public_key(), now, ROOT_YEARS)
        root = key.certificate(builder.add_extension(_CA_USAGE, critical=True))
        _write_certificate(self.root_path, root)
        signer_key = spec.create(self.manifest_signer_path, ec.SECP256R1())
        manifest_signer = key.certificate(
            _leaf_builder(
                _name(organization, f"{common_name} Manifest Signer"),
                root,
                signer_key.public_key(),
                now,
                MANIFEST_SIGNER_YEARS,
            )
        )
        _write_certificate(self.manifest_signer_path, manifest_signer)
        self.write_crl(key, now)
        return root

    def create_signer(
        self, batch: str, spec: KeySpec, root_key: KeyStore, now: datetime
    ) -> x509.Certificate:
        """A batch signer CA (path length 0, P-256: device certificates are ES256)."""
        path = self.signer_path(batch)
        if path.exists():
            raise AlreadyExists(f"batch {batch!r} already has a signer CA ({path})")
        root = self.root()
        _check_root_key(root, root_key)
        key = spec.create(path, ec.SECP256R1())
        organization = _organization(root)
        builder = _ca_builder(
            _name(organization, f"{organization} Signer {batch}"),
            root.subject,
            key.public_key(),
            ec_public_key(root),
            now,
            SIGNER_YEARS,
            path_length=0,
        )
        signer = root_key.certificate(builder.add_extension(_CA_USAGE, critical=True))
        _write_certificate(path, signer)
        return signer

    def revoke_signer(
        self, batch: str, reason: str, root_key: KeyStore, now: datetime
    ) -> x509.Certificate:
        """Mark a batch signer revoked and write a new CRL; revoking twice is not an error."""
        signer = self.signer(batch)
        _check_root_key(self.root(), root_key)
        revoked = self.revoked()
        if not any(r.serial_number == signer.serial_number for r in revoked):
            revoked.append(
                Revoked(
                    batch,
                    signer.serial_number,
                    jose.key_id(ec_public_key(signer)).hex(),
                    now.isoformat(),
                    reason or "unspecified",
                )
            )
            (self.path / "revoked.json").write_text(
                json.dumps([asdict(r) for r in revoked], indent=2) + "\n"
            )
        self.write_crl(root_key, now)
        return signer

    def write_crl(self, root_key: KeyStore, now: datetime) -> x509.CertificateRevocationList:
        root = self.root()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(root.subject)
            .last_update(now)
            .next_update(now + timedelta(days=CRL_DAYS))
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                critical=False,
            )
        )
        for entry in self.revoked():
            revoked = (
                x509.RevokedCertificateBuilder()
                .serial_number(entry.serial_number)
                .revocation_date(datetime.fromisoformat(entry.revoked_at))
            )
            flag = _REASONS.get(entry.reason)
            if flag is not None:
                revoked = revoked.add_extension(x509.CRLReason(flag), critical=False)
            builder = builder.add_revoked_certificate(revoked.build())
        crl = root_key.crl(builder)
        (self.path / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return crl


_REASONS = {flag.value: flag for flag in x509.ReasonFlags if flag.value not in ("removeFromCRL",)}
_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_SIGN_ONLY = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_DEVICE_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=True,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def ec_public_key(certificate: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise InvalidArgument(f"{certificate.subject.rfc4514_string()} does not hold an EC key")
    return key


def device_certificate(
    signer: x509.Certificate,
    signer_key: KeyStore,
    public_key: ec.EllipticCurvePublicKey,
    serial: bytes,
    provisioned_at: datetime,
) -> x509.Certificate:
    """A device certificate as Microchip makes them (cryptoauthlib's TNG definitions).

    CN `sn` + the 9-byte serial in uppercase hex; notBefore is the provisioning time rounded
    down to the hour and notAfter 28 years on; the certificate serial is SHA-256 of the public
    point and the 3 encoded date bytes, cut to 16 bytes with the top bits set to 01.
    """
    not_before = provisioned_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    try:
        not_after = not_before.replace(year=not_before.year + DEVICE_YEARS)
    except ValueError:  # 29 February in a year that is not leap 28 years on (2100)
        not_after = not_before.replace(year=not_before.year + DEVICE_YEARS, day=28)
    point = public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(_organization(signer), f"sn{serial.hex().upper()}"))
        .issuer_name(signer.subject)
        .public_key(public_key)
        .serial_number(microchip_serial_number(point[1:], not_before))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_DEVICE_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(signer), critical=False)
    )
    return signer_key.certificate(builder)


def microchip_serial_number(xy: bytes, not_before: datetime) -> int:
    """cryptoauthlib's SNSRC_PUB_KEY_HASH: SHA-256(X‖Y ‖ encoded dates)[:16], byte 0 01xxxxxx."""
    dates = (
        (not_before.year - 2000) << 19
        | not_before.month << 15
        | not_before.day << 10
        | not_before.hour << 5
        | DEVICE_YEARS
    )
    digest = bytearray(hashlib.sha256(xy + dates.to_bytes(3, "big")).digest()[:16])
    digest[0] = (digest[0] & 0x7F) | 0x40
    return int.from_bytes(digest, "big")


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # The issuer's SKI is SHA-1 of its point (ours and Microchip's alike), so it can be
    # recomputed instead of read from extensions that may not parse.
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(ec_public_key(issuer))


def _name(organization: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _organization(certificate: x509.Certificate) -> str:
    values = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(values[0].value) if values else "ironcore"


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePublicKey,
    now: datetime,
    years: int,
    path_length: int | None = None,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False
        )
    )


def _leaf_builder(
    subject: x509.Name,
    issuer: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    years: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_SIGN_ONLY, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(issuer), critical=False)
    )


def _check_root_key(root: x509.Certificate, key: KeyStore) -> None:
    if root.public_key() != key.public_key():
        raise InvalidArgument("the key given is not the root CA's key")


def _read_certificate(path: Path, missing: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise NotFound(f"{missing} ({path})") from None
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"cannot read certificate {path}: {exc}") from None


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()
