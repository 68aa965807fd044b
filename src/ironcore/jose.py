"""The JOSE pieces ironcore reads and writes, each with one rule: base64url, JSON objects, key
ids, ES256 signatures, and JWS in its compact (device JWTs) and flattened (firmware and
Microchip manifests) serializations.

Every reader here is strict and says exactly what is wrong, with one error type, `JoseError`;
callers turn it into their own (`InvalidToken`, `ManifestError`) with the message unchanged.

- **base64url** (RFC 7515 §2) is read only in its canonical form: the URL-safe alphabet, no
  length that cannot encode whole bytes, no set bits after the last byte. Padding is refused
  unless the caller accepts it (Cloud IoT Core devices and Microchip's tools); then it must
  be exactly the padding the length needs.
- **JSON** (RFC 8259) must be UTF-8, and a member name may appear only once in an object (two
  readers could pick different copies, RFC 7515 §4 lets us refuse). `NaN` and `Infinity`,
  which Python writes and reads but JSON does not have, are refused: a NaN compares false
  with everything and would pass every range check.
- **Key ids** are the 20-byte SHA-1 of the public key's uncompressed point, the
  SubjectKeyIdentifier of RFC 5280 §4.2.1.2 method (1), which ironcore's CAs and Microchip
  put in certificates. `key_id` returns those bytes; each format writes them its own way
  (hex in firmware manifests, revocation records and the CLI, base64url in Microchip's).
- **ES256** (RFC 7518 §3.4) signatures are the raw 64-byte r‖s, which is what a secure
  element returns; `cryptography` speaks DER, so they are converted here, both ways.

It imports nothing of ironcore but `errors`: the device SDK and the server both build on it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from ironcore.errors import InvalidArgument

ES256_SIGNATURE_BYTES = 64
KEY_ID_BYTES = 20
# Order of the P-256 group: r and s of a valid ECDSA signature lie in [1, n-1].
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# The last character of a canonical encoding whose length is 2 or 3 mod 4: its bits after the
# last whole byte (4 or 2 of them) are zero.
_CANONICAL_LAST = {2: frozenset(_ALPHABET[::16]), 3: frozenset(_ALPHABET[::4])}
_COMPACT = re.compile(rb"([^.]*)\.([^.]*)\.([^.]*)")
_JSON_WHITESPACE = " \t\n\r"

# Immutable parameter objects, shared by every call.
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_ECDSA_PREHASHED = ec.ECDSA(Prehashed(hashes.SHA256()))


class JoseError(InvalidArgument):
    """Text that is not the base64url, JSON or JWS it must be; the message names the problem."""


# base64url


def b64url_encode(data: bytes) -> str:
    """base64url without padding, as JWS writes every part."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str | bytes, what: str, *, padding: bool = False) -> bytes:
    """The bytes of a canonical base64url text; JoseError naming `what` and its problem.

    With `padding`, the text may end in the '=' its length calls for (and no other number).
    """
    if isinstance(text, str):
        if not text.isascii():
            raise JoseError(f"{what} is not base64url: it holds non-ASCII characters")
        data = text.encode("ascii")
    else:
        data = text
    # Every device JWT is three of these: the checks that pass are C scans, and the message
    # for one that fails is worked out only then.
    stripped = data.rstrip(b"=")
    remainder = len(stripped) % 4
    pads = len(data) - len(stripped)
    if (
        remainder == 1
        or (pads and (not padding or pads != -len(stripped) % 4))
        or b"+" in stripped
        or b"/" in stripped
    ):
        raise JoseError(f"{what} is not base64url: {_b64url_problem(data, padding)}")
    try:
        value = binascii.a2b_base64(
            stripped.translate(_FROM_URLSAFE) + _PADDING[remainder], strict_mode=True
        )
    except binascii.Error:
        raise JoseError(f"{what} is not base64url: {_b64url_problem(data, padding)}") from None
    if remainder and stripped[-1] not in _CANONICAL_LAST[remainder]:
        raise JoseError(
            f"{what} is not base64url: its last character sets bits that encode nothing "
            "(not the canonical encoding)"
        )
    return value


_PADDING = {0: b"", 2: b"==", 3: b"="}


def _b64url_problem(data: bytes, padding: bool) -> str:
    stripped = data.rstrip(b"=")
    for position, char in enumerate(stripped):
        if char not in _ALPHABET:
            if char == ord("="):
                return "'=' is padding and belongs only at the end"
            return f"{chr(char)!r} at position {position} is not in its alphabet (A-Z a-z 0-9 - _)"
    if len(stripped) % 4 == 1:
        return f"{len(stripped)} characters cannot encode whole bytes"
    pads = len(data) - len(stripped)
    if not padding:
        return "it ends in '=' padding, which JWS omits"
    return f"it ends in {pads} '=' where its length calls for {-len(stripped) % 4}"


# JSON


def encode_json(value: Mapping[str, Any]) -> bytes:
    """Compact JSON (no spaces), members in the mapping's order; NaN and Infinity refused."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def b64url_json(value: Mapping[str, Any]) -> str:
    """The base64url of `encode_json(value)`: a JWS header or payload."""
    return b64url_encode(encode_json(value))


def loads(data: bytes | str, what: str) -> Any:
    """One JSON value, read by the rules above; JoseError naming `what` and its problem."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JoseError(f"{what} is not UTF-8 text (byte {exc.start})") from None
    else:
        text = data
    # One decoder used through raw_decode: json.loads builds a decoder for every call given an
    # option, and that and its whitespace scans were a quarter of a device JWT's time outside
    # the signature check.
    text = text.strip(_JSON_WHITESPACE)
    try:
        value, end = _DECODER.raw_decode(text)
    except _Refused as exc:
        raise JoseError(f"{what} {exc}") from None
    except json.JSONDecodeError as exc:
        raise JoseError(
            f"{what} is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise JoseError(f"{what} is nested too deeply") from None
    if end != len(text):
        raise JoseError(f"{what} is not JSON: there is more after its value")
    return value


def json_object(data: bytes | str, what: str) -> dict[str, Any]:
    """A JSON object, read by the rules above; JoseError naming `what` and its problem."""
    value = loads(data, what)
    if not isinstance(value, dict):
        raise JoseError(f"{what} must be a JSON object, not a JSON {json_kind(value)}")
    return value


def json_kind(value: object) -> str:
    """What a parsed JSON value is, in JSON's words: 'object', 'array', 'string', …"""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


class _Refused(ValueError):
    """Valid JSON syntax that the rules refuse; raised inside the decoder, caught by `loads`."""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Refused(f"is ambiguous: member {key!r} appears twice")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise _Refused(f"is not JSON: {name} is not a JSON number")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_members, parse_constant=_no_constant)


# Keys and signatures


def key_id(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The key's 20-byte id: SHA-1 of its uncompressed point (the SubjectKeyIdentifier)."""
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest


def es256_signature(der: bytes) -> bytes:
    """A DER ECDSA P-256 signature (what `cryptography` and PKCS#11 signers give) as JWS r‖s."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def es256_verify(public_key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    """Whether `signature` (r‖s) is the P-256 key's ES256 signature of `data`."""
    return _es256_verify(public_key, signature, data, _ECDSA_SHA256)


def es256_verify_digest(
    public_key: ec.EllipticCurvePublicKey, signature: bytes, digest: bytes
) -> bool:
    """`es256_verify` of data whose SHA-256 is `digest` (32 bytes), as a secure element checks."""
    return len(digest) == 32 and _es256_verify(public_key, signature, digest, _ECDSA_PREHASHED)


def _es256_verify(
    public_key: ec.EllipticCurvePublicKey,
    signature: bytes,
    data: bytes,
    algorithm: ec.EllipticCurveSignatureAlgorithm,
) -> bool:
    # DER is what naive signers emit; it is refused like any other wrong-length signature. r
    # and s out of range cannot verify, so they are refused before any curve arithmetic.
    if not isinstance(public_key.curve, ec.SECP256R1) or len(signature) != ES256_SIGNATURE_BYTES:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < _P256_ORDER and 0 < s < _P256_ORDER):
        return False
    try:
        public_key.verify(encode_dss_signature(r, s), data, algorithm)
    except InvalidSignature:
        return False
    return True


# JWS


def signing_input(protected: str, payload: str) -> bytes:
    """What a JWS signature covers: the two base64url parts exactly as sent, joined by '.'."""
    text = f"{protected}.{payload}"
    if not text.isascii():
        raise JoseError("the protected header or the payload is not ASCII, so not base64url")
    return text.encode("ascii")


def split_compact(token: bytes) -> tuple[bytes, bytes, bytes]:
    """The protected header, payload and signature parts of a compact JWS, still encoded.

    Decode them with `b64url_decode`; the signing input is the token up to the second '.'.
    """
    parts = _COMPACT.fullmatch(token)
    if parts is None:
        raise JoseError("the token is not three base64url parts joined by '.'")
    return parts[1], parts[2], parts[3]
