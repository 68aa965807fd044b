"""Device JWT verification: the MQTT password and the HTTP bearer token of every device.

A device proves who it is with a short-lived compact JWS signed by one of its registered keys
(RS256 or ES256), with `aud` = the project id and `iat`/`exp` within Cloud IoT Core's rules
(Google's Cloud IoT Core documentation, "Using JSON Web Tokens (JWTs)": exp at most 24 hours
after iat, 10 minutes of clock skew, `limits.py`). The function is pure: the caller passes the
clock and the keys, so the bridges can cache ParsedKey objects and tests can pin time.

Every bridge connection runs this, so it is written against `cryptography` directly rather
than through a general-purpose JWT library: it accepts exactly two algorithms, never reads a key
from the token, and does only the work those two need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ironcore import jose, limits
from ironcore.errors import Unauthenticated
from ironcore.identity.credentials import Algorithm, ParsedKey

# The reasons are metric labels and land in the device's lastErrorStatus: a fixed, small set.
Reason = Literal[
    "malformed",
    "header",
    "alg",
    "no_key",
    "signature",
    "aud",
    "lifetime",
    "iat_future",
    "expired",
]
REASONS: frozenset[str] = frozenset(get_args(Reason))

# Real device tokens are 200-500 bytes (RS256-2048 ones are the largest). 8 KiB leaves room for
# generous extra claims while bounding the base64 and JSON work an unauthenticated peer can
# make the bridge do, and matches the header-size limits of common HTTP front ends.
MAX_TOKEN_BYTES = 8 * 1024


# Header parameters that carry a key or a URL to fetch one. A verifier that used them would let
# the token choose the key it is checked against; we only ever use the device's registered keys,
# and refusing such tokens outright (rather than ignoring the parameters) is the safe choice:
# no real IoT Core client sends them, and a token that does is an attack or a misconfiguration
# the operator should see. `crit` names extensions we must understand, and we understand none.
_FORBIDDEN_HEADER_PARAMS = ("jwk", "jku", "x5u", "x5c", "crit")

_ALGORITHMS = {"RS256": Algorithm.RS256, "ES256": Algorithm.ES256}

# Immutable parameter objects, shared by every call.
_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


class InvalidToken(Unauthenticated):
    """A device JWT was refused; `reason` is one of REASONS, `message` says what exactly."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified claims of a device JWT."""

    iat: float
    exp: float
    aud: str

    @property
    def deadline(self) -> float:
        """When a connection authenticated by this token must be closed (exp + clock skew)."""
        return self.exp + limits.JWT_CLOCK_SKEW_SECONDS


def verify_device_jwt(
    token: str | bytes, keys: Sequence[ParsedKey], project: str, now: float
) -> Claims:
    """Verify a device JWT against the device's keys and return its claims.

    `keys` are the device's usable credentials (the caller drops expired ones); those whose
    algorithm matches the token's `alg` are tried in order. `now` is seconds since the epoch.
    Raises InvalidToken for every refusal.
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken("malformed", f"token is longer than {MAX_TOKEN_BYTES} bytes")
    if isinstance(token, str):
        try:
            token = token.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidToken("malformed", "token is not ASCII") from None
    try:
        header_part, payload_part, signature_part = jose.split_compact(token)
        # Cloud IoT Core took padded parts too (Google was lenient about base64url details).
        header = jose.json_object(
            jose.b64url_decode(header_part, "the header", padding=True), "the header"
        )
        payload = jose.b64url_decode(payload_part, "the payload", padding=True)
        signature = jose.b64url_decode(signature_part, "the signature", padding=True)
    except jose.JoseError as error:
        raise InvalidToken("malformed", error.message) from None
    for param in _FORBIDDEN_HEADER_PARAMS:
        if param in header:
            raise InvalidToken("header", f"header parameter {param!r} is not accepted")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _ALGORITHMS:
        raise InvalidToken("alg", f"alg must be RS256 or ES256, not {alg!r:.40}")
    algorithm = _ALGORITHMS[alg]
    candidates = [key for key in keys if key.algorithm is algorithm]
    if not candidates:
        raise InvalidToken("no_key", f"the device has no {alg} key")

    # The signature covers the parts exactly as sent, padding included.
    signing_input = token[: len(header_part) + 1 + len(payload_part)]
    verify = _verify_es256 if algorithm is Algorithm.ES256 else _verify_rs256
    if not any(verify(key, signature, signing_input) for key in candidates):
        raise InvalidToken("signature", f"the signature matches none of the device's {alg} keys")

    # The payload JSON is only parsed once it is known to come from the device.
    try:
        claims = jose.json_object(payload, "the payload")
    except jose.JoseError as error:
        raise InvalidToken("malformed", error.message) from None
    return _check_claims(claims, project, now)


def _verify_es256(key: ParsedKey, signature: bytes, signing_input: bytes) -> bool:
    public_key = key.public_key
    return isinstance(public_key, ec.EllipticCurvePublicKey) and jose.es256_verify(
        public_key, signature, signing_input
    )


def _verify_rs256(key: ParsedKey, signature: bytes, signing_input: bytes) -> bool:
    public_key = key.public_key
    if not isinstance(public_key, rsa.RSAPublicKey):
        return False
    if len(signature) != (public_key.key_size + 7) // 8:
        return False
    try:
        public_key.verify(signature, signing_input, _PKCS1V15, _SHA256)
    except InvalidSignature:
        return False
    return True


def _check_claims(claims: dict[str, Any], project: str, now: float) -> Claims:
    if "aud" not in claims:
        raise InvalidToken("aud", "the aud claim is missing")
    aud = claims["aud"]
    # Google documented aud as a single string. RFC 7519 also allows an array, and some JWT
    # libraries always emit one, so a one-element list naming the project means the same and is
    # accepted. A longer list is refused even if it names the project: that token is also valid
    # at other audiences, which could replay it here.
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    if aud != project:
        raise InvalidToken("aud", f"aud must be the project id {project!r}")
    iat = _numeric_date(claims, "iat")
    exp = _numeric_date(claims, "exp")
    skew = limits.JWT_CLOCK_SKEW_SECONDS
    if exp <= iat:
        raise InvalidToken("lifetime", "exp is not after iat")
    # Both times come from the device's clock, so no skew is needed to absorb clock error here.
    # It is allowed anyway: Cloud IoT Core allowed exp <= iat + 24 h + skew, and a
    # client that back-dates iat to absorb skew and still asks for 24 h must not be refused.
    # No subtraction: exp - iat of a float and a 400-digit int raises OverflowError.
    if exp > iat + limits.JWT_MAX_LIFETIME_SECONDS + skew:
        raise InvalidToken("lifetime", "exp is more than 24 hours after iat")
    if iat > now + skew:
        raise InvalidToken("iat_future", "iat is in the future; check the device clock")
    if exp + skew < now:
        raise InvalidToken("expired", "the token has expired")
    return Claims(iat=float(iat), exp=float(exp), aud=project)


def _numeric_date(claims: dict[str, Any], name: str) -> int | float:
    value = claims.get(name)
    # bool is an int subclass, and true is not a date. Non-finite numbers cannot get here:
    # jose.json_object refuses NaN and Infinity.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken("malformed", f"the {name} claim must be a number")
    return value
