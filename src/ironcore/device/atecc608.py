"""A real ATECC608 through Microchip's `cryptoauthlib` (an optional extra:
`pip install 'ironcore[atecc608]'`).

cryptoauthlib mirrors the C API (`atcab_*`) over ctypes: buffers are pre-sized bytearrays and
every call returns a status, 0 for success. This module turns each non-zero status into a
`SecureElementError` naming the call and the status, so a device without the chip (or with it
on another bus) fails at open with a message that says so, never later with garbage. The
library's licence allows use only with Microchip products; it is not a required dependency.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ironcore.device import secure_element as se


def _library() -> ModuleType:
    try:
        library = importlib.import_module("cryptoauthlib")
    except ImportError:
        raise se.SecureElementError(
            "the ATECC608 backend needs Microchip's cryptoauthlib: pip install 'ironcore[atecc608]'"
        ) from None
    library.load_cryptoauthlib()
    return library


class Atecc608Element:
    """An ATECC608 on I2C (bus and 7-bit address as wired), as a `SecureElement`."""

    def __init__(self, library: ModuleType) -> None:
        self._cal = library

    @classmethod
    def open(cls, bus: int = 1, address: int = 0x6A) -> Atecc608Element:
        """Talk to the chip and read its serial number; SecureElementError if none answers.

        `address` is the 8-bit form cryptoauthlib uses (0x6A for Trust&GO, 0x6C for
        TrustFLEX, 0xC0 for blank parts).
        """
        cal = _library()
        config = cal.cfg_ateccx08a_i2c_default()
        config.cfg.atcai2c.bus = bus
        config.cfg.atcai2c.address = address
        element = cls(cal)
        element._call("atcab_init", config, where=f"I2C bus {bus}, address 0x{address:02X}")
        try:
            element.serial_number()
        except se.SecureElementError as error:
            cal.atcab_release()
            raise se.SecureElementError(
                f"no ATECC608 answered on I2C bus {bus} at address 0x{address:02X} ({error})"
            ) from None
        return element

    def close(self) -> None:
        self._cal.atcab_release()

    def _call(self, name: str, *args: Any, where: str = "") -> None:
        status = getattr(self._cal, name)(*args)
        if status != 0:
            try:
                label = self._cal.Status(status).name
            except ValueError:
                label = "unknown status"
            place = f" on {where}" if where else ""
            raise se.SecureElementError(f"{name} failed{place}: {label} ({status})")

    def serial_number(self) -> bytes:
        serial = bytearray(se.SERIAL_BYTES)
        self._call("atcab_read_serial_number", serial)
        return bytes(serial)

    def get_pubkey(self, slot: int) -> bytes:
        se.check_key_slot(slot)
        public = bytearray(64)
        self._call("atcab_get_pubkey", slot, public)
        return bytes(public)

    def genkey(self, slot: int) -> bytes:
        se.check_genkey_slot(slot, self.is_locked(slot))
        public = bytearray(64)
        self._call("atcab_genkey", slot, public)
        return bytes(public)

    def sign(self, slot: int, digest: bytes) -> bytes:
        se.check_key_slot(slot)
        se.check_digest(digest)
        signature = bytearray(64)
        self._call("atcab_sign", slot, digest, signature)
        return bytes(signature)

    def verify_extern(self, digest: bytes, signature: bytes, public_key: bytes) -> bool:
        se.check_digest(digest)
        verified = self._cal.AtcaReference(False)
        self._call("atcab_verify_extern", digest, signature, public_key, verified)
        return bool(verified.value)

    def random(self) -> bytes:
        value = bytearray(32)
        self._call("atcab_random", value)
        return bytes(value)

    def counter_increment(self, counter: int) -> int:
        se.check_counter(counter)
        value = self._cal.AtcaReference(0)
        self._call("atcab_counter_increment", counter, value)
        return int(value.value)

    def counter_read(self, counter: int) -> int:
        se.check_counter(counter)
        value = self._cal.AtcaReference(0)
        self._call("atcab_counter_read", counter, value)
        return int(value.value)

    def lock_slot(self, slot: int) -> None:
        se.check_lock_slot(slot)
        self._call("atcab_lock_data_slot", slot)

    def is_locked(self, slot: int) -> bool:
        locked = self._cal.AtcaReference(False)
        self._call("atcab_is_slot_locked", slot, locked)
        return bool(locked.value)

    def read_cert(self, slot: int) -> bytes:
        se.check_cert_slot(slot)
        raise se.SecureElementError(
            "the ATECC608 stores certificates compressed; read them with cryptoauthlib.tng "
            "(Trust&GO) or your TrustFLEX certificate definitions"
        )

    def write_public_key(self, slot: int, public_key: bytes) -> None:
        se.check_public_key_write(slot, public_key, self.is_locked(slot))
        self._call("atcab_write_pubkey", slot, public_key)

    def read_public_key(self, slot: int) -> bytes:
        # The chip cannot tell an unwritten slot from a written one: it returns what is there.
        se.check_public_key_slot(slot)
        public = bytearray(64)
        self._call("atcab_read_pubkey", slot, public)
        return bytes(public)

    def verify_stored(self, digest: bytes, signature: bytes, slot: int) -> bool:
        se.check_public_key_slot(slot)
        se.check_digest(digest)
        if len(signature) != 64:
            return False  # as the other backends answer; the chip would refuse the length
        verified = self._cal.AtcaReference(False)
        self._call("atcab_verify_stored", digest, signature, slot, verified)
        return bool(verified.value)

    def write_cert(self, slot: int, der: bytes) -> None:
        se.check_cert_slot(slot)
        raise se.SecureElementError(
            "the ATECC608 stores certificates compressed; write them with cryptoauthlib.atcacert"
        )
