"""ironcore.jose: one rule each for base64url, JSON objects, key ids and ES256 signatures.

The properties hold for any input: what is written reads back the same, what is read is the
canonical form, and nothing but JoseError ever escapes a reader.
"""

from __future__ import annotations

import base64
import hashlib
import json
from importlib import resources
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from ironcore import jose
from ironcore.errors import InvalidArgument

KEY = ec.generate_private_key(ec.SECP256R1())
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# JSON values Python reads back exactly as it wrote them: finite floats only.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=6)


def stdlib_b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# base64url


@given(st.binary())
def test_b64url_round_trip(data: bytes) -> None:
    text = jose.b64url_encode(data)
    assert text == stdlib_b64url(data)
    assert jose.b64url_decode(text, "x") == data
    assert jose.b64url_decode(text.encode(), "x") == data


@given(st.binary())
def test_b64url_with_padding_where_the_caller_accepts_it(data: bytes) -> None:
    padded = base64.urlsafe_b64encode(data).decode()
    assert jose.b64url_decode(padded, "x", padding=True) == data
    if padded.endswith("="):
        with pytest.raises(jose.JoseError, match="padding, which JWS omits"):
            jose.b64url_decode(padded, "x")


@given(st.text() | st.binary(), st.booleans())
def test_b64url_reads_only_the_canonical_form(text: str | bytes, padding: bool) -> None:
    try:
        data = jose.b64url_decode(text, "x", padding=padding)
    except jose.JoseError as error:
        assert error.message.startswith("x is not base64url: ")
        return
    raw = text if isinstance(text, str) else text.decode("ascii")
    assert jose.b64url_encode(data) == raw.rstrip("=")


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="))
def test_b64url_agrees_with_the_standard_library_where_it_accepts(text: str) -> None:
    try:
        data = jose.b64url_decode(text, "x", padding=True)
    except jose.JoseError:
        return
    assert data == base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.parametrize(
    ("text", "padding", "problem"),
    [
        ("ab+c", False, r"'\+' at position 2 is not in its alphabet"),
        ("ab/c", False, r"'/' at position 2 is not in its alphabet"),
        ("ab c", False, "' ' at position 2"),
        ("é", False, "non-ASCII"),
        ("a=bc", True, "'=' is padding and belongs only at the end"),
        ("abcde", False, "5 characters cannot encode whole bytes"),
        ("QQ==", False, "padding, which JWS omits"),
        ("QQ=", True, "ends in 1 '=' where its length calls for 2"),
        ("QUI==", True, "ends in 2 '=' where its length calls for 1"),
        ("QUJD=", True, "ends in 1 '=' where its length calls for 0"),
        ("QR", False, "sets bits that encode nothing"),
        ("QUJ", False, "sets bits that encode nothing"),
    ],
)
def test_b64url_errors_name_the_problem(text: str, padding: bool, problem: str) -> None:
    with pytest.raises(jose.JoseError, match=f"^signature is not base64url: .*{problem}"):
        jose.b64url_decode(text, "signature", padding=padding)


def test_the_error_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        jose.b64url_decode("!", "x")


# JSON


@given(json_objects)
def test_json_object_round_trip(value: dict[str, Any]) -> None:
    encoded = jose.encode_json(value)
    assert jose.json_object(encoded, "x") == value
    assert jose.json_object(encoded.decode(), "x") == value
    assert jose.json_object(jose.b64url_decode(jose.b64url_json(value), "x"), "x") == value


def test_encode_json_is_compact_in_the_given_order() -> None:
    assert jose.encode_json({"b": 1, "a": [1, 2], "c": "é"}) == b'{"b":1,"a":[1,2],"c":"\\u00e9"}'


@pytest.mark.parametrize("constant", [float("nan"), float("inf"), float("-inf")])
def test_encode_json_refuses_what_json_has_not(constant: float) -> None:
    with pytest.raises(ValueError):
        jose.encode_json({"iat": constant})


@given(st.binary() | st.text())
def test_any_input_gives_an_object_or_a_jose_error(data: bytes | str) -> None:
    try:
        value = jose.json_object(data, "the payload")
    except jose.JoseError as error:
        assert error.message.startswith("the payload ")
        return
    assert isinstance(value, dict)


@given(json_values)
def test_any_json_value_gives_an_object_or_a_jose_error(value: object) -> None:
    try:
        parsed = jose.json_object(json.dumps(value), "x")
    except jose.JoseError:
        assert not isinstance(value, dict)
        return
    assert parsed == value


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"a": 1, "a": 1}', "x is ambiguous: member 'a' appears twice"),
        (b'{"a": {"b": 1, "b": 2}}', "x is ambiguous: member 'b' appears twice"),
        (b'[{"b": 1, "b": 2}]', "x is ambiguous: member 'b' appears twice"),
        (b'{"iat": NaN}', "x is not JSON: NaN is not a JSON number"),
        (b'{"iat": Infinity}', "x is not JSON: Infinity is not a JSON number"),
        (b'{"iat": -Infinity}', "x is not JSON: -Infinity is not a JSON number"),
        (b"[1, 2]", "x must be a JSON object, not a JSON array"),
        (b'"a"', "x must be a JSON object, not a JSON string"),
        (b"1.5", "x must be a JSON object, not a JSON number"),
        (b"true", "x must be a JSON object, not a JSON boolean"),
        (b"null", "x must be a JSON object, not a JSON null"),
        (b"", r"x is not JSON: Expecting value \(line 1, column 1\)"),
        (b'{"a": 1', r"x is not JSON: Expecting ',' delimiter \(line 1, column 8\)"),
        (b'{"a": 1} {}', "x is not JSON: there is more after its value"),
        (b"[" * 5000 + b"]" * 5000, "x is nested too deeply"),
        (b"\xff{}", r"x is not UTF-8 text \(byte 0\)"),
        (b'\xef\xbb\xbf{"a": 1}', "x is not JSON"),
    ],
)
def test_json_errors_name_the_problem(data: bytes, problem: str) -> None:
    with pytest.raises(jose.JoseError, match=f"^{problem}"):
        jose.json_object(data, "x")


def test_json_whitespace_around_the_value_is_json() -> None:
    assert jose.json_object(b' \r\n\t{"a": 1}\n ', "x") == {"a": 1}


def test_loads_takes_any_value_by_the_same_rules() -> None:
    assert jose.loads(b"[1, {}]", "x") == [1, {}]
    with pytest.raises(jose.JoseError, match="appears twice"):
        jose.loads('[{"a": 1, "a": 2}]', "x")


# Key ids


def test_key_id_is_sha1_of_the_uncompressed_point() -> None:
    point = KEY.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert jose.key_id(KEY.public_key()) == hashlib.sha1(point).digest()
    assert len(jose.key_id(KEY.public_key())) == jose.KEY_ID_BYTES


def test_key_id_is_the_subject_key_identifier_of_microchips_signers() -> None:
    folder = resources.files("ironcore.factory") / "trust" / "manifest_signers"
    certificates = [
        x509.load_pem_x509_certificate(item.read_bytes())
        for item in folder.iterdir()
        if item.name.endswith(".crt")
    ]
    assert len(certificates) == 5
    for certificate in certificates:
        public_key = certificate.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        extension = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        assert jose.key_id(public_key) == extension.value.digest


# ES256


def sign(data: bytes, key: ec.EllipticCurvePrivateKey = KEY) -> bytes:
    return jose.es256_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))


@given(st.binary())
def test_es256_round_trip(data: bytes) -> None:
    signature = sign(data)
    assert len(signature) == jose.ES256_SIGNATURE_BYTES
    assert jose.es256_verify(KEY.public_key(), signature, data)
    digest = hashlib.sha256(data).digest()
    assert jose.es256_verify_digest(KEY.public_key(), signature, digest)
    assert not jose.es256_verify(KEY.public_key(), signature, data + b"x")
    assert not jose.es256_verify_digest(KEY.public_key(), signature, bytes(32))


@given(st.binary())
def test_any_signature_bytes_give_a_boolean(signature: bytes) -> None:
    assert jose.es256_verify(KEY.public_key(), signature, b"data") is False
    assert jose.es256_verify_digest(KEY.public_key(), signature, bytes(32)) is False


@pytest.mark.parametrize(
    "replace", [(0, None), (None, 0), (P256_N, None), (None, P256_N), (2**256 - 1, None)]
)
def test_r_or_s_out_of_range(replace: tuple[int | None, int | None]) -> None:
    good = sign(b"data")
    r = int.from_bytes(good[:32]) if replace[0] is None else replace[0]
    s = int.from_bytes(good[32:]) if replace[1] is None else replace[1]
    assert not jose.es256_verify(KEY.public_key(), r.to_bytes(32) + s.to_bytes(32), b"data")


def test_der_signatures_and_short_digests_are_refused() -> None:
    der = KEY.sign(b"data", ec.ECDSA(hashes.SHA256()))
    assert not jose.es256_verify(KEY.public_key(), der, b"data")
    digest = hashlib.sha256(b"x").digest()
    assert jose.es256_verify_digest(KEY.public_key(), sign(b"x"), digest)
    assert not jose.es256_verify_digest(KEY.public_key(), sign(b"x"), digest[:31])


# JWS


def test_compact_parts_and_signing_input() -> None:
    header, payload = jose.b64url_json({"alg": "ES256"}), jose.b64url_json({"aud": "p"})
    signed = jose.signing_input(header, payload)
    token = signed + b"." + jose.b64url_encode(sign(signed)).encode()
    parts = jose.split_compact(token)
    assert parts[0].decode() == header and parts[1].decode() == payload
    assert jose.es256_verify(KEY.public_key(), jose.b64url_decode(parts[2], "s"), signed)


@given(st.binary())
def test_split_compact_takes_any_bytes(token: bytes) -> None:
    try:
        parts = jose.split_compact(token)
    except jose.JoseError:
        assert token.count(b".") != 2
        return
    assert b".".join(parts) == token


def test_signing_input_is_ascii() -> None:
    with pytest.raises(jose.JoseError, match="not ASCII"):
        jose.signing_input("é", "a")
