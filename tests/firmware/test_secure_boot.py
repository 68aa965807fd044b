"""Secure boot on every secure element backend that runs here (software, SoftHSM2).

Each bad input of issue 7 item 4 is refused with its reason in the device state, and the
device keeps booting the image it ran before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ironcore.device import secure_element as se
from ironcore.device.secure_boot import VERSION_COUNTER, SecureBoot, SecureBootError
from ironcore.device.secure_element import SecureElement, SecureElementError
from ironcore.firmware.signing import sign
from ironcore.formats.firmware import VERSION_MAX, Manifest, Reason
from ironcore.pki.keystore import KeyStore

MODEL = "sensor-x"


def release(
    key: KeyStore, version: int, min_version: int | None = None, model: str = MODEL
) -> tuple[bytes, bytes]:
    image = f"{model} firmware {version}\n".encode() * 500
    floor = version if min_version is None else min_version
    return image, sign(key, Manifest.for_image(model, version, image, floor)).encode()


def device(element: SecureElement, key: KeyStore, directory: Path) -> SecureBoot:
    return SecureBoot.provision(element, directory, MODEL, key.public_key())


def test_sign_install_boot_on_each_element_and_key_store(
    element: SecureElement, signing_key: KeyStore, tmp_path: Path
) -> None:
    boot = device(element, signing_key, tmp_path / "fw")
    assert element.is_locked(se.SECURE_BOOT_KEY_SLOT)
    with pytest.raises(SecureBootError, match="no firmware is installed"):
        boot.boot()

    assert boot.install(*release(signing_key, 1, 0)).ok
    assert boot.state()["pendingVersion"] == 1 and boot.state()["version"] is None
    assert boot.boot() == 1
    assert boot.state() == {
        "model": MODEL,
        "version": 1,
        "slot": "a",
        "pendingVersion": None,
        "minVersion": 0,
        "lastResult": {"action": "boot", "ok": True, "version": 1, "reason": "", "message": ""},
    }

    result = boot.install(*release(signing_key, 2, 1))
    assert (result.ok, result.version) == (True, 2)
    assert boot.boot() == 2 and boot.state()["slot"] == "b"
    assert element.counter_read(VERSION_COUNTER) == 1  # raised to version 2's minVersion

    assert boot.install(*release(signing_key, 4)).ok  # minVersion defaults to the version
    assert boot.boot() == 4 and boot.state()["slot"] == "a"
    assert element.counter_read(VERSION_COUNTER) == 4

    again = SecureBoot.open(element, tmp_path / "fw")
    assert again.boot() == 4
    assert again.state()["minVersion"] == 4
    json.dumps(again.state())  # reported as the device's Cloud IoT state as it is


Bad = Callable[[KeyStore, KeyStore], tuple[bytes, bytes]]


def tampered_image(key: KeyStore, _: KeyStore) -> tuple[bytes, bytes]:
    image, manifest = release(key, 5, 3)
    return image[:100] + b"X" + image[101:], manifest


def wrong_signature(key: KeyStore, _: KeyStore) -> tuple[bytes, bytes]:
    image, manifest = release(key, 5, 3)
    document = json.loads(manifest)
    other = release(key, 6, 3)[1]  # a genuine signature, of another manifest
    document["signature"] = json.loads(other)["signature"]
    return image, json.dumps(document).encode()


def tampered_claims(key: KeyStore, _: KeyStore) -> tuple[bytes, bytes]:
    """A genuine manifest whose payload was edited to say the image is a newer version."""
    image, manifest = release(key, 5, 3)
    document = json.loads(manifest)
    newer = release(key, 9, 3)[1]
    document["payload"] = json.loads(newer)["payload"]
    return image, json.dumps(document).encode()


def other_key(_: KeyStore, other: KeyStore) -> tuple[bytes, bytes]:
    return release(other, 5, 3)


def other_model(key: KeyStore, _: KeyStore) -> tuple[bytes, bytes]:
    return release(key, 5, 3, model="sensor-y")


def downgrade(key: KeyStore, _: KeyStore) -> tuple[bytes, bytes]:
    return release(key, 2, 1)  # signed and genuine, but below the counter (3)


def truncated_image(key: KeyStore, _: KeyStore) -> tuple[bytes, bytes]:
    image, manifest = release(key, 5, 3)
    return image[: len(image) // 2], manifest


def longer_image(key: KeyStore, _: KeyStore) -> tuple[bytes, bytes]:
    image, manifest = release(key, 5, 3)
    return image + b"\x00", manifest


def truncated_manifest(key: KeyStore, _: KeyStore) -> tuple[bytes, bytes]:
    image, manifest = release(key, 5, 3)
    return image, manifest[: len(manifest) - 20]


BAD_INPUTS: list[tuple[Bad, Reason, str]] = [
    (tampered_image, Reason.DIGEST_MISMATCH, "SHA-256 is"),
    (wrong_signature, Reason.BAD_SIGNATURE, "does not verify"),
    (tampered_claims, Reason.BAD_SIGNATURE, "does not verify"),
    (other_key, Reason.UNKNOWN_KEY, "signed by key"),
    (other_model, Reason.WRONG_MODEL, "for model 'sensor-y', not 'sensor-x'"),
    (downgrade, Reason.DOWNGRADE, "version 2 is below the lowest version allowed, 3"),
    (truncated_image, Reason.TRUNCATED_IMAGE, "truncated download"),
    (longer_image, Reason.OVERSIZED_IMAGE, "the manifest says"),
    (truncated_manifest, Reason.MALFORMED_MANIFEST, "manifest is not JSON"),
]


@pytest.mark.parametrize(
    ("bad", "reason", "message"), BAD_INPUTS, ids=[b.__name__ for b, _, _ in BAD_INPUTS]
)
def test_bad_input_is_refused_and_the_device_keeps_its_image(
    element: SecureElement,
    signing_key: KeyStore,
    other_key: KeyStore,
    tmp_path: Path,
    bad: Bad,
    reason: Reason,
    message: str,
) -> None:
    boot = device(element, signing_key, tmp_path / "fw")
    assert boot.install(*release(signing_key, 3)).ok
    assert boot.boot() == 3

    result = boot.install(*bad(signing_key, other_key))
    assert (result.ok, result.reason) == (False, reason)
    assert message in result.message
    state = boot.state()
    assert state["lastResult"]["reason"] == reason and message in state["lastResult"]["message"]
    assert (state["version"], state["slot"], state["pendingVersion"]) == (3, "a", None)
    assert not (tmp_path / "fw" / "slot-b.img").exists()  # the refused image is not kept

    assert SecureBoot.open(element, tmp_path / "fw").boot() == 3
    assert element.counter_read(VERSION_COUNTER) == 3
    assert boot.install(*release(signing_key, 5, 3)).ok  # and a good image still installs


def test_boot_verifies_the_pending_image_again(
    element: SecureElement, signing_key: KeyStore, tmp_path: Path
) -> None:
    boot = device(element, signing_key, tmp_path / "fw")
    boot.install(*release(signing_key, 1))
    boot.boot()
    assert boot.install(*release(signing_key, 2)).ok
    # Changed in storage between install and reset: SecureBoot checks at every boot.
    stored = tmp_path / "fw" / "slot-b.img"
    stored.write_bytes(stored.read_bytes().replace(b"2", b"7"))
    assert boot.boot() == 1
    last = boot.state()["lastResult"]
    assert (last["action"], last["ok"], last["version"], last["reason"]) == (
        "boot",
        False,
        2,
        Reason.DIGEST_MISMATCH,
    )
    assert element.counter_read(VERSION_COUNTER) == 1 and boot.state()["pendingVersion"] is None
    assert boot.boot() == 1  # the refusal stays reported until something else happens
    assert boot.state()["lastResult"]["reason"] == Reason.DIGEST_MISMATCH


def test_a_corrupted_active_image_falls_back_to_the_other_slot(
    element: SecureElement, signing_key: KeyStore, tmp_path: Path
) -> None:
    boot = device(element, signing_key, tmp_path / "fw")
    boot.install(*release(signing_key, 1))
    boot.boot()
    boot.install(*release(signing_key, 2, 1))
    assert boot.boot() == 2
    (tmp_path / "fw" / "slot-b.img").write_bytes(b"bit rot")
    assert boot.boot() == 1
    assert boot.state()["lastResult"]["reason"] == Reason.TRUNCATED_IMAGE
    (tmp_path / "fw" / "slot-a.manifest.json").write_bytes(b"{}")
    with pytest.raises(SecureBootError, match="no slot holds an image that verifies"):
        boot.boot()
    assert boot.state()["lastResult"]["reason"] == Reason.MALFORMED_MANIFEST


def test_the_key_slot_is_locked_and_cannot_be_rewritten(
    element: SecureElement, signing_key: KeyStore, other_key: KeyStore, tmp_path: Path
) -> None:
    device(element, signing_key, tmp_path / "one")
    with pytest.raises(SecureElementError, match="locked; its public key is final"):
        element.write_public_key(se.SECURE_BOOT_KEY_SLOT, se.raw_public_key(other_key.public_key()))
    with pytest.raises(SecureBootError, match="locked with another firmware key"):
        device(element, other_key, tmp_path / "two")
    device(element, signing_key, tmp_path / "three")  # the same key again is fine
    with pytest.raises(SecureBootError, match="already holds a secure boot state"):
        device(element, signing_key, tmp_path / "one")


def test_an_unlocked_key_slot_is_not_trusted(
    element: SecureElement, signing_key: KeyStore, tmp_path: Path
) -> None:
    with pytest.raises(SecureBootError, match="slot 15 is not locked"):
        SecureBoot.open(element, tmp_path)
    element.write_public_key(se.SECURE_BOOT_KEY_SLOT, se.raw_public_key(signing_key.public_key()))
    with pytest.raises(SecureBootError, match="slot 15 is not locked"):
        SecureBoot.open(element, tmp_path)


def test_every_manifest_version_fits_the_elements_counter() -> None:
    # The anti-rollback floor is a monotonic counter: a version above its maximum could never
    # be recorded, so the manifest format may not allow one.
    assert VERSION_MAX == se.COUNTER_MAX
