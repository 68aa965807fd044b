"""A secure element in software, persisted in a JSON file (mode 0600).

For tests, emulated reels and development boards without a chip. It follows the interface's
rules exactly (slot 0 permanent, slots 2-4 regenerable until locked, digests only, counters
that only go up) but it is not a root of trust: the file holds the private keys in clear, and
anyone who can read the file can copy the device. Use a PKCS#11 token or a real chip for
anything that matters.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from ironcore import jose
from ironcore.device import secure_element as se

FORMAT = "ironcore-software-element/1"


class SoftwareElement:
    """Implements `SecureElement`; every change is written to the file before it returns."""

    def __init__(self, path: Path, state: dict[str, Any]) -> None:
        self._path = path
        self._serial = bytes.fromhex(state["serial"])
        self._secrets = {int(slot): int(value, 16) for slot, value in state["keys"].items()}
        self._keys: dict[int, ec.EllipticCurvePrivateKey] = {}
        self._public: dict[int, bytes] = {
            int(slot): bytes.fromhex(value) for slot, value in state["public"].items()
        }
        self._locked = set(state["locked"])
        self._counters = list(state["counters"])
        self._certs = {int(slot): base64.b64decode(der) for slot, der in state["certs"].items()}
        # Files written before slot 15 existed have no "stored" entry.
        self._stored = {
            int(slot): bytes.fromhex(xy) for slot, xy in state.get("stored", {}).items()
        }
        self._deferred = False

    @classmethod
    def provision(
        cls,
        path: Path,
        serial: bytes | None = None,
        personalize: Callable[[SoftwareElement], None] | None = None,
    ) -> SoftwareElement:
        """A new element in a new file: keys made for slots 0 and 2-4.

        `personalize` runs on the new element before it is first written (a factory line
        storing certificates), so a reel writes each file once.
        """
        serial = serial or se.new_serial_number()
        se.check_serial_number(serial)
        element = cls(
            path,
            {
                "serial": serial.hex(),
                "keys": {},
                "public": {},
                "locked": [],
                "counters": [0, 0],
                "certs": {},
            },
        )
        element._deferred = True
        for slot in se.KEY_SLOTS:
            element._new_key(slot)
        if personalize is not None:
            personalize(element)
        element._deferred = False
        element._save(create=True)
        return element

    @classmethod
    def open(cls, path: Path) -> SoftwareElement:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise se.SecureElementError(f"cannot read secure element file {path}: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise se.SecureElementError(f"{path} is not a {FORMAT} file")
        return cls(path, state)

    def serial_number(self) -> bytes:
        return self._serial

    def get_pubkey(self, slot: int) -> bytes:
        se.check_key_slot(slot)
        return self._public[slot]

    def genkey(self, slot: int) -> bytes:
        se.check_genkey_slot(slot, slot in self._locked)
        self._new_key(slot)
        self._save()
        return self._public[slot]

    def sign(self, slot: int, digest: bytes) -> bytes:
        se.check_key_slot(slot)
        se.check_digest(digest)
        der = self._key(slot).sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        return jose.es256_signature(der)

    def verify_extern(self, digest: bytes, signature: bytes, public_key: bytes) -> bool:
        return se.verify_raw(digest, signature, public_key)

    def random(self) -> bytes:
        return secrets.token_bytes(32)

    def counter_increment(self, counter: int) -> int:
        se.check_counter(counter)
        if self._counters[counter] >= se.COUNTER_MAX:
            raise se.SecureElementError(f"counter {counter} is at its maximum {se.COUNTER_MAX}")
        self._counters[counter] += 1
        self._save()
        return int(self._counters[counter])

    def counter_read(self, counter: int) -> int:
        se.check_counter(counter)
        return int(self._counters[counter])

    def lock_slot(self, slot: int) -> None:
        se.check_lock_slot(slot)
        self._locked.add(slot)
        self._save()

    def is_locked(self, slot: int) -> bool:
        return slot in self._locked

    def read_cert(self, slot: int) -> bytes:
        se.check_cert_slot(slot)
        return self._certs.get(slot, b"")

    def write_cert(self, slot: int, der: bytes) -> None:
        se.check_cert_slot(slot)
        if slot in self._locked:
            raise se.SecureElementError(f"slot {slot} is locked; its certificate is final")
        self._certs[slot] = der
        self._save()

    def write_public_key(self, slot: int, public_key: bytes) -> None:
        se.check_public_key_write(slot, public_key, slot in self._locked)
        self._stored[slot] = public_key
        self._save()

    def read_public_key(self, slot: int) -> bytes:
        se.check_public_key_slot(slot)
        return self._stored.get(slot, b"")

    def verify_stored(self, digest: bytes, signature: bytes, slot: int) -> bool:
        stored = self.read_public_key(slot)
        se.check_stored_key(slot, bool(stored))
        return se.verify_raw(digest, signature, stored)

    def _new_key(self, slot: int) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        self._secrets[slot] = key.private_numbers().private_value
        self._keys[slot] = key
        self._public[slot] = se.raw_public_key(key.public_key())

    def _key(self, slot: int) -> ec.EllipticCurvePrivateKey:
        key = self._keys.get(slot)
        if key is None:
            key = self._keys[slot] = ec.derive_private_key(self._secrets[slot], ec.SECP256R1())
        return key

    def _save(self, create: bool = False) -> None:
        if self._deferred:
            return
        state = {
            "format": FORMAT,
            "serial": self._serial.hex(),
            "keys": {str(slot): f"{value:064x}" for slot, value in self._secrets.items()},
            "public": {str(slot): xy.hex() for slot, xy in self._public.items()},
            "locked": sorted(self._locked),
            "counters": self._counters,
            "certs": {
                str(slot): base64.b64encode(der).decode() for slot, der in self._certs.items()
            },
            "stored": {str(slot): xy.hex() for slot, xy in self._stored.items()},
        }
        if create:
            try:
                fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                raise se.SecureElementError(
                    f"{self._path} exists; an element is never overwritten"
                ) from None
            with os.fdopen(fd, "w") as out:
                json.dump(state, out)
            return
        # Written beside and renamed over: a crash leaves the old state or the new, never half.
        partial = self._path.with_name(self._path.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(state, out)
        os.replace(partial, self._path)
