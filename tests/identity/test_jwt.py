"""Device JWT verification: tokens real clients mint verify, and every forgery is refused.

Tokens are minted two ways: with PyJWT, which the Cloud IoT Core samples use, and with a raw
signer here, which can also produce the malformed and hostile tokens PyJWT refuses to make.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from ironcore import jose, limits
from ironcore.errors import Code, IronCoreError
from ironcore.identity.credentials import Algorithm, ParsedKey
from ironcore.identity.jwt import (
    MAX_TOKEN_BYTES,
    REASONS,
    Claims,
    InvalidToken,
    verify_device_jwt,
)

PROJECT = "my-project"
NOW = 1_700_000_000.0
SKEW = limits.JWT_CLOCK_SKEW_SECONDS
DAY = limits.JWT_MAX_LIFETIME_SECONDS
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# Module-level rather than fixtures so the hypothesis tests can use them too.
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def parsed(key: PrivateKey) -> ParsedKey:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ParsedKey(Algorithm.ES256, key.public_key(), None)
    return ParsedKey(Algorithm.RS256, key.public_key(), None)


EC = parsed(EC_KEY)
OTHER_EC = parsed(OTHER_EC_KEY)
RSA = parsed(RSA_KEY)
OTHER_RSA = parsed(OTHER_RSA_KEY)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def claims(**overrides: Any) -> dict[str, Any]:
    """What the MQTT sample sends: iat now, exp in 20 minutes, aud the project."""
    values: dict[str, Any] = {"iat": int(NOW), "exp": int(NOW) + 20 * 60, "aud": PROJECT}
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


def raw_signature(key: PrivateKey, signing_input: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32) + s.to_bytes(32)
    return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())


def alg_of(key: PrivateKey) -> str:
    return "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"


def mint(
    key: PrivateKey,
    payload: object = None,
    *,
    header: object = None,
    raw_payload: bytes | None = None,
    sign: Callable[[bytes], bytes] | None = None,
) -> str:
    """A hand-rolled compact JWS: any header, any payload bytes, any signature function."""
    if header is None:
        header = {"alg": alg_of(key), "typ": "JWT"}
    if raw_payload is None:
        raw_payload = json.dumps(claims() if payload is None else payload).encode()
    signing_input = f"{b64json(header)}.{b64(raw_payload)}".encode()
    signature = (sign or (lambda data: raw_signature(key, data)))(signing_input)
    return f"{signing_input.decode()}.{b64(signature)}"


def refused(token: str | bytes, keys: list[ParsedKey], reason: str, now: float = NOW) -> None:
    with pytest.raises(InvalidToken) as caught:
        verify_device_jwt(token, keys, PROJECT, now)
    assert caught.value.reason == reason, caught.value.message
    assert reason in REASONS


# What verifying a token minted from claims() gives.
SAMPLE_CLAIMS = Claims(iat=NOW, exp=NOW + 20 * 60, aud=PROJECT)

BOTH_ALGORITHMS = pytest.mark.parametrize(
    ("key", "keys"), [(EC_KEY, [EC]), (RSA_KEY, [RSA])], ids=["ES256", "RS256"]
)


# Tokens real clients mint.


@BOTH_ALGORITHMS
def test_pyjwt_tokens_verify(key: PrivateKey, keys: list[ParsedKey]) -> None:
    token = jwt.encode(claims(), key, algorithm=alg_of(key))
    result = verify_device_jwt(token, keys, PROJECT, NOW)
    assert result == Claims(iat=NOW, exp=NOW + 20 * 60, aud=PROJECT)
    assert result.deadline == NOW + 20 * 60 + SKEW


@BOTH_ALGORITHMS
def test_raw_signed_tokens_verify(key: PrivateKey, keys: list[ParsedKey]) -> None:
    assert verify_device_jwt(mint(key), keys, PROJECT, NOW).exp == NOW + 20 * 60


def test_float_numeric_dates_from_time_time() -> None:
    # The accesstoken sample puts time.time() floats in iat and exp.
    iat = NOW + 0.123456
    token = jwt.encode(claims(iat=iat, exp=iat + 3600.5), EC_KEY, algorithm="ES256")
    result = verify_device_jwt(token, [EC], PROJECT, NOW)
    assert (result.iat, result.exp) == (iat, iat + 3600.5)


def test_bytes_token_as_sent_in_the_mqtt_password() -> None:
    assert verify_device_jwt(mint(EC_KEY).encode(), [EC], PROJECT, NOW).aud == PROJECT


def test_padded_base64url_parts_are_accepted() -> None:
    def pad(part: str) -> str:
        return part + "=" * (-len(part) % 4)

    token = mint(EC_KEY, claims(aud="pad-me-xx"), header={"alg": "ES256"})
    header, payload, _ = token.split(".")
    assert len(header) % 4 and len(payload) % 4, "the test needs parts that take padding"
    signing_input = f"{pad(header)}.{pad(payload)}".encode()
    padded = f"{signing_input.decode()}.{pad(b64(raw_signature(EC_KEY, signing_input)))}"
    assert verify_device_jwt(padded, [EC], "pad-me-xx", NOW).aud == "pad-me-xx"


@pytest.mark.parametrize(
    "header",
    [{"alg": "ES256"}, {"alg": "ES256", "typ": "JOSE"}, {"alg": "ES256", "kid": "k1", "x5t": "x"}],
)
def test_typ_and_other_harmless_header_fields_are_ignored(header: dict[str, str]) -> None:
    assert verify_device_jwt(mint(EC_KEY, header=header), [EC], PROJECT, NOW) == SAMPLE_CLAIMS


def test_nbf_is_ignored() -> None:
    assert verify_device_jwt(mint(EC_KEY, claims(nbf=NOW + DAY)), [EC], PROJECT, NOW) == (
        SAMPLE_CLAIMS
    )


def test_aud_as_a_one_element_list_is_accepted() -> None:
    token = jwt.encode(claims(aud=[PROJECT]), EC_KEY, algorithm="ES256")
    assert verify_device_jwt(token, [EC], PROJECT, NOW).aud == PROJECT


def test_the_second_key_may_be_the_one_that_verifies() -> None:
    assert verify_device_jwt(mint(EC_KEY), [OTHER_EC, EC], PROJECT, NOW) == SAMPLE_CLAIMS
    keys = [OTHER_EC, OTHER_RSA, EC, RSA]
    assert verify_device_jwt(mint(RSA_KEY), keys, PROJECT, NOW) == SAMPLE_CLAIMS


@pytest.mark.parametrize(
    ("iat", "exp"),
    [
        (NOW + SKEW, NOW + SKEW + 60),  # issued as far ahead as the skew allows
        (NOW - 60 - SKEW, NOW - SKEW),  # expired as long ago as the skew allows
        (NOW, NOW + DAY + SKEW),  # the longest lifetime
    ],
    ids=["iat-now-plus-skew", "exp-now-minus-skew", "lifetime-day-plus-skew"],
)
def test_time_boundaries_are_inclusive(iat: float, exp: float) -> None:
    result = verify_device_jwt(mint(EC_KEY, claims(iat=iat, exp=exp)), [EC], PROJECT, NOW)
    assert result == Claims(iat=iat, exp=exp, aud=PROJECT)


def test_invalid_token_is_an_unauthenticated_ironcore_error() -> None:
    with pytest.raises(IronCoreError) as caught:
        verify_device_jwt("x", [EC], PROJECT, NOW)
    assert isinstance(caught.value, InvalidToken)
    assert caught.value.code is Code.UNAUTHENTICATED
    assert caught.value.message


# The algorithm and the header.


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("with_signature", [False, True])
def test_alg_none_in_every_spelling(alg: str, with_signature: bool) -> None:
    token = mint(EC_KEY, header={"alg": alg, "typ": "JWT"})
    if not with_signature:
        token = token.rsplit(".", 1)[0] + "."
    refused(token, [EC, RSA], "alg")


@pytest.mark.parametrize("header", [{"typ": "JWT"}, {"alg": None}, {"alg": ["ES256"]}, {"alg": 1}])
def test_missing_or_non_string_alg(header: dict[str, Any]) -> None:
    refused(mint(EC_KEY, header=header), [EC], "alg")


@pytest.mark.parametrize(
    "alg", ["HS256", "ES384", "ES512", "RS384", "RS512", "PS256", "EdDSA", "es256", "ES256 "]
)
def test_other_algorithms(alg: str) -> None:
    refused(mint(EC_KEY, header={"alg": alg}), [EC, RSA], "alg")


@BOTH_ALGORITHMS
def test_hs256_keyed_with_the_device_public_key_pem(key: PrivateKey, keys: list[ParsedKey]) -> None:
    # The classic confusion attack: a verifier that lets the token pick the algorithm would use
    # the public key PEM, known to everyone, as an HMAC secret.
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = mint(
        key,
        header={"alg": "HS256", "typ": "JWT"},
        sign=lambda data: hmac.new(pem, data, hashlib.sha256).digest(),
    )
    refused(token, keys, "alg")


def attacker_jwk() -> dict[str, str]:
    numbers = OTHER_EC_KEY.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(numbers.x.to_bytes(32)),
        "y": b64(numbers.y.to_bytes(32)),
    }


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("jwk", attacker_jwk()),
        ("jku", "https://attacker.example/jwks.json"),
        ("x5u", "https://attacker.example/cert.pem"),
        ("x5c", ["MIIBszCCAVmgAwIBAgIU"]),
        ("crit", ["exp"]),
    ],
)
def test_keys_urls_and_crit_in_the_header_are_refused(param: str, value: object) -> None:
    # Signed by the attacker's key that the header offers; the device's own key would not help.
    token = mint(OTHER_EC_KEY, header={"alg": "ES256", param: value})
    refused(token, [EC, OTHER_EC], "header")


# Signatures.


@BOTH_ALGORITHMS
def test_stripped_signature(key: PrivateKey, keys: list[ParsedKey]) -> None:
    refused(mint(key).rsplit(".", 1)[0] + ".", keys, "signature")


@BOTH_ALGORITHMS
@pytest.mark.parametrize("bit", [0, 7, 300, -1])
def test_altered_signature(key: PrivateKey, keys: list[ParsedKey], bit: int) -> None:
    def flipped(data: bytes) -> bytes:
        signature = bytearray(raw_signature(key, data))
        signature[bit // 8] ^= 1 << (bit % 8)
        return bytes(signature)

    refused(mint(key, sign=flipped), keys, "signature")


@BOTH_ALGORITHMS
def test_altered_payload(key: PrivateKey, keys: list[ParsedKey]) -> None:
    header, _, signature = mint(key).split(".")
    longer = b64json(claims(exp=int(NOW) + DAY))
    refused(f"{header}.{longer}.{signature}", keys, "signature")


def test_der_encoded_es256_signature() -> None:
    token = mint(EC_KEY, sign=lambda data: EC_KEY.sign(data, ec.ECDSA(hashes.SHA256())))
    refused(token, [EC], "signature")


def test_r_and_s_zero_are_refused_before_crypto(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_be_called(r: int, s: int) -> bytes:
        raise AssertionError("r = s = 0 reached the signature check")

    monkeypatch.setattr(jose, "encode_dss_signature", must_not_be_called)
    refused(mint(EC_KEY, sign=lambda data: bytes(64)), [EC], "signature")


@pytest.mark.parametrize(
    "replace", [(0, None), (None, 0), (P256_N, None), (None, P256_N), (2**256 - 1, None)]
)
def test_r_or_s_out_of_range(replace: tuple[int | None, int | None]) -> None:
    def tampered(data: bytes) -> bytes:
        good = raw_signature(EC_KEY, data)
        r = int.from_bytes(good[:32]) if replace[0] is None else replace[0]
        s = int.from_bytes(good[32:]) if replace[1] is None else replace[1]
        return r.to_bytes(32) + s.to_bytes(32)

    refused(mint(EC_KEY, sign=tampered), [EC], "signature")


@pytest.mark.parametrize(
    ("key", "keys"),
    [(OTHER_EC_KEY, [EC]), (OTHER_RSA_KEY, [RSA])],
    ids=["ES256", "RS256"],
)
def test_another_devices_valid_token(key: PrivateKey, keys: list[ParsedKey]) -> None:
    refused(mint(key), keys, "signature")


def test_rs256_signature_of_the_wrong_length() -> None:
    good = mint(RSA_KEY).rsplit(".", 1)[0]
    signature = raw_signature(RSA_KEY, good.encode())
    refused(f"{good}.{b64(signature[1:])}", [RSA], "signature")
    refused(f"{good}.{b64(signature + bytes(1))}", [RSA], "signature")


def test_a_key_of_the_wrong_type_for_its_algorithm_is_never_used() -> None:
    # parse_device_key cannot produce these; a hand-built ParsedKey must not crash the verifier.
    rsa_labelled_ec = ParsedKey(Algorithm.RS256, EC_KEY.public_key(), None)
    ec_labelled_rsa = ParsedKey(Algorithm.ES256, RSA_KEY.public_key(), None)
    refused(mint(RSA_KEY), [rsa_labelled_ec], "signature")
    refused(mint(EC_KEY), [ec_labelled_rsa], "signature")


def test_no_key_for_the_tokens_algorithm() -> None:
    refused(mint(RSA_KEY), [EC, OTHER_EC], "no_key")
    refused(mint(EC_KEY), [RSA], "no_key")
    refused(mint(EC_KEY), [], "no_key")


# Claims: checked only once the signature verified, so every token here is properly signed.


@pytest.mark.parametrize(
    "aud", [None, "other-project", "MY-PROJECT", "", 123, [], ["other"], [PROJECT, "other"]]
)
def test_bad_aud(aud: object) -> None:
    payload = claims()
    if aud is None:
        del payload["aud"]
    else:
        payload["aud"] = aud
    refused(mint(EC_KEY, payload), [EC], "aud")


def test_expired() -> None:
    refused(mint(EC_KEY, claims(iat=NOW - 3600, exp=NOW - SKEW - 1)), [EC], "expired")
    refused(mint(EC_KEY), [EC], "expired", now=NOW + 20 * 60 + SKEW + 0.5)


def test_iat_in_the_future() -> None:
    refused(mint(EC_KEY, claims(iat=NOW + SKEW + 1, exp=NOW + 3600)), [EC], "iat_future")


@pytest.mark.parametrize(
    ("iat", "exp"),
    [
        (NOW, NOW + DAY + SKEW + 1),
        (NOW, NOW + 10 * DAY),
        (NOW, NOW),
        (NOW, NOW - 60),
        (NOW - 2 * DAY, NOW + 60),
    ],
)
def test_bad_lifetime(iat: float, exp: float) -> None:
    refused(mint(EC_KEY, claims(iat=iat, exp=exp)), [EC], "lifetime")


@pytest.mark.parametrize(
    ("iat", "exp", "reason"),
    [
        (-(10**400), NOW, "lifetime"),
        (NOW, 10**400, "lifetime"),
        (10**400, 10**400 + 60, "iat_future"),
        (-(10**400), -(10**400) + 60, "expired"),
        (1e308, 1e308 + 60, "lifetime"),
    ],
)
def test_huge_numeric_dates(iat: float, exp: float, reason: str) -> None:
    # JSON integers are unbounded; mixing a 400-digit int with a float must not overflow.
    refused(mint(EC_KEY, claims(iat=iat, exp=exp)), [EC], reason)


@pytest.mark.parametrize(
    "overrides",
    [
        {"iat": str(int(NOW))},
        {"exp": str(int(NOW) + 60)},
        {"exp": True},
        {"iat": False},
        {"iat": None},
        {"exp": None},
        {"iat": [NOW]},
        {"exp": {"n": NOW}},
    ],
)
def test_ill_typed_or_missing_iat_exp(overrides: dict[str, Any]) -> None:
    refused(mint(EC_KEY, claims(**overrides)), [EC], "malformed")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numeric_dates(constant: str) -> None:
    # json.dumps would write these too; a NaN iat would otherwise pass every time comparison.
    for name in ("iat", "exp"):
        raw = json.dumps(claims()).replace(f'"{name}": ', f'"{name}": {constant}, "_": ').encode()
        refused(mint(EC_KEY, raw_payload=raw), [EC], "malformed")


@pytest.mark.parametrize(
    "raw", [b"not json", b"", b"[1, 2]", b'"a string"', b"null", b'{"aud": "x"} trailing', b"\xff"]
)
def test_signed_payload_that_is_not_a_json_object(raw: bytes) -> None:
    refused(mint(EC_KEY, raw_payload=raw), [EC], "malformed")


def test_json_whitespace_around_the_payload_is_accepted() -> None:
    raw = b"\n " + json.dumps(claims()).encode() + b"\r\n"
    assert verify_device_jwt(mint(EC_KEY, raw_payload=raw), [EC], PROJECT, NOW) == SAMPLE_CLAIMS


# Structure.


def test_oversized_token() -> None:
    token = mint(EC_KEY, claims(padding="x" * MAX_TOKEN_BYTES))
    refused(token, [EC], "malformed")
    refused(token.encode(), [EC], "malformed")


def test_token_at_the_size_limit_is_accepted() -> None:
    filler = "x" * (MAX_TOKEN_BYTES * 3 // 4 - 200)
    token = mint(EC_KEY, claims(padding=filler))
    token = mint(EC_KEY, claims(padding=filler + "x" * ((MAX_TOKEN_BYTES - len(token)) * 3 // 4)))
    assert MAX_TOKEN_BYTES - 4 <= len(token) <= MAX_TOKEN_BYTES
    assert verify_device_jwt(token, [EC], PROJECT, NOW) == SAMPLE_CLAIMS


@pytest.mark.parametrize(
    "header_part",
    [
        b64(b"not json"),
        b64(b'["alg", "ES256"]'),
        b64(b'"ES256"'),
        b64(b'{"alg": "ES256"'),
        b64(b'{"alg": "ES256"} {}'),
        b64(b"[" * 2500 + b"]" * 2500),
        b64(b"\xfe\xff"),
        "",
    ],
)
def test_header_that_is_not_a_json_object(header_part: str) -> None:
    _, payload, signature = mint(EC_KEY).split(".")
    refused(f"{header_part}.{payload}.{signature}", [EC], "malformed")


@pytest.mark.parametrize("count", [1, 2, 4, 5])
def test_wrong_number_of_parts(count: int) -> None:
    parts = mint(EC_KEY).split(".")
    refused(".".join((parts * 2)[:count]), [EC], "malformed")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda p: p[:10] + "!" + p[10:],
        lambda p: p[:10] + "+" + p[11:],
        lambda p: p[:10] + "/" + p[11:],
        lambda p: p[:10] + " " + p[10:],
        lambda p: p + "===",
        lambda p: p + "=A",
        lambda p: p[: len(p) // 4 * 4 - 3],
    ],
    ids=["bang", "plus", "slash", "space", "three-pads", "pad-inside", "length-1-mod-4"],
)
@pytest.mark.parametrize("index", [0, 1, 2])
def test_not_base64url(mangle: Callable[[str], str], index: int) -> None:
    parts = mint(EC_KEY).split(".")
    parts[index] = mangle(parts[index])
    refused(".".join(parts), [EC], "malformed")


def test_non_ascii_text() -> None:
    refused(mint(EC_KEY) + "é", [EC], "malformed")
    refused("é" * (MAX_TOKEN_BYTES + 1), [EC], "malformed")


# Properties: nothing but InvalidToken ever escapes, whatever arrives.


def verify_or_refuse(token: str | bytes, keys: list[ParsedKey]) -> Claims | None:
    try:
        return verify_device_jwt(token, keys, PROJECT, NOW)
    except InvalidToken as refusal:
        assert refusal.reason in REASONS
        return None


@settings(max_examples=500, deadline=None)
@given(st.text() | st.binary())
def test_arbitrary_input_only_raises_invalid_token(token: str | bytes) -> None:
    assert verify_or_refuse(token, [EC, RSA]) is None


B64URL = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=120)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    header=st.fixed_dictionaries(
        {"alg": st.sampled_from(["ES256", "RS256"])}, optional={"x": JSON}
    ),
    payload=B64URL,
    signature=st.binary(max_size=300) | st.binary(min_size=64, max_size=64),
    pad=st.sampled_from(["", "=", "=="]),
)
def test_well_formed_headers_with_random_payload_and_signature(
    header: dict[str, Any], payload: str, signature: bytes, pad: str
) -> None:
    token = f"{b64json(header)}{pad}.{payload}{pad}.{b64(signature)}{pad}"
    assert verify_or_refuse(token, [EC, RSA]) is None


@settings(max_examples=300, deadline=None)
@given(
    payload=st.dictionaries(
        st.sampled_from(["iat", "exp", "aud", "nbf", "sub"]) | st.text(max_size=5), JSON
    )
    | JSON,
)
def test_arbitrary_signed_claims_only_raise_invalid_token(payload: object) -> None:
    # Signed by the device: this reaches the claim checks with whatever JSON a buggy client sends.
    # (None mints claims(), the valid sample.)
    result = verify_or_refuse(mint(EC_KEY, payload), [EC])
    if result is not None:
        assert payload is None or isinstance(payload, dict)
        assert result.aud == PROJECT


@settings(max_examples=300, deadline=None)
@given(
    iat=st.one_of(
        st.integers(),
        st.integers(-(10**500), 10**500),
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats(NOW - 2 * DAY, NOW + DAY),
    ),
    exp=st.one_of(
        st.integers(),
        st.integers(-(10**500), 10**500),
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats(NOW - 2 * DAY, NOW + 2 * DAY),
    ),
)
def test_accepted_claims_always_satisfy_the_rules(iat: float, exp: float) -> None:
    result = verify_or_refuse(mint(EC_KEY, claims(iat=iat, exp=exp)), [EC])
    if result is not None:
        assert result.iat <= NOW + SKEW
        assert result.deadline >= NOW
        assert 0 < result.exp - result.iat <= DAY + SKEW
