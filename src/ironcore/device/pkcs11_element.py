"""A secure element on a PKCS#11 token: one token per element, labelled with its serial.

Keys are generated on the token (CKA_LOCAL), sensitive and never extractable; signing is
CKM_ECDSA over the 32-byte digest, which returns the raw r‖s an ATECC608 returns. SoftHSM2
stands in for the chip in tests; cryptoauthlib's PKCS#11 module or an HSM takes the same calls.
SoftHSM keeps its objects in files encrypted under the PIN, so it is a faithful interface, not
a root of trust.

The public key of slot 15 is a token CKO_PUBLIC_KEY object labelled `pubkey15`, and
`verify_stored` runs CKM_ECDSA on the token with it.

Counters, slot locks and certificates are token data objects. A counter is moved on by
creating the new value before destroying the old one, so a crash can leave two (the larger
wins) but never lose a step.
"""

from __future__ import annotations

import subprocess

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import NoSuchKey, PKCS11Error
from pkcs11.util.ec import encode_named_curve_parameters

from ironcore.device import secure_element as se
from ironcore.errors import IronCoreError
from ironcore.pkcs11_tokens import ec_public_key, pkcs11_session


def init_softhsm_token(serial: bytes, pin: str, so_pin: str) -> None:
    """Create the element's token in SoftHSM2 (real HSMs make tokens their own way)."""
    try:
        subprocess.run(
            [
                *("softhsm2-util", "--init-token", "--free", "--label", serial.hex()),
                *("--pin", pin, "--so-pin", so_pin),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        raise se.SecureElementError("softhsm2-util is not installed") from None
    except subprocess.CalledProcessError as exc:
        raise se.SecureElementError(
            f"softhsm2-util could not create token {serial.hex()}: {exc.stderr.strip()}"
        ) from None


class Pkcs11Element:
    """Implements `SecureElement` on the token labelled with the element's serial (hex)."""

    def __init__(self, session: pkcs11.Session, serial: bytes) -> None:
        self._session = session
        self._serial = serial

    @classmethod
    def provision(cls, module: str, serial: bytes, pin: str) -> Pkcs11Element:
        """Make the keys of slots 0 and 2-4 on the (new, empty) token of this serial."""
        se.check_serial_number(serial)
        element = cls.open(module, serial, pin)
        if any(
            True for _ in element._session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
        ):
            raise se.SecureElementError(f"token {serial.hex()} already holds keys")
        for slot in se.KEY_SLOTS:
            element._generate(slot)
        return element

    @classmethod
    def open(cls, module: str, serial: bytes, pin: str) -> Pkcs11Element:
        try:
            session = pkcs11_session(module, serial.hex(), pin)
        except IronCoreError as exc:
            raise se.SecureElementError(exc.message) from None
        return cls(session, serial)

    def serial_number(self) -> bytes:
        return self._serial

    def get_pubkey(self, slot: int) -> bytes:
        se.check_key_slot(slot)
        public = self._get_key(ObjectClass.PUBLIC_KEY, slot)
        assert isinstance(public, pkcs11.PublicKey)
        return se.raw_public_key(ec_public_key(public))

    def genkey(self, slot: int) -> bytes:
        se.check_genkey_slot(slot, self.is_locked(slot))
        for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            self._get_key(object_class, slot).destroy()
        self._generate(slot)
        return self.get_pubkey(slot)

    def sign(self, slot: int, digest: bytes) -> bytes:
        se.check_key_slot(slot)
        se.check_digest(digest)
        private = self._get_key(ObjectClass.PRIVATE_KEY, slot)
        assert isinstance(private, pkcs11.types.SignMixin)
        return private.sign(digest, mechanism=Mechanism.ECDSA)

    def verify_extern(self, digest: bytes, signature: bytes, public_key: bytes) -> bool:
        return se.verify_raw(digest, signature, public_key)

    def random(self) -> bytes:
        return self._session.generate_random(256)

    def counter_increment(self, counter: int) -> int:
        se.check_counter(counter)
        old = self._data(f"counter{counter}")
        value = max((int.from_bytes(o[Attribute.VALUE], "big") for o in old), default=0)
        if value >= se.COUNTER_MAX:
            raise se.SecureElementError(f"counter {counter} is at its maximum {se.COUNTER_MAX}")
        self._store(f"counter{counter}", (value + 1).to_bytes(4, "big"))
        for stale in old:
            stale.destroy()
        return value + 1

    def counter_read(self, counter: int) -> int:
        se.check_counter(counter)
        values = (
            int.from_bytes(o[Attribute.VALUE], "big") for o in self._data(f"counter{counter}")
        )
        return max(values, default=0)

    def lock_slot(self, slot: int) -> None:
        se.check_lock_slot(slot)
        if not self.is_locked(slot):
            self._store(f"lock{slot}", b"\x01")

    def is_locked(self, slot: int) -> bool:
        return bool(self._data(f"lock{slot}"))

    def read_cert(self, slot: int) -> bytes:
        se.check_cert_slot(slot)
        found = self._data(f"cert{slot}")
        return bytes(found[-1][Attribute.VALUE]) if found else b""

    def write_cert(self, slot: int, der: bytes) -> None:
        se.check_cert_slot(slot)
        if self.is_locked(slot):
            raise se.SecureElementError(f"slot {slot} is locked; its certificate is final")
        old = self._data(f"cert{slot}")
        self._store(f"cert{slot}", der)
        for stale in old:
            stale.destroy()

    def write_public_key(self, slot: int, public_key: bytes) -> None:
        se.check_public_key_write(slot, public_key, self.is_locked(slot))
        old = self._stored(slot)
        # EC_POINT is the DER OCTET STRING of 04‖X‖Y, as PKCS#11 v2.40 and SoftHSM want it.
        self._session.create_object(
            {
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.KEY_TYPE: KeyType.EC,
                Attribute.TOKEN: True,
                Attribute.VERIFY: True,
                Attribute.LABEL: f"pubkey{slot}",
                Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1"),
                Attribute.EC_POINT: b"\x04\x41\x04" + public_key,
            }
        )
        for stale in old:
            stale.destroy()

    def read_public_key(self, slot: int) -> bytes:
        se.check_public_key_slot(slot)
        found = self._stored(slot)
        return se.raw_public_key(ec_public_key(found[-1])) if found else b""

    def verify_stored(self, digest: bytes, signature: bytes, slot: int) -> bool:
        se.check_public_key_slot(slot)
        se.check_digest(digest)
        found = self._stored(slot)
        se.check_stored_key(slot, bool(found))
        public = found[-1]
        assert isinstance(public, pkcs11.types.VerifyMixin)
        return bool(public.verify(digest, signature, mechanism=Mechanism.ECDSA))

    def _stored(self, slot: int) -> list[pkcs11.PublicKey]:
        found = self._session.get_objects(
            {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: f"pubkey{slot}"}
        )
        return [key for key in found if isinstance(key, pkcs11.PublicKey)]

    def _generate(self, slot: int) -> None:
        params = self._session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        params.generate_keypair(
            store=True,
            id=bytes([slot]),
            label=f"slot{slot}",
            public_template={Attribute.TOKEN: True},
            private_template={
                Attribute.TOKEN: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.DERIVE: True,
            },
        )

    def _get_key(self, object_class: ObjectClass, slot: int) -> pkcs11.Key:
        try:
            return self._session.get_key(object_class=object_class, id=bytes([slot]))
        except (NoSuchKey, PKCS11Error) as exc:
            raise se.SecureElementError(
                f"token {self._serial.hex()} has no key in slot {slot}: {type(exc).__name__}"
            ) from None

    def _data(self, label: str) -> list[pkcs11.Object]:
        return list(
            self._session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label})
        )

    def _store(self, label: str, value: bytes) -> None:
        self._session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.LABEL: label,
                Attribute.VALUE: value,
            }
        )
