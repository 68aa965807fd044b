"""Sign a manifest with a KeyStore, and check an image against a manifest.

`check` is the one statement of what makes an image bootable; the device
(`ironcore.device.secure_boot`) calls it with a verifier that asks the secure element, the
`ironcore firmware verify` command with one that uses the public key in software.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from ironcore import jose
from ironcore.errors import InvalidArgument
from ironcore.firmware.manifest import (
    FirmwareRejected,
    Manifest,
    Reason,
    SignedManifest,
    header,
    parse,
)
from ironcore.pki.keystore import KeyStore

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


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The manifest `kid`: the key id (`jose.key_id`, as X.509 SKIs) in lowercase hex."""
    return jose.key_id(public_key).hex()


def check_p256(public_key: ec.EllipticCurvePublicKey) -> None:
    # The ATECC608 verifies P-256 only, so a firmware key on any other curve is useless.
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise InvalidArgument(f"firmware keys are P-256; this one is {public_key.curve.name}")


def sign(key: KeyStore, manifest: Manifest) -> SignedManifest:
    """The manifest signed ES256 by `key` (a file or PKCS#11 key; P-256)."""
    public = key.public_key()
    check_p256(public)
    kid = key_id(public)
    protected = header(kid)
    payload = jose.b64url_encode(manifest.claims())
    signature = jose.es256_signature(key.sign(jose.signing_input(protected, payload)))
    return SignedManifest(manifest, kid, protected, payload, signature)


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
