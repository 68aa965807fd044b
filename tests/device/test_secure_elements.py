"""Both secure element backends keep the same contract (microchip.md §6)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from ironcore.device import secure_element as se
from ironcore.device.pkcs11_element import Pkcs11Element, init_softhsm_token
from ironcore.device.secure_element import SecureElement, SecureElementError
from ironcore.device.software_element import SoftwareElement
from ironcore.pkcs11_tokens import pkcs11_session
from tests.softhsm import PIN, SoftHsm

Reopen = Callable[[], SecureElement]


@pytest.fixture(params=["software", "pkcs11"])
def element(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[SecureElement, Reopen]:
    serial = se.new_serial_number()
    if request.param == "software":
        path = tmp_path / f"{serial.hex()}.json"
        return SoftwareElement.provision(path, serial), lambda: SoftwareElement.open(path)
    softhsm: SoftHsm = request.getfixturevalue("softhsm")
    init_softhsm_token(serial, PIN, PIN)
    element = Pkcs11Element.provision(softhsm.module, serial, PIN)
    return element, lambda: Pkcs11Element.open(softhsm.module, serial, PIN)


def test_contract(element: tuple[SecureElement, Reopen]) -> None:
    chip, reopen = element
    serial = chip.serial_number()
    assert len(serial) == 9 and serial[:2] == b"\x01\x23" and serial[8] == 1
    keys = {slot: chip.get_pubkey(slot) for slot in se.KEY_SLOTS}
    assert len(set(keys.values())) == 4 and all(len(k) == 64 for k in keys.values())

    digest = hashlib.sha256(b"hello").digest()
    for slot in se.KEY_SLOTS:
        signature = chip.sign(slot, digest)
        assert len(signature) == 64
        assert chip.verify_extern(digest, signature, keys[slot])
        assert not chip.verify_extern(digest, signature, keys[4 if slot != 4 else 0])

    with pytest.raises(SecureElementError, match="permanent"):
        chip.genkey(0)
    with pytest.raises(SecureElementError, match="no private key"):
        chip.sign(1, digest)
    with pytest.raises(SecureElementError, match="32-byte digest"):
        chip.sign(0, b"not hashed")
    fresh = chip.genkey(3)
    assert fresh != keys[3] and chip.get_pubkey(3) == fresh
    chip.lock_slot(3)
    with pytest.raises(SecureElementError, match="locked"):
        chip.genkey(3)

    assert chip.counter_read(1) == 0
    assert [chip.counter_increment(1) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(SecureElementError, match="counter 7"):
        chip.counter_increment(7)
    assert len(chip.random()) == 32 and chip.random() != chip.random()

    assert chip.read_cert(10) == b""
    chip.write_cert(10, b"\x30\x03\x02\x01\x01")
    chip.lock_slot(10)
    with pytest.raises(SecureElementError, match="locked"):
        chip.write_cert(10, b"other")

    again = reopen()
    assert again.serial_number() == serial
    assert again.get_pubkey(0) == keys[0] and again.get_pubkey(3) == fresh
    assert again.counter_read(1) == 3 and again.is_locked(3)
    assert again.read_cert(10) == b"\x30\x03\x02\x01\x01"
    assert again.verify_extern(digest, again.sign(0, digest), keys[0])
    assert not any(hasattr(again, name) for name in ("private_key", "export", "read_key"))


def test_a_jwt_signed_inside_verifies_with_pyjwt(element: tuple[SecureElement, Reopen]) -> None:
    chip, _ = element
    header = jwt.utils.base64url_encode(b'{"alg":"ES256","typ":"JWT"}')
    claims = jwt.utils.base64url_encode(b'{"aud":"my-project","iat":1,"exp":4102444800}')
    signing_input = header + b"." + claims
    signature = chip.sign(0, hashlib.sha256(signing_input).digest())
    token = (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()
    public = se.public_key_from_raw(chip.get_pubkey(0)).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert jwt.decode(token, public, algorithms=["ES256"], audience="my-project")["iat"] == 1


def test_pkcs11_keys_never_leave_the_token(softhsm: SoftHsm) -> None:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    serial = se.new_serial_number()
    init_softhsm_token(serial, PIN, PIN)
    Pkcs11Element.provision(softhsm.module, serial, PIN)
    private = pkcs11_session(softhsm.module, serial.hex(), PIN).get_key(
        object_class=ObjectClass.PRIVATE_KEY, id=b"\x00"
    )
    assert private[Attribute.NEVER_EXTRACTABLE] and private[Attribute.LOCAL]
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        private[Attribute.VALUE]
    with pytest.raises(pkcs11.exceptions.AttributeReadOnly):
        private[Attribute.EXTRACTABLE] = True


def test_software_element_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    SoftwareElement.provision(path)
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(SecureElementError, match="never overwritten"):
        SoftwareElement.provision(path)
    with pytest.raises(SecureElementError, match="not an ATECC608 serial"):
        SoftwareElement.provision(tmp_path / "x.json", b"\x00" * 9)
    path.write_text("{}")
    with pytest.raises(SecureElementError, match="is not a"):
        SoftwareElement.open(path)


def test_stored_public_key_verifies_and_locks(element: tuple[SecureElement, Reopen]) -> None:
    chip, reopen = element
    slot = se.SECURE_BOOT_KEY_SLOT
    digest = hashlib.sha256(b"firmware").digest()
    signature = chip.sign(2, digest)
    assert chip.read_public_key(slot) == b""
    with pytest.raises(SecureElementError, match="holds no public key"):
        chip.verify_stored(digest, signature, slot)

    chip.write_public_key(slot, chip.get_pubkey(4))
    chip.write_public_key(slot, chip.get_pubkey(2))  # rewritable until locked
    assert chip.read_public_key(slot) == chip.get_pubkey(2)
    assert chip.verify_stored(digest, signature, slot)
    assert not chip.verify_stored(hashlib.sha256(b"other").digest(), signature, slot)
    assert not chip.verify_stored(digest, signature[:63], slot)
    assert not chip.verify_stored(digest, chip.sign(3, digest), slot)

    with pytest.raises(SecureElementError, match="not a point on P-256"):
        chip.write_public_key(slot, b"\x01" * 64)
    with pytest.raises(SecureElementError, match="64 bytes"):
        chip.write_public_key(slot, b"\x04" + chip.get_pubkey(3))
    for call in (
        lambda: chip.write_public_key(14, chip.get_pubkey(3)),
        lambda: chip.read_public_key(0),
        lambda: chip.verify_stored(digest, signature, 2),
    ):
        with pytest.raises(SecureElementError, match="does not store a public key"):
            call()

    chip.lock_slot(slot)
    with pytest.raises(SecureElementError, match="locked; its public key is final"):
        chip.write_public_key(slot, chip.get_pubkey(3))
    again = reopen()
    assert again.is_locked(slot) and again.read_public_key(slot) == chip.get_pubkey(2)
    assert again.verify_stored(digest, signature, slot)
    with pytest.raises(SecureElementError, match="locked"):
        again.write_public_key(slot, again.get_pubkey(3))
