"""Trust Platform manifests: write them, read them, verify them.

A manifest is a JSON array of flattened JWS objects (RFC 7515 §7.2.2), one per secure element:
`protected`, `payload` and `signature` in base64url, and an unsigned `header.uniqueId` for
plain-text search. The signature is ES256 as raw r‖s over the exact received
`protected + "." + payload`, by a manifest signer found by `x5t#S256` (SHA-256 of its
certificate) and checked against `kid` (its key id). The format is Microchip's "Trust Platform
Manifest File Format" user guide; docs/manufacturing.md says how ironcore imports it.

Reading never raises anything but `ManifestError`, whatever the bytes: one entry's problem is
that entry's error, and the whole file is refused only when it is not a JSON array at all.
JSON, base64url and signatures are read by `ironcore.jose`'s rules: a member named twice, NaN
or a non-canonical base64url text is refused; base64url may carry padding, as Microchip's
tools accept it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ironcore import jose
from ironcore.errors import InvalidArgument

_UNIQUE_ID = re.compile(r"[0-9a-f]{18}")


class ManifestError(InvalidArgument):
    """A manifest, or one entry of it, is not what it must be; the message says exactly how."""


@dataclass(frozen=True)
class EntityName:
    organization_name: str
    organizational_unit_name: str


@dataclass(frozen=True)
class PublicJwk:
    """One slot's public key; `certificates` (DER, from `x5c`) only on slot 0."""

    slot: int
    x: bytes
    y: bytes
    certificates: tuple[bytes, ...] = ()

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b"\x04" + self.x + self.y
        )


@dataclass(frozen=True)
class SecureElementInfo:
    """The signed payload of an entry. Unknown members are kept in `raw`."""

    version: int
    model: str
    part_number: str
    manufacturer: EntityName | None
    provisioner: EntityName | None
    distributor: EntityName | None
    group_id: str
    provisioning_time: datetime
    unique_id: str
    keys: tuple[PublicJwk, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)

    def key(self, slot: int) -> PublicJwk | None:
        return next((k for k in self.keys if k.slot == slot), None)


@dataclass(frozen=True)
class TrustedSigner:
    certificate: x509.Certificate
    x5t: str
    kid: str

    @classmethod
    def of(cls, certificate: x509.Certificate) -> TrustedSigner:
        der = certificate.public_bytes(serialization.Encoding.DER)
        kid = jose.key_id(_ec_key(certificate))
        return cls(
            certificate, jose.b64url_encode(hashlib.sha256(der).digest()), jose.b64url_encode(kid)
        )

    @property
    def name(self) -> str:
        return self.certificate.subject.rfc4514_string()


@dataclass(frozen=True)
class Trust:
    """Pinned manifest signers (by x5t#S256), chain anchors, and revoked signer key ids."""

    signers: dict[str, TrustedSigner]
    anchors: tuple[x509.Certificate, ...]
    revoked: frozenset[str] = frozenset()
    # Every device certificate must chain to one of these (the registry's CA certificates).
    required: tuple[x509.Certificate, ...] = ()
    # A reel has one signer certificate: its chain is checked once, not once per entry.
    _chains: dict[bytes, tuple[x509.Certificate | None, bool]] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )

    def chain_of(
        self, issuer: x509.Certificate, der: bytes
    ) -> tuple[x509.Certificate | None, bool]:
        """The anchor `issuer` chains to, and whether it chains to a required (registry) CA."""
        known = self._chains.get(der)
        if known is None:
            anchor = _anchor(issuer, self.anchors + self.required)
            known = (anchor, bool(self.required) and _anchor(issuer, self.required) is not None)
            self._chains[der] = known
        return known

    def with_signers(self, certificates: Sequence[x509.Certificate]) -> Trust:
        signers = dict(self.signers)
        for certificate in certificates:
            signer = TrustedSigner.of(certificate)
            signers[signer.x5t] = signer
        return Trust(signers, self.anchors, self.revoked, self.required)


def default_trust() -> Trust:
    """Microchip's five published manifest signers, Root CA 002 and ATECC Root CA 001."""
    folder = resources.files("ironcore.factory") / "trust"
    signers = [
        x509.load_pem_x509_certificate(item.read_bytes())
        for item in (folder / "manifest_signers").iterdir()
        if item.name.endswith(".crt")
    ]
    roots = tuple(
        x509.load_pem_x509_certificate(item.read_bytes())
        for item in (folder / "roots").iterdir()
        if item.name.endswith(".crt")
    )
    return Trust({}, roots).with_signers(signers)


@dataclass(frozen=True)
class VerifiedElement:
    element: SecureElementInfo
    manifest_signer: TrustedSigner
    device_certificate: x509.Certificate | None
    certificate_signer: x509.Certificate | None


# Reading


def read_manifest(data: bytes | str) -> list[object]:
    """The entries of a manifest file; ManifestError if it is not a JSON array."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(f"the manifest is not UTF-8 text (byte {exc.start})") from None
    text = data.strip()
    if not text:
        raise ManifestError("the manifest is empty")
    try:
        entries = jose.loads(text, "the manifest")
    except jose.JoseError as error:
        hint = " (the file looks truncated)" if text[:1] == "[" and text[-1:] != "]" else ""
        raise ManifestError(f"{error.message}{hint}") from None
    if not isinstance(entries, list):
        raise ManifestError(
            f"a manifest is a JSON array of signed entries, not a JSON {jose.json_kind(entries)}"
        )
    return entries


def verify_entry(raw: object, trust: Trust) -> VerifiedElement:
    """Check one entry completely; ManifestError names the first problem found."""
    try:
        return _verify_entry(raw, trust)
    except jose.JoseError as error:
        raise ManifestError(error.message) from None
    except (ValueError, TypeError, OverflowError, UnsupportedAlgorithm) as exc:
        # A certificate or key `cryptography` cannot take apart, deep inside an entry.
        raise ManifestError(f"malformed entry: {exc}") from None


def _verify_entry(raw: object, trust: Trust) -> VerifiedElement:
    if not isinstance(raw, dict):
        raise ManifestError(
            f"an entry is a JSON object (flattened JWS), not a JSON {jose.json_kind(raw)}"
        )
    protected = _member(raw, "protected")
    payload = _member(raw, "payload")
    signature_text = _member(raw, "signature")
    header = raw.get("header")
    if not isinstance(header, dict) or not isinstance(header.get("uniqueId"), str):
        raise ManifestError("header.uniqueId is missing (the unprotected header must name it)")
    header_id: str = header["uniqueId"]

    fields = jose.json_object(_b64url(protected, "protected"), "the protected header")
    if fields.get("alg") != "ES256":
        raise ManifestError(f"protected header alg is {fields.get('alg')!r}; only ES256 is used")
    x5t = fields.get("x5t#S256")
    kid = fields.get("kid")
    if not isinstance(x5t, str) or not isinstance(kid, str):
        raise ManifestError("protected header lacks kid or x5t#S256")
    signer = trust.signers.get(x5t.rstrip("="))
    if signer is None:
        raise ManifestError(f"unknown manifest signer: no trusted certificate has x5t#S256 {x5t}")
    if kid.rstrip("=") != signer.kid:
        raise ManifestError(
            f"kid {kid} does not match the key id {signer.kid} of signer {signer.name}"
        )
    _check_signature(signer, protected, payload, signature_text)

    element = _parse_payload(jose.json_object(_b64url(payload, "payload"), "the payload"))
    if header_id.lower() != element.unique_id:
        raise ManifestError(
            f"header.uniqueId {header_id[:40]!r} differs from the signed uniqueId "
            f"{element.unique_id}"
        )
    when = element.provisioning_time
    if not _valid_at(signer.certificate, when):
        raise ManifestError(
            f"manifest signer {signer.name} was not valid at provisioning time "
            f"{when.isoformat()} (valid {signer.certificate.not_valid_before_utc.date()} to "
            f"{signer.certificate.not_valid_after_utc.date()})"
        )
    device, issuer = _check_chain(element, trust)
    return VerifiedElement(element, signer, device, issuer)


def _check_signature(signer: TrustedSigner, protected: str, payload: str, text: str) -> None:
    raw = _b64url(text, "signature")
    if len(raw) != jose.ES256_SIGNATURE_BYTES:
        raise ManifestError(f"the ES256 signature must be 64 bytes r‖s, not {len(raw)}")
    try:
        signed = jose.signing_input(protected, payload)
    except jose.JoseError:
        signed = None
    if signed is None or not jose.es256_verify(_ec_key(signer.certificate), raw, signed):
        raise ManifestError(
            f"the signature does not verify with manifest signer {signer.name} "
            "(forged or altered entry)"
        )


def _parse_payload(data: dict[str, Any]) -> SecureElementInfo:
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= 99:
        raise ManifestError(f"payload version must be a small integer, not {version!r}")
    unique_id = _text(data, "uniqueId").lower()
    if not _UNIQUE_ID.fullmatch(unique_id):
        raise ManifestError(f"uniqueId {unique_id[:40]!r} is not 18 hex digits (9 bytes)")
    stamp = _text(data, "provisioningTimestamp")
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ManifestError(
            f"provisioningTimestamp {stamp[:40]!r} is not an RFC 3339 time with a zone"
        )
    key_set = data.get("publicKeySet")
    keys: list[PublicJwk] = []
    if key_set is not None:
        if not isinstance(key_set, dict) or not isinstance(key_set.get("keys"), list):
            raise ManifestError("publicKeySet must be an object with a keys array")
        for jwk in key_set["keys"]:
            parsed = _parse_jwk(jwk)
            if parsed is not None:
                keys.append(parsed)
    return SecureElementInfo(
        version=version,
        model=_text(data, "model", ""),
        part_number=_text(data, "partNumber", ""),
        manufacturer=_entity(data, "manufacturer"),
        provisioner=_entity(data, "provisioner"),
        # The 2019 spec text spells it "distributer"; every real file says "distributor".
        distributor=_entity(data, "distributor") or _entity(data, "distributer"),
        group_id=_text(data, "groupId", ""),
        provisioning_time=when.astimezone(UTC),
        unique_id=unique_id,
        keys=tuple(keys),
        raw=data,
    )


def _parse_jwk(jwk: object) -> PublicJwk | None:
    """A slot's EC key; keys of other types (newer tooling, other products) are skipped."""
    if not isinstance(jwk, dict):
        raise ManifestError(
            f"publicKeySet.keys holds a JSON {jose.json_kind(jwk)}, not a JWK object"
        )
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid.isascii() or not kid.isdigit() or len(kid) > 2:
        raise ManifestError(f"JWK kid {kid!r} is not a slot number")
    if jwk.get("kty") != "EC":
        return None
    if jwk.get("crv") != "P-256":
        raise ManifestError(f"JWK {kid}: curve {jwk.get('crv')!r} is not P-256")
    coordinates = []
    for name in ("x", "y"):
        value = jwk.get(name)
        if not isinstance(value, str):
            raise ManifestError(f"JWK {kid}: {name} is missing")
        raw = _b64url(value, f"JWK {kid} {name}")
        if len(raw) > 32:
            raise ManifestError(f"JWK {kid}: {name} is {len(raw)} bytes; P-256 has 32")
        # TPDS writes coordinates without their leading zero bytes.
        coordinates.append(raw.rjust(32, b"\x00"))
    chain: list[bytes] = []
    x5c = jwk.get("x5c", [])
    if not isinstance(x5c, list) or not all(isinstance(c, str) for c in x5c):
        raise ManifestError(f"JWK {kid}: x5c must be an array of base64 certificates")
    for i, text in enumerate(x5c):
        try:
            chain.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise ManifestError(f"JWK {kid}: x5c[{i}] is not standard base64") from None
    key = PublicJwk(int(kid), coordinates[0], coordinates[1], tuple(chain))
    try:
        key.public_key()
    except ValueError:
        raise ManifestError(f"JWK {kid}: x, y is not a point on P-256") from None
    return key


def _check_chain(
    element: SecureElementInfo, trust: Trust
) -> tuple[x509.Certificate | None, x509.Certificate | None]:
    """Check slot 0's x5c: device → signer → anchor, at provisioning time; key = JWK key."""
    slot0 = element.key(0)
    if slot0 is None or not slot0.certificates:
        if trust.required and element.keys:
            raise ManifestError(
                "the registry has CA certificates, so entries need a device certificate (x5c)"
            )
        return None, None
    if len(slot0.certificates) < 2:
        raise ManifestError("x5c must hold the device certificate and its signer")
    device = _certificate(slot0.certificates[0], "x5c[0] (device)")
    issuer = _certificate(slot0.certificates[1], "x5c[1] (signer)")
    when = element.provisioning_time
    if not _issued_by(device, issuer):
        raise ManifestError(
            f"device certificate {_cn(device)} is not signed by {_cn(issuer)} (x5c[1])"
        )
    if element.unique_id.upper() not in _cn(device).upper():
        raise ManifestError(
            f"device certificate {_cn(device)} does not name uniqueId {element.unique_id}"
        )
    if _point(device) != _point_of(slot0.public_key()):
        raise ManifestError("the slot 0 JWK is not the device certificate's key")
    if not _valid_at(issuer, when):
        raise ManifestError(f"certificate signer {_cn(issuer)} was not valid at provisioning")
    issuer_id = jose.key_id(_ec_key(issuer)).hex()
    if issuer_id in trust.revoked:
        raise ManifestError(f"certificate signer {_cn(issuer)} (key id {issuer_id}) is revoked")
    anchor, in_registry = trust.chain_of(issuer, slot0.certificates[1])
    if anchor is None or not _valid_at(anchor, when):
        raise ManifestError(
            f"certificate signer {_cn(issuer)} does not chain to a trusted root "
            f"(issuer {issuer.issuer.rfc4514_string()})"
        )
    if trust.required and not in_registry:
        raise ManifestError(
            f"certificate signer {_cn(issuer)} does not chain to the registry's CA certificates"
        )
    return device, issuer


def _anchor(
    issuer: x509.Certificate, anchors: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    for anchor in anchors:
        if anchor == issuer or _issued_by(issuer, anchor):
            return anchor
    return None


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _valid_at(certificate: x509.Certificate, when: datetime) -> bool:
    return certificate.not_valid_before_utc <= when <= certificate.not_valid_after_utc


def _certificate(der: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise ManifestError(f"{what} is not a DER certificate: {exc}") from None


def _cn(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else certificate.subject.rfc4514_string()


def _point(certificate: x509.Certificate) -> bytes:
    return _point_of(_ec_key(certificate))


def _ec_key(certificate: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ManifestError(f"{_cn(certificate)} does not hold an EC key")
    return key


def _point_of(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _member(raw: dict[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value:
        raise ManifestError(f"the entry has no {name} string (it must be a flattened JWS)")
    return value


def _text(data: dict[str, Any], name: str, default: str | None = None) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise ManifestError(f"payload {name} must be a string, not a JSON {jose.json_kind(value)}")
    return value


def _entity(data: dict[str, Any], name: str) -> EntityName | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ManifestError(f"payload {name} must be an object")
    return EntityName(
        str(value.get("organizationName", "")), str(value.get("organizationalUnitName", ""))
    )


def _b64url(text: str, what: str) -> bytes:
    # Microchip's tools read base64url with or without padding; so does the importer.
    return jose.b64url_decode(text, what, padding=True)


# Writing


def element_payload(
    *,
    unique_id: str,
    keys: dict[int, bytes],
    certificates: Sequence[bytes],
    provisioned_at: datetime,
    group_id: str,
    organization: str,
    part_number: str,
    model: str,
) -> dict[str, Any]:
    """A version 1 SecureElement payload: JWKs for every key slot, x5c on slot 0."""
    jwks: list[dict[str, Any]] = []
    for slot, xy in sorted(keys.items()):
        jwk: dict[str, Any] = {
            "kid": str(slot),
            "kty": "EC",
            "crv": "P-256",
            "x": jose.b64url_encode(xy[:32]),
            "y": jose.b64url_encode(xy[32:]),
        }
        if slot == 0 and certificates:
            jwk["x5c"] = [base64.b64encode(der).decode() for der in certificates]
        jwks.append(jwk)
    entity = {"organizationName": organization, "organizationalUnitName": "ironcore factory"}
    stamp = provisioned_at.astimezone(UTC)
    return {
        "version": 1,
        "model": model,
        "partNumber": part_number,
        "manufacturer": entity,
        "provisioner": entity,
        "distributor": entity,
        "groupId": group_id,
        "provisioningTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{stamp.microsecond // 1000:03d}Z",
        "uniqueId": unique_id,
        "publicKeySet": {"keys": jwks},
    }


def signed_entry(
    payload: dict[str, Any], signer: TrustedSigner, sign: Callable[[bytes], bytes]
) -> dict[str, Any]:
    """A flattened JWS of `payload`; `sign` returns a DER ECDSA P-256/SHA-256 signature."""
    protected = jose.b64url_json(
        {"typ": "JWT", "alg": "ES256", "kid": signer.kid, "x5t#S256": signer.x5t}
    )
    body = jose.b64url_json(payload)
    signature = jose.es256_signature(sign(jose.signing_input(protected, body)))
    return {
        "payload": body,
        "protected": protected,
        "header": {"uniqueId": payload["uniqueId"]},
        "signature": jose.b64url_encode(signature),
    }
