"""The signed firmware manifest: what an image is, who says so, and whether an image may boot
(docs/firmware.md).

A manifest is a flattened JWS (RFC 7515 §7.2.2), the shape of the entries of Microchip's Trust
Platform manifests (`ironcore.factory.manifest`):

    {"protected": b64url(header), "payload": b64url(claims), "signature": b64url(r‖s)}

header is `{"alg":"ES256","kid":<key id>,"typ":"ironcore-firmware/1"}` and claims are
`{"minVersion","model","sha256","size","version"}`. The signature is ES256, a raw 64-byte r‖s
over the ASCII bytes `protected + "." + payload`, so the signed bytes are exactly the strings
in the document: whoever re-serializes the outer object (a rollout embedding it in a device
config, say) cannot change what was signed, and no JSON canonicalization is needed to verify.

The parser trusts nothing: every member is checked for presence, type and range, unknown
members are refused, and each error names the exact problem; base64url (unpadded) and JSON are
read by `ironcore.jose`'s rules.

`check` is the one statement of what makes an image bootable. The device
(`ironcore.device.secure_boot`) calls it with a verifier that asks the secure element; the
server (`ironcore firmware verify`, rollout uploads) with one that uses the public key in
software. Signing, with a CA-style KeyStore, is the server's: `ironcore.firmware.signing`.
This module is a wire format both sides read, so it imports nothing but `jose` and `errors`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ironcore import jose
from ironcore.errors import FailedPrecondition, InvalidArgument

FORMAT = "ironcore-firmware/1"
ALGORITHM = "ES256"
# A manifest is about 450 bytes; the bound keeps what a device parses before the signature
# is checked small.
MANIFEST_MAX_BYTES = 4096
# Versions are compared with a monotonic counter of the secure element, which stops at
# 2,097,151 on an ATECC608 (`device.secure_element.COUNTER_MAX`; a test holds the two equal),
# so a version is an integer in that range.
VERSION_MAX = 2_097_151
# Large enough for a gateway's root filesystem; an MCU image is far smaller.
IMAGE_MAX_BYTES = 1 << 30
MODEL_PATTERN = re.compile(r"[a-zA-Z0-9][-a-zA-Z0-9._]{0,63}")
SIGNATURE_BYTES = 64
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DOCUMENT_MEMBERS = ("payload", "protected", "signature")
_HEADER_MEMBERS = ("alg", "kid", "typ")
_CLAIMS = ("minVersion", "model", "sha256", "size", "version")


class Reason(StrEnum):
    """Why a device (or `ironcore firmware verify`) refused an image; reported in its state."""

    MALFORMED_MANIFEST = "MALFORMED_MANIFEST"
    UNKNOWN_KEY = "UNKNOWN_KEY"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    WRONG_MODEL = "WRONG_MODEL"
    DOWNGRADE = "DOWNGRADE"
    TRUNCATED_IMAGE = "TRUNCATED_IMAGE"
    OVERSIZED_IMAGE = "OVERSIZED_IMAGE"
    DIGEST_MISMATCH = "DIGEST_MISMATCH"
    ELEMENT_ERROR = "ELEMENT_ERROR"


class ManifestError(InvalidArgument):
    """The manifest cannot be read; the message names the exact problem."""

    reason = Reason.MALFORMED_MANIFEST


class FirmwareRejected(FailedPrecondition):
    """A readable manifest, or its image, that must not be booted."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Manifest:
    """The claims a signature covers. Construction checks every rule the parser checks."""

    model: str
    version: int
    size: int
    sha256: bytes
    min_version: int

    def __post_init__(self) -> None:
        if not MODEL_PATTERN.fullmatch(self.model):
            raise ManifestError(
                f"model {self.model!r} must be 1-64 letters, digits, '-', '.' or '_', "
                "starting with a letter or digit"
            )
        _check_int("version", self.version, VERSION_MAX)
        _check_int("minVersion", self.min_version, VERSION_MAX)
        if self.min_version > self.version:
            raise ManifestError(
                f"minVersion {self.min_version} is above version {self.version}: the image "
                "would forbid itself"
            )
        _check_int("size", self.size, IMAGE_MAX_BYTES)
        if len(self.sha256) != 32:
            raise ManifestError(f"sha256 must be 32 bytes, not {len(self.sha256)}")

    @classmethod
    def for_image(cls, model: str, version: int, image: bytes, min_version: int) -> Manifest:
        return cls(model, version, len(image), hashlib.sha256(image).digest(), min_version)

    def claims(self) -> bytes:
        """The payload: compact JSON with sorted keys, so equal manifests sign equal bytes."""
        claims = {
            "minVersion": self.min_version,
            "model": self.model,
            "sha256": self.sha256.hex(),
            "size": self.size,
            "version": self.version,
        }
        return json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SignedManifest:
    manifest: Manifest
    kid: str
    protected: str
    payload: str
    signature: bytes

    @property
    def signing_input(self) -> bytes:
        return f"{self.protected}.{self.payload}".encode()

    @property
    def digest(self) -> bytes:
        """SHA-256 of the signing input: the 32 bytes a secure element verifies."""
        return hashlib.sha256(self.signing_input).digest()

    def to_json(self) -> dict[str, str]:
        return {
            "protected": self.protected,
            "payload": self.payload,
            "signature": jose.b64url_encode(self.signature),
        }

    def encode(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2) + "\n").encode()


def header(kid: str) -> str:
    """The protected header of a manifest signed by the key `kid`, base64url-encoded."""
    if not _HEX40.fullmatch(kid):
        raise ManifestError(f"kid {kid!r} must be 40 lowercase hex digits")
    text = json.dumps(
        {"alg": ALGORITHM, "kid": kid, "typ": FORMAT}, sort_keys=True, separators=(",", ":")
    )
    return jose.b64url_encode(text.encode())


def parse(data: bytes) -> SignedManifest:
    """Read a manifest document; ManifestError names the first problem found."""
    if len(data) > MANIFEST_MAX_BYTES:
        raise ManifestError(f"manifest is {len(data)} bytes; at most {MANIFEST_MAX_BYTES}")
    try:
        return _parse(data)
    except jose.JoseError as error:
        raise ManifestError(error.message) from None


def _parse(data: bytes) -> SignedManifest:
    document = jose.json_object(data, "manifest")
    _members(document, _DOCUMENT_MEMBERS, "manifest")
    for name in _DOCUMENT_MEMBERS:
        if not isinstance(document[name], str):
            raise ManifestError(f"manifest member {name!r} must be a string")
    signature = jose.b64url_decode(document["signature"], "signature")
    if len(signature) != SIGNATURE_BYTES:
        raise ManifestError(
            f"signature is {len(signature)} bytes; ES256 is {SIGNATURE_BYTES} bytes r‖s"
        )
    head = jose.json_object(
        jose.b64url_decode(document["protected"], "protected"), "protected header"
    )
    _members(head, _HEADER_MEMBERS, "protected header")
    if head["alg"] != ALGORITHM:
        raise ManifestError(f"alg is {head['alg']!r}; firmware manifests are {ALGORITHM}")
    if head["typ"] != FORMAT:
        raise ManifestError(f"typ is {head['typ']!r}, not {FORMAT!r}")
    if not isinstance(head["kid"], str) or not _HEX40.fullmatch(head["kid"]):
        raise ManifestError("kid must be 40 lowercase hex digits (SHA-1 of the key's point)")
    claims = jose.json_object(jose.b64url_decode(document["payload"], "payload"), "payload")
    _members(claims, _CLAIMS, "payload")
    if not isinstance(claims["model"], str):
        raise ManifestError("model must be a string")
    if not isinstance(claims["sha256"], str) or not _HEX64.fullmatch(claims["sha256"]):
        raise ManifestError("sha256 must be 64 lowercase hex digits")
    manifest = Manifest(
        model=claims["model"],
        version=claims["version"],
        size=claims["size"],
        sha256=bytes.fromhex(claims["sha256"]),
        min_version=claims["minVersion"],
    )
    return SignedManifest(
        manifest, head["kid"], document["protected"], document["payload"], signature
    )


def _check_int(name: str, value: object, maximum: int) -> None:
    # bool is an int to Python but not to JSON readers elsewhere: `true` is no version.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ManifestError(f"{name} must be an integer")
    if not 0 <= value <= maximum:
        raise ManifestError(f"{name} {value} is out of range 0-{maximum}")


def _members(value: dict[str, Any], expected: tuple[str, ...], what: str) -> None:
    for name in expected:
        if name not in value:
            raise ManifestError(f"{what} lacks {name!r}")
    unknown = sorted(set(value) - set(expected))
    if unknown:
        raise ManifestError(f"{what} has unknown member {unknown[0]!r}")


# (digest of the signing input, raw r‖s) -> whether the trusted key made the signature.
Verifier = Callable[[bytes, bytes], bool]


@dataclass(frozen=True)
class Image:
    """What a manifest says about an image, measured from the image itself."""

    size: int
    sha256: bytes

    @classmethod
    def of_file(cls, path: Path) -> Image:
        # Hashed in chunks: an image can be far larger than the memory a device can spare.
        with path.open("rb") as image:
            digest = hashlib.file_digest(image, "sha256").digest()
        return cls(path.stat().st_size, digest)


def kid(public_key: ec.EllipticCurvePublicKey) -> str:
    """The `kid` of manifests signed by this key: its key id (`jose.key_id`) in lowercase hex."""
    return jose.key_id(public_key).hex()


def check_p256(public_key: ec.EllipticCurvePublicKey) -> None:
    # The ATECC608 verifies P-256 only, so a firmware key on any other curve is useless.
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise InvalidArgument(f"firmware keys are P-256; this one is {public_key.curve.name}")


def software_verifier(public_key: ec.EllipticCurvePublicKey) -> Verifier:
    check_p256(public_key)
    return lambda digest, signature: jose.es256_verify_digest(public_key, signature, digest)


def check(
    document: bytes,
    image: Image,
    verifier: Verifier,
    trusted_kid: str,
    model: str | None,
    floor: int,
) -> SignedManifest:
    """The manifest, if `image` may boot; otherwise FirmwareRejected (or ManifestError).

    The key and signature are checked before any claim is believed; `model` None skips the
    model check (the signer's own tools), and `floor` is the lowest version allowed.
    """
    signed = parse(document)
    if signed.kid != trusted_kid:
        raise FirmwareRejected(
            Reason.UNKNOWN_KEY,
            f"the manifest is signed by key {signed.kid}; the trusted firmware key is "
            f"{trusted_kid}",
        )
    if not verifier(signed.digest, signed.signature):
        raise FirmwareRejected(
            Reason.BAD_SIGNATURE, "the manifest's signature does not verify with the firmware key"
        )
    manifest = signed.manifest
    if model is not None and manifest.model != model:
        raise FirmwareRejected(
            Reason.WRONG_MODEL, f"the manifest is for model {manifest.model!r}, not {model!r}"
        )
    if manifest.version < floor:
        raise FirmwareRejected(
            Reason.DOWNGRADE,
            f"version {manifest.version} is below the lowest version allowed, {floor}",
        )
    if image.size < manifest.size:
        raise FirmwareRejected(
            Reason.TRUNCATED_IMAGE,
            f"the image has {image.size} of the manifest's {manifest.size} bytes "
            "(truncated download?)",
        )
    if image.size > manifest.size:
        raise FirmwareRejected(
            Reason.OVERSIZED_IMAGE,
            f"the image is {image.size} bytes; the manifest says {manifest.size}",
        )
    if image.sha256 != manifest.sha256:
        raise FirmwareRejected(
            Reason.DIGEST_MISMATCH,
            f"the image's SHA-256 is {image.sha256.hex()}; the manifest says "
            f"{manifest.sha256.hex()}",
        )
    return signed
