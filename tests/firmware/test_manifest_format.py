"""The manifest format: a round trip, every malformation named, and no other error type."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from ironcore.errors import InvalidArgument
from ironcore.firmware.signing import sign
from ironcore.formats.firmware import (
    Image,
    Manifest,
    ManifestError,
    check,
    kid,
    parse,
    software_verifier,
)
from ironcore.pki.keystore import EncryptedFileKey, KeyStore

IMAGE = b"\x7fELF firmware image " * 100


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    path = tmp_path_factory.mktemp("fw") / "fw.key"
    return EncryptedFileKey.generate(path, ec.SECP256R1(), b"passphrase")


@pytest.fixture(scope="module")
def document(key: KeyStore) -> dict[str, str]:
    signed = sign(key, Manifest.for_image("sensor-x", 7, IMAGE, 5))
    parsed: dict[str, str] = json.loads(signed.encode())
    return parsed


def b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def test_round_trip_and_what_is_signed(key: KeyStore, document: dict[str, str]) -> None:
    signed = parse(json.dumps(document).encode())
    assert signed.manifest == Manifest.for_image("sensor-x", 7, IMAGE, 5)
    assert signed.kid == kid(key.public_key())
    assert unb64(document["protected"]) == {
        "alg": "ES256",
        "kid": signed.kid,
        "typ": "ironcore-firmware/1",
    }
    assert unb64(document["payload"]) == {
        "minVersion": 5,
        "model": "sensor-x",
        "sha256": signed.manifest.sha256.hex(),
        "size": len(IMAGE),
        "version": 7,
    }
    # Re-serializing the outer object (as a rollout embedding it would) changes nothing signed.
    assert parse(json.dumps(document, indent=4, sort_keys=True).encode()) == signed
    image = Image(len(IMAGE), signed.manifest.sha256)
    verifier = software_verifier(key.public_key())
    assert check(signed.encode(), image, verifier, signed.kid, "sensor-x", 7) == signed


def test_any_jose_library_verifies_it(key: KeyStore, document: dict[str, str]) -> None:
    """The signature is plain JWS ES256: PyJWT checks the compact form without our code."""
    compact = f"{document['protected']}.{document['payload']}.{document['signature']}"
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert json.loads(jwt.api_jws.decode(compact, public, algorithms=["ES256"]))["version"] == 7


Mutation = Callable[[dict[str, Any]], Any]


def claims(**changes: Any) -> Mutation:
    def mutate(document: dict[str, Any]) -> dict[str, Any]:
        payload = unb64(document["payload"])
        payload.update(changes)
        return {**document, "payload": b64({k: v for k, v in payload.items() if v is not ...})}

    return mutate


def head(**changes: Any) -> Mutation:
    def mutate(document: dict[str, Any]) -> dict[str, Any]:
        return {**document, "protected": b64({**unb64(document["protected"]), **changes})}

    return mutate


MALFORMED: list[tuple[str, Mutation, str]] = [
    ("not an object", lambda d: [d], "manifest must be a JSON object, not a JSON array"),
    (
        "no signature",
        lambda d: {"payload": d["payload"], "protected": d["protected"]},
        "lacks 'signature'",
    ),
    ("extra member", lambda d: {**d, "header": {}}, "unknown member 'header'"),
    ("number payload", lambda d: {**d, "payload": 7}, "'payload' must be a string"),
    (
        "padded base64",
        lambda d: {**d, "signature": d["signature"] + "=="},
        "signature is not base64url",
    ),
    ("short signature", lambda d: {**d, "signature": b64(b"\x01" * 63)}, "signature is 63 bytes"),
    ("DER signature", lambda d: {**d, "signature": b64(b"\x30" * 71)}, "signature is 71 bytes"),
    ("alg none", head(alg="none"), "alg is 'none'"),
    ("other typ", head(typ="JWT"), "typ is 'JWT'"),
    ("kid upper", head(kid="AB" * 20), "kid must be 40 lowercase hex"),
    ("header member", head(x5c=[]), "protected header has unknown member 'x5c'"),
    ("payload list", lambda d: {**d, "payload": b64([1])}, "payload must be a JSON object"),
    ("payload not JSON", lambda d: {**d, "payload": b64(b"{version")}, "payload is not JSON"),
    ("no model", claims(model=...), "payload lacks 'model'"),
    ("extra claim", claims(url="http://x"), "payload has unknown member 'url'"),
    ("bad model", claims(model="../etc"), "model '../etc' must be"),
    ("numeric model", claims(model=7), "model must be a string"),
    ("bool version", claims(version=True), "version must be an integer"),
    ("float version", claims(version=7.0), "version must be an integer"),
    ("string version", claims(version="7"), "version must be an integer"),
    ("huge version", claims(version=2_097_152), "version 2097152 is out of range 0-2097151"),
    ("negative size", claims(size=-1), "size -1 is out of range"),
    ("min above version", claims(minVersion=8), "minVersion 8 is above version 7"),
    ("upper sha256", claims(sha256="AB" * 32), "sha256 must be 64 lowercase hex"),
    ("short sha256", claims(sha256="ab" * 31), "sha256 must be 64 lowercase hex"),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [(m, msg) for _, m, msg in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_each_malformation_is_named(
    document: dict[str, str], mutate: Mutation, message: str
) -> None:
    with pytest.raises(ManifestError, match=message.replace("(", r"\(")):
        parse(json.dumps(mutate(document)).encode())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "manifest is not JSON"),
        (b"\xff\xfe{}", "manifest is not UTF-8"),
        (b'{"payload": NaN}', "NaN is not a JSON number"),
        (b'{"payload": "a", "payload": "b"}', "member 'payload' appears twice"),
        (b"[" * 2040 + b"]" * 2040, "manifest is nested too deeply"),
        (b" " * 4097, "manifest is 4097 bytes; at most 4096"),
    ],
)
def test_unreadable_documents(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse(data)


def test_a_truncated_manifest_is_refused(document: dict[str, str]) -> None:
    data = json.dumps(document).encode()
    for cut in range(len(data)):
        with pytest.raises(ManifestError):
            parse(data[:cut])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.binary(max_size=5000))
def test_any_bytes_give_a_manifest_error(data: bytes) -> None:
    with pytest.raises(ManifestError):
        parse(data)


@settings(max_examples=300)
@given(json_values)
def test_any_json_document_gives_a_manifest_error(value: Any) -> None:
    with pytest.raises(ManifestError):
        parse(json.dumps(value).encode())


VALID_HEAD = {"alg": "ES256", "kid": "ab" * 20, "typ": "ironcore-firmware/1"}
VALID_CLAIMS = {"minVersion": 1, "model": "m", "sha256": "00" * 32, "size": 1, "version": 2}


@settings(max_examples=500)
@given(
    st.dictionaries(st.sampled_from([*VALID_CLAIMS, "extra"]), json_values),
    st.sampled_from(sorted(VALID_CLAIMS)),
    st.dictionaries(st.sampled_from([*VALID_HEAD, "jku"]), json_values) | st.just(VALID_HEAD),
    st.binary(min_size=64, max_size=64) | st.binary(max_size=80),
)
def test_any_content_in_a_well_shaped_document_parses_or_names_the_problem(
    changes: dict[str, Any], keep: str, protected: dict[str, Any], signature: bytes
) -> None:
    # Mostly valid claims with some members replaced or added, one always left valid.
    payload = {**VALID_CLAIMS, **changes, keep: VALID_CLAIMS[keep]}
    data = json.dumps(
        {"protected": b64(protected), "payload": b64(payload), "signature": b64(signature)}
    ).encode()
    try:
        signed = parse(data)
    except ManifestError:
        return
    claims = signed.manifest
    assert (claims.model, claims.version, claims.size, claims.min_version) == (
        payload["model"],
        payload["version"],
        payload["size"],
        payload["minVersion"],
    )
    assert claims.sha256.hex() == payload["sha256"] and signed.signature == signature


def test_firmware_keys_are_p256(tmp_path: Path) -> None:
    p384 = EncryptedFileKey.generate(tmp_path / "k", ec.SECP384R1(), b"passphrase")
    with pytest.raises(InvalidArgument, match="firmware keys are P-256; this one is secp384r1"):
        sign(p384, Manifest.for_image("m", 1, b"x", 1))
