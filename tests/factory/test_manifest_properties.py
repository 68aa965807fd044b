"""Whatever bytes arrive, reading and verifying a manifest raises ManifestError and nothing else."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ironcore import jose
from ironcore.factory.manifest import (
    ManifestError,
    TrustedSigner,
    default_trust,
    read_manifest,
    verify_entry,
)
from tests.factory.owner import VECTORS, dummy_signer, sign_with_dummy

TRUST = default_trust()
GENUINE = json.loads((VECTORS / "manifest_ATECC608A-MAH4I.json").read_text())


def _json_values(floats: st.SearchStrategy[float]) -> st.SearchStrategy[object]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | floats | st.text(max_size=40),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=12), children, max_size=4)
        ),
        max_leaves=20,
    )


# NaN and Infinity included: json.dumps writes them, and the reader must refuse them.
json_values = _json_values(st.floats())
# What a signer writes: ironcore's writer refuses NaN and Infinity, as JSON has neither.
finite_json_values = _json_values(st.floats(allow_nan=False, allow_infinity=False))
MEMBERS = ("payload", "protected", "signature", "header")


def _jwks(values: st.SearchStrategy[object] = json_values) -> st.SearchStrategy[dict[str, object]]:
    return st.fixed_dictionaries(
        {
            "kid": st.sampled_from(["0", "2", "x", "123"]) | values,
            "kty": st.sampled_from(["EC", "RSA"]),
            "crv": st.sampled_from(["P-256", "P-384"]),
            "x": st.sampled_from(["", "AA", "A" * 43, "_" * 60]) | values,
            "y": st.sampled_from(["AA", "A" * 43]) | values,
        },
        optional={"x5c": st.lists(st.sampled_from(["", "AAAA", "!!"]) | values, max_size=3)},
    )


def _check(data: bytes | str) -> None:
    try:
        entries = read_manifest(data)
    except ManifestError:
        return
    for entry in entries:
        with contextlib.suppress(ManifestError):
            verify_entry(entry, TRUST)


@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@given(json_values)
def test_arbitrary_json(value: object) -> None:
    _check(json.dumps(value))
    _check(json.dumps([value]))


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(
    st.sampled_from(MEMBERS),
    st.integers(min_value=0, max_value=4000),
    st.text(max_size=6),
    st.integers(min_value=0, max_value=1),
)
def test_mutated_genuine_entries(member: str, position: int, insert: str, which: int) -> None:
    entry = json.loads(json.dumps(GENUINE[which]))
    if member == "header":
        entry["header"] = {"uniqueId": insert}
    else:
        text = entry[member]
        cut = position % (len(text) + 1)
        entry[member] = text[:cut] + insert + text[cut + len(insert) :]
    _check(json.dumps([entry]))


@given(json_values, st.sampled_from(MEMBERS))
def test_members_of_any_type(value: object, member: str) -> None:
    entry = dict(GENUINE[0])
    entry[member] = value
    _check(json.dumps([entry]))


def test_deeply_nested_json() -> None:
    _check("[" * 100_000 + "]" * 100_000)
    _check('[{"payload": "' + "A" * 100_000 + '"}]')


SIGNED_TRUST = TRUST.with_signers([dummy_signer()[0]])
payload_members = st.fixed_dictionaries(
    {},
    optional={
        "version": finite_json_values,
        "uniqueId": st.just("0123aabbccddeeff01") | finite_json_values,
        "provisioningTimestamp": st.just("2024-01-01T00:00:00Z") | finite_json_values,
        "publicKeySet": finite_json_values
        | st.fixed_dictionaries(
            {"keys": st.lists(finite_json_values | _jwks(finite_json_values), max_size=3)}
        ),
        "distributor": finite_json_values,
        "groupId": finite_json_values,
    },
)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(payload_members)
def test_signed_payloads_of_any_shape(payload: dict[str, object]) -> None:
    """Payload parsing sits behind the signature: sign arbitrary payloads to reach it."""
    entry = sign_with_dummy({"uniqueId": "0123aabbccddeeff01", **payload})
    with contextlib.suppress(ManifestError):
        verify_entry(entry, SIGNED_TRUST)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b'{"uniqueId": "0123aabbccddeeff01", "version": NaN}', "NaN is not a JSON number"),
        (
            b'{"uniqueId": "0123aabbccddeeff01", "version": 1, "version": 2}',
            "member 'version' appears twice",
        ),
    ],
)
def test_payloads_json_has_not_got_are_refused_behind_a_valid_signature(
    payload: bytes, problem: str
) -> None:
    """Signed by the trusted signer, yet not JSON by one rule (NaN), or ambiguous (a member
    twice, which two readers could take differently): refused, not guessed at."""
    certificate, key = dummy_signer()
    signer = TrustedSigner.of(certificate)
    protected = jose.b64url_json(
        {"typ": "JWT", "alg": "ES256", "kid": signer.kid, "x5t#S256": signer.x5t}
    )
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    der = key.sign(f"{protected}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    entry = {
        "protected": protected,
        "payload": body,
        "header": {"uniqueId": "0123aabbccddeeff01"},
        "signature": jose.b64url_encode(jose.es256_signature(der)),
    }
    with pytest.raises(ManifestError, match=problem):
        verify_entry(entry, SIGNED_TRUST)
