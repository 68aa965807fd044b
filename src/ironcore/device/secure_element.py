"""The secure element interface: what device code may ask of an ATECC608-class chip.

It mirrors the `atcab_*` calls of Microchip's cryptoauthlib (its Python package is
`cryptoauthlib` on PyPI; `device.atecc608` drives a real chip with it), so the same
device code runs on a software element in tests, on a PKCS#11 token (SoftHSM, an HSM, or
cryptoauthlib's own PKCS#11 module) and on a real chip. The contract:

- `serial_number()` is the 9-byte serial, `01 23 … 01` on ATECC608 parts.
- Key slots are 0 (the permanent identity key, made once at provisioning) and 2, 3, 4
  (secondary keys that `genkey` replaces while the slot is unlocked). Keys are P-256 and are
  generated inside the element.
- `sign` takes a 32-byte digest (the caller hashes, as `atcab_sign` requires) and returns the
  raw 64-byte r‖s, which is exactly a JWS ES256 signature.
- Public keys are the 64-byte X‖Y, as `atcab_get_pubkey` returns them.
- Counters 0 and 1 only go up, to 2,097,151.
- Slot 15 holds a public key written from outside (TrustFLEX keeps the secure-boot key
  there); `verify_stored` verifies with it, and once the slot is locked the key is final.
- There is no call that returns a private key, and implementations must not add one.

Every failure is a `SecureElementError` saying which rule was broken.
"""

from __future__ import annotations

import secrets
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ironcore import jose

SERIAL_BYTES = 9
PERMANENT_SLOT = 0
REGENERABLE_SLOTS = (2, 3, 4)
KEY_SLOTS = (PERMANENT_SLOT, *REGENERABLE_SLOTS)
# Certificate storage on Trust&GO/TrustFLEX parts (compressed there; DER here).
DEVICE_CERT_SLOT = 10
SIGNER_CERT_SLOT = 12
CERT_SLOTS = (DEVICE_CERT_SLOT, SIGNER_CERT_SLOT)
# TrustFLEX parts keep the secure-boot public key in slot 15 (the slot map of Microchip's
# ATECC608B-TFLXTLS datasheet); slots 13 and 14 hold keys validated by a parent key, a scheme
# this interface does not model.
SECURE_BOOT_KEY_SLOT = 15
PUBLIC_KEY_SLOTS = (SECURE_BOOT_KEY_SLOT,)
COUNTERS = (0, 1)
COUNTER_MAX = 2_097_151
DIGEST_BYTES = 32


class SecureElementError(Exception):
    """The element refused a command; the message says which rule it broke."""


class SecureElement(Protocol):
    def serial_number(self) -> bytes:
        """The 9-byte serial number."""

    def get_pubkey(self, slot: int) -> bytes:
        """The public key of a key slot as 64 bytes X‖Y."""

    def genkey(self, slot: int) -> bytes:
        """Replace the key of slot 2, 3 or 4 (unlocked) with a new one; its public key."""

    def sign(self, slot: int, digest: bytes) -> bytes:
        """ECDSA P-256 over a 32-byte digest with a slot's key; raw r‖s (64 bytes)."""

    def verify_extern(self, digest: bytes, signature: bytes, public_key: bytes) -> bool:
        """Whether r‖s `signature` over `digest` verifies with the 64-byte X‖Y `public_key`."""

    def random(self) -> bytes:
        """32 random bytes from the element's generator."""

    def counter_increment(self, counter: int) -> int:
        """Add one to counter 0 or 1 and return the new value."""

    def counter_read(self, counter: int) -> int: ...

    def lock_slot(self, slot: int) -> None:
        """Lock a slot for good: a locked key slot keeps its key, a certificate slot its data."""

    def is_locked(self, slot: int) -> bool: ...

    def read_cert(self, slot: int) -> bytes:
        """The DER certificate stored in slot 10 (device) or 12 (signer); b"" when empty."""

    def write_cert(self, slot: int, der: bytes) -> None:
        """Store a certificate in slot 10 or 12 (refused once the slot is locked)."""

    def write_public_key(self, slot: int, public_key: bytes) -> None:
        """Store a 64-byte X‖Y P-256 key in slot 15 (refused once the slot is locked)."""

    def read_public_key(self, slot: int) -> bytes:
        """The X‖Y key stored in slot 15; b"" when none was written."""

    def verify_stored(self, digest: bytes, signature: bytes, slot: int) -> bool:
        """Whether r‖s `signature` over `digest` verifies with the key stored in slot 15."""


def check_key_slot(slot: int) -> None:
    if slot not in KEY_SLOTS:
        raise SecureElementError(f"slot {slot} holds no private key; key slots are 0 and 2-4")


def check_genkey_slot(slot: int, locked: bool) -> None:
    if slot == PERMANENT_SLOT:
        raise SecureElementError("slot 0 holds the permanent identity key; it cannot be replaced")
    check_key_slot(slot)
    if locked:
        raise SecureElementError(f"slot {slot} is locked; its key can no longer be replaced")


def check_digest(digest: bytes) -> None:
    if len(digest) != DIGEST_BYTES:
        raise SecureElementError(
            f"sign takes a {DIGEST_BYTES}-byte digest (hash the message first), not "
            f"{len(digest)} bytes"
        )


def check_counter(counter: int) -> None:
    if counter not in COUNTERS:
        raise SecureElementError(f"there is no counter {counter}; counters are 0 and 1")


def check_cert_slot(slot: int) -> None:
    if slot not in CERT_SLOTS:
        raise SecureElementError(
            f"slot {slot} does not store a certificate; use {DEVICE_CERT_SLOT} or "
            f"{SIGNER_CERT_SLOT}"
        )


def check_public_key_slot(slot: int) -> None:
    if slot not in PUBLIC_KEY_SLOTS:
        raise SecureElementError(
            f"slot {slot} does not store a public key; use {SECURE_BOOT_KEY_SLOT}"
        )


def check_public_key_write(slot: int, public_key: bytes, locked: bool) -> None:
    check_public_key_slot(slot)
    if locked:
        raise SecureElementError(f"slot {slot} is locked; its public key is final")
    public_key_from_raw(public_key)


def check_stored_key(slot: int, present: bool) -> None:
    if not present:
        raise SecureElementError(f"slot {slot} holds no public key; write one first")


def check_lock_slot(slot: int) -> None:
    if slot not in KEY_SLOTS and slot not in CERT_SLOTS and slot not in PUBLIC_KEY_SLOTS:
        raise SecureElementError(f"slot {slot} cannot be locked here")


def raw_public_key(key: ec.EllipticCurvePublicKey) -> bytes:
    """X‖Y, the 64 bytes `atcab_get_pubkey` returns."""
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


def public_key_from_raw(xy: bytes) -> ec.EllipticCurvePublicKey:
    if len(xy) != 64:
        raise SecureElementError(f"a P-256 public key is 64 bytes X‖Y, not {len(xy)}")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)
    except ValueError:
        raise SecureElementError("the public key is not a point on P-256") from None


def verify_raw(digest: bytes, signature: bytes, public_key: bytes) -> bool:
    """verify_extern in software: r‖s over a prehashed digest."""
    check_digest(digest)
    if len(signature) != jose.ES256_SIGNATURE_BYTES:
        return False
    return jose.es256_verify_digest(public_key_from_raw(public_key), signature, digest)


def new_serial_number() -> bytes:
    """A serial of the ATECC608 shape, `01 23` + 6 random bytes + `01`."""
    return b"\x01\x23" + secrets.token_bytes(6) + b"\x01"


def check_serial_number(serial: bytes) -> None:
    if len(serial) != SERIAL_BYTES or serial[:2] != b"\x01\x23" or serial[8] != 0x01:
        raise SecureElementError(
            f"{serial.hex()} is not an ATECC608 serial number (9 bytes, 0123…01)"
        )
