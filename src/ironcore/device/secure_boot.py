"""Secure boot with A/B image slots, modelled on the ATECC608's SecureBoot command.

The firmware verification key is written into slot 15 of the secure element and the slot is
locked, so nothing running on the device can swap it. An image is booted only if the element
verifies the manifest's signature with that key (`verify_stored`) and the image matches the
manifest (size, SHA-256, model) and its version is at least the value of monotonic counter 1,
the lowest version allowed. After an image boots, the counter is raised to its manifest's
`minVersion`; counters only go up, so no older image can come back (docs/firmware.md).

The directory holds two slots, `a` and `b` (image and manifest each), and `state.json`:

    boot = SecureBoot.provision(element, Path("fw"), "sensor-x", firmware_public_key)
    boot.install(image, manifest)   # into the inactive slot; verified; pending
    boot.boot()                      # pending if it verifies again, else the active one
    boot.state()                     # for the device's Cloud IoT state

A refused image changes nothing but `lastResult`: the device keeps booting what it ran.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ironcore.device import secure_element as se
from ironcore.errors import FailedPrecondition
from ironcore.formats.firmware import (
    MODEL_PATTERN,
    FirmwareRejected,
    Image,
    ManifestError,
    Reason,
    SignedManifest,
    check,
    check_p256,
    kid,
)

FORMAT = "ironcore-secure-boot/1"
# Counter 0 is left for keys bound to a counter (the ATECC608's limited-use keys, in
# Microchip's ATECC608B datasheet).
VERSION_COUNTER = 1
SLOTS = ("a", "b")


class SecureBootError(FailedPrecondition):
    """The device cannot boot at all (not provisioned, or no slot holds a bootable image)."""


@dataclass(frozen=True)
class Result:
    """The outcome of an install or a boot, as reported in the device state."""

    action: str
    ok: bool
    version: int | None = None
    reason: str = ""
    message: str = ""


@dataclass
class _Slot:
    slot: str
    version: int


@dataclass
class _State:
    model: str
    active: _Slot | None = None
    pending: _Slot | None = None
    last: Result | None = None


class SecureBoot:
    def __init__(self, element: se.SecureElement, directory: Path, state: _State) -> None:
        self._element = element
        self._directory = directory
        self._state = state
        self._kid = kid(se.public_key_from_raw(element.read_public_key(se.SECURE_BOOT_KEY_SLOT)))

    @classmethod
    def provision(
        cls,
        element: se.SecureElement,
        directory: Path,
        model: str,
        public_key: ec.EllipticCurvePublicKey,
    ) -> SecureBoot:
        """Write the firmware key into slot 15, lock it, and start an empty state.

        A slot already locked with this same key is accepted (a re-run of provisioning);
        locked with another key, the device can never boot images signed by this one.
        """
        if not MODEL_PATTERN.fullmatch(model):
            raise SecureBootError(f"model {model!r} is not a valid model name")
        check_p256(public_key)
        xy = se.raw_public_key(public_key)
        slot = se.SECURE_BOOT_KEY_SLOT
        if not element.is_locked(slot):
            element.write_public_key(slot, xy)
            element.lock_slot(slot)
        elif element.read_public_key(slot) != xy:
            raise SecureBootError(
                f"slot {slot} is locked with another firmware key; this device only boots "
                "images signed by that key"
            )
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / "state.json").exists():
            raise SecureBootError(f"{directory} already holds a secure boot state")
        boot = cls(element, directory, _State(model))
        boot._save()
        return boot

    @classmethod
    def open(cls, element: se.SecureElement, directory: Path) -> SecureBoot:
        slot = se.SECURE_BOOT_KEY_SLOT
        if not element.is_locked(slot):
            # An unlocked key slot could be rewritten by whatever runs on the device.
            raise SecureBootError(f"the firmware key slot {slot} is not locked; provision first")
        path = directory / "state.json"
        try:
            data = json.loads(path.read_text())
            if data.pop("format") != FORMAT:
                raise ValueError(f"not {FORMAT}")
            state = _State(
                model=data["model"],
                active=_Slot(**data["active"]) if data["active"] else None,
                pending=_Slot(**data["pending"]) if data["pending"] else None,
                last=Result(**data["last"]) if data["last"] else None,
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SecureBootError(f"cannot read secure boot state {path}: {exc}") from None
        return cls(element, directory, state)

    def install(self, image: bytes, manifest: bytes) -> Result:
        """Write an image into the inactive slot and verify it there; pending if it verifies.

        Refused, the slot is cleared and the reason recorded; the running image is untouched.
        """
        active = self._state.active.slot if self._state.active else None
        target = SLOTS[1] if active == SLOTS[0] else SLOTS[0]
        # The target slot may hold an earlier pending image: it stops being bootable first.
        self._state.pending = None
        self._save()
        self._write(self._image_path(target), image)
        self._write(self._manifest_path(target), manifest)
        try:
            signed = self._verify(target)
        except (ManifestError, FirmwareRejected) as refused:
            self._image_path(target).unlink()
            self._manifest_path(target).unlink()
            return self._record(Result("install", False, None, refused.reason, refused.message))
        self._state.pending = _Slot(target, signed.manifest.version)
        return self._record(Result("install", True, signed.manifest.version))

    def boot(self) -> int:
        """Choose the image to run and return its version, as a bootloader does at reset.

        The pending image is verified again (SecureBoot verifies at every boot) and becomes
        the active one if it passes; otherwise the active image boots, verified too, and if
        even that fails the other slot is the last resort. `lastResult` then tells why the
        first choice did not boot.
        """
        known = {s.slot: s.version for s in (self._state.active, self._state.pending) if s}
        candidates = [s.slot for s in (self._state.pending, self._state.active) if s]
        candidates += [s for s in SLOTS if s not in candidates and self._image_path(s).exists()]
        if not candidates:
            raise SecureBootError("no firmware is installed; install an image first")
        self._state.pending = None
        refused: Result | None = None
        for slot in candidates:
            try:
                signed = self._verify(slot)
            except (ManifestError, FirmwareRejected) as error:
                refused = refused or Result(
                    "boot", False, known.get(slot), error.reason, error.message
                )
                continue
            version = signed.manifest.version
            if refused is not None:
                self._state.last = refused
            elif self._state.active is None or self._state.active.slot != slot:
                self._state.last = Result("boot", True, version)
            self._state.active = _Slot(slot, version)
            self._save()
            self._raise_floor(signed.manifest.min_version)
            return version
        self._state.last = refused
        self._save()
        raise SecureBootError("no slot holds an image that verifies; the device cannot boot")

    def state(self) -> dict[str, Any]:
        """The firmware part of the device's Cloud IoT state (JSON-ready)."""
        state = self._state
        return {
            "model": state.model,
            "version": state.active.version if state.active else None,
            "slot": state.active.slot if state.active else None,
            "pendingVersion": state.pending.version if state.pending else None,
            "minVersion": self._element.counter_read(VERSION_COUNTER),
            "lastResult": asdict(state.last) if state.last else None,
        }

    def _verify(self, slot: str) -> SignedManifest:
        def element_verifier(digest: bytes, signature: bytes) -> bool:
            return self._element.verify_stored(digest, signature, se.SECURE_BOOT_KEY_SLOT)

        try:
            return check(
                self._manifest_path(slot).read_bytes(),
                Image.of_file(self._image_path(slot)),
                element_verifier,
                self._kid,
                self._state.model,
                self._element.counter_read(VERSION_COUNTER),
            )
        except se.SecureElementError as error:
            raise FirmwareRejected(Reason.ELEMENT_ERROR, str(error)) from None

    def _raise_floor(self, min_version: int) -> None:
        # Also run at every boot of an already active image, so a reset in the middle of
        # raising the counter finishes the job at the next boot.
        while self._element.counter_read(VERSION_COUNTER) < min_version:
            self._element.counter_increment(VERSION_COUNTER)

    def _record(self, result: Result) -> Result:
        self._state.last = result
        self._save()
        return result

    def _image_path(self, slot: str) -> Path:
        return self._directory / f"slot-{slot}.img"

    def _manifest_path(self, slot: str) -> Path:
        return self._directory / f"slot-{slot}.manifest.json"

    def _save(self) -> None:
        state = self._state
        data = {
            "format": FORMAT,
            "model": state.model,
            "active": asdict(state.active) if state.active else None,
            "pending": asdict(state.pending) if state.pending else None,
            "last": asdict(state.last) if state.last else None,
        }
        self._write(self._directory / "state.json", json.dumps(data, indent=2).encode())

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        # Written beside, flushed and renamed over: a reset leaves the old file or the new.
        partial = path.with_name(path.name + ".partial")
        with partial.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
