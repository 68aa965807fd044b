"""Public keys and certificates that devices and registries present, checked when added.

A credential is parsed once, here, into an explicit type; the device manager refuses what does
not parse and the bridges verify JWTs against what does. Errors name the exact problem and the
field it came from, because an operator pasting the wrong PEM needs to know which one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from ironcore import limits
from ironcore.errors import InvalidArgument

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class Algorithm(Enum):
    """The JWT algorithm a device key signs with."""

    RS256 = "RS256"
    ES256 = "ES256"


@dataclass(frozen=True)
class ParsedKey:
    """A device credential's key, ready for signature verification."""

    algorithm: Algorithm
    public_key: PublicKey
    certificate: x509.Certificate | None

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the SubjectPublicKeyInfo: equal keys have equal fingerprints. Computed
        when first asked (a connect needs it only for a key rotation or a later check)."""
        der = self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(der).hexdigest()


# The wire names of PublicKeyFormat (Cloud IoT Core's numbers: RSA_X509_PEM=1, ES256_PEM=2,
# RSA_PEM=3, ES256_X509_PEM=4).
_FORMATS: dict[str, tuple[Algorithm, bool]] = {
    "RSA_PEM": (Algorithm.RS256, False),
    "RSA_X509_PEM": (Algorithm.RS256, True),
    "ES256_PEM": (Algorithm.ES256, False),
    "ES256_X509_PEM": (Algorithm.ES256, True),
}


def is_x509_format(key_format: str) -> bool:
    return key_format in _FORMATS and _FORMATS[key_format][1]


def parse_device_key(key_format: str, pem: str, field: str) -> ParsedKey:
    """Parse a device credential's `key` in the given `format`.

    Raises InvalidArgument naming `field` when the PEM is malformed, holds the wrong kind of
    key for the format, an RSA key below 2048 bits, or an EC key on a curve other than P-256.
    """
    if key_format not in _FORMATS:
        raise InvalidArgument.field(
            f"{field}.format", f"must be one of {', '.join(_FORMATS)}, not {key_format!r}"
        )
    algorithm, is_x509 = _FORMATS[key_format]
    key_field = f"{field}.key"
    certificate = None
    if is_x509:
        certificate = load_certificate(pem, key_field)
        public_key = _certificate_key(certificate, key_field)
    else:
        public_key = _load_public_key(pem, key_field)
    if algorithm is Algorithm.RS256:
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise InvalidArgument.field(
                key_field, f"{key_format} needs an RSA key, not {_kind(public_key)}"
            )
        if public_key.key_size < limits.RSA_MIN_BITS:
            raise InvalidArgument.field(
                key_field,
                f"RSA key has {public_key.key_size} bits; "
                f"at least {limits.RSA_MIN_BITS} are required",
            )
    else:
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise InvalidArgument.field(
                key_field, f"{key_format} needs an EC P-256 key, not {_kind(public_key)}"
            )
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise InvalidArgument.field(
                key_field, f"ES256 needs the P-256 curve, not {public_key.curve.name}"
            )
    return ParsedKey(algorithm, public_key, certificate)


def load_certificate(pem: str, field: str) -> x509.Certificate:
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise InvalidArgument.field(field, "is not a PEM certificate (no BEGIN CERTIFICATE line)")
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise InvalidArgument.field(field, f"malformed PEM certificate: {exc}") from None


def _load_public_key(pem: str, field: str) -> PublicKey:
    if "-----BEGIN PUBLIC KEY-----" not in pem:
        raise InvalidArgument.field(
            field, "is not a PEM public key (expected a BEGIN PUBLIC KEY block)"
        )
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidArgument.field(field, f"malformed PEM public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise InvalidArgument.field(field, f"unsupported key type {_kind(key)}")
    return key


def _certificate_key(cert: x509.Certificate, field: str) -> CertificatePublicKeyTypes:
    """The certificate's public key; a key `cryptography` cannot load (an unknown curve, say)
    is the caller's mistake, not the server's."""
    try:
        return cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidArgument.field(
            field, f"unsupported public key in certificate: {exc}"
        ) from None


def _kind(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"an RSA-{key.key_size} key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC {key.curve.name} key"
    return f"a {type(key).__name__.lstrip('_')}"


@dataclass(frozen=True)
class CertificateDetails:
    """What Cloud IoT Core reported as `x509Details` for a registry CA certificate."""

    issuer: str
    subject: str
    start_time: datetime
    expiry_time: datetime
    signature_algorithm: str
    public_key_type: str


def parse_ca_certificate(pem: str, field: str) -> tuple[x509.Certificate, CertificateDetails]:
    """Parse a registry CA certificate and describe it; refuses what cannot sign certificates."""
    cert = load_certificate(pem, field)
    key = _certificate_key(cert, field)
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise InvalidArgument.field(field, f"CA certificate has an unsupported key: {_kind(key)}")
    oid = cert.signature_algorithm_oid
    details = CertificateDetails(
        issuer=cert.issuer.rfc4514_string(),
        subject=cert.subject.rfc4514_string(),
        start_time=cert.not_valid_before_utc,
        expiry_time=cert.not_valid_after_utc,
        signature_algorithm=getattr(oid, "_name", oid.dotted_string),
        public_key_type="RSA" if isinstance(key, rsa.RSAPublicKey) else "EC",
    )
    return cert, details


def check_signed_by_any(
    certificate: x509.Certificate, cas: Sequence[x509.Certificate], field: str
) -> None:
    """Refuse a device certificate that none of the registry's CA certificates signed."""
    now = datetime.now(UTC)
    for ca in cas:
        if certificate.issuer != ca.subject:
            continue
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
            raise InvalidArgument.field(
                field, "the registry CA that signed this certificate is not valid now"
            )
        return
    raise InvalidArgument.field(
        field, "the certificate is not signed by any of the registry's CA certificates"
    )
