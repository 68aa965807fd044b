"""What a service-account key proves: RS256 JWTs signed with it, checked against the
account's live keys (`access.service_accounts`).

Two kinds, one reader:
- the **assertion** of RFC 7523's JWT-bearer grant, which `google.oauth2.service_account`
  posts to the key file's `token_uri` (`iss` = the account's email, `aud` = a token endpoint,
  `scope`), exchanged for an access token;
- a **self-signed JWT** sent directly as the bearer token (what Google's GAPIC clients send
  with service-account credentials: `aud` = `https://SERVICE.googleapis.com/`, or no `aud` and
  a `scope` claim).

Both: the header's `kid` names a live key; `iss` (and `sub`, when present) is that key's
account; `iat` and `exp` span at most an hour, and `exp` has not passed. Every refusal is
`Unauthenticated` with the reason; nothing in the JWT is trusted before its signature is.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ironcore.access.service_accounts import ServiceAccounts
from ironcore.errors import Unauthenticated
from ironcore.registry.store.service_accounts import AccountRecord

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Where google-auth addresses its assertions, whatever the key file's token_uri says.
GOOGLE_TOKEN_URIS = (
    "https://oauth2.googleapis.com/token",
    "https://accounts.google.com/o/oauth2/token",
)
# The audiences of the self-signed JWTs Google's clients send to the services ironcore serves.
GOOGLE_SERVICE_AUDIENCES = ("https://cloudiot.googleapis.com/", "https://pubsub.googleapis.com/")
MAX_LIFETIME_SECONDS = 3600
LEEWAY_SECONDS = 60
# Longer than any JWT google-auth makes (an RSA 2048 signature, a few claims).
MAX_JWT_BYTES = 8192
# Past any real time, and small enough that no arithmetic on it overflows; NaN is not below it.
_TIME_LIMIT = 2**40


@dataclass(frozen=True)
class Verified:
    """A JWT that passed: the account and key it was signed for, and when it expires."""

    account: AccountRecord
    key_id: str
    expires_at: float


def service_audiences(public_url: str) -> frozenset[str]:
    """The `aud` values a self-signed JWT may carry: Google's service URLs of the APIs
    ironcore serves, and its public URL (with and without the trailing slash)."""
    found = set(GOOGLE_SERVICE_AUDIENCES) | {a.rstrip("/") for a in GOOGLE_SERVICE_AUDIENCES}
    if public_url:
        found |= {public_url.rstrip("/"), public_url.rstrip("/") + "/"}
    return frozenset(found)


def looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and token.count(".") == 2


async def verify(
    accounts: ServiceAccounts,
    token: str,
    audiences: Collection[str],
    *,
    scope_instead_of_aud: bool,
    now: float | None = None,
) -> Verified:
    """The account a JWT signed by one of its keys stands for; Unauthenticated with the
    reason otherwise. `aud` must be one of `audiences`; with `scope_instead_of_aud`, a JWT
    without `aud` but with a `scope` claim passes too (GAPIC clients given scopes)."""
    if len(token) > MAX_JWT_BYTES:
        raise Unauthenticated(f"The JWT is longer than {MAX_JWT_BYTES} bytes")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as error:
        raise Unauthenticated(f"The JWT cannot be read: {error}") from None
    if header.get("alg") != "RS256":
        raise Unauthenticated(f"The JWT's alg is {str(header.get('alg'))[:20]!r}, not RS256")
    key_id = header.get("kid")
    if not isinstance(key_id, str) or not key_id:
        raise Unauthenticated("The JWT's header has no kid (the key file's private_key_id)")
    found = await accounts.signing_key(key_id)
    if found is None:
        raise Unauthenticated(
            f"The JWT's key {key_id[:60]!r} is unknown, deleted, or of a deleted account"
        )
    account, public_pem = found
    claims = _decode(token, public_pem, account, now if now is not None else time.time())
    audience = claims.get("aud")
    if audience is None:
        if not (scope_instead_of_aud and isinstance(claims.get("scope"), str)):
            raise Unauthenticated("The JWT has no aud claim")
    elif not isinstance(audience, str) or audience not in audiences:
        raise Unauthenticated(
            f"The JWT's aud {str(audience)[:200]!r} is not one of {', '.join(sorted(audiences))}"
        )
    return Verified(account, key_id, float(claims["exp"]))


def _decode(token: str, public_pem: str, account: AccountRecord, now: float) -> dict[str, Any]:
    key = load_pem_public_key(public_pem.encode())
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,  # type: ignore[arg-type]
            algorithms=["RS256"],
            options={
                "verify_aud": False,
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "require": ["iss", "iat", "exp"],
            },
        )
    except jwt.PyJWTError as error:
        raise Unauthenticated(f"The JWT is not valid: {error}") from None
    if claims["iss"] != account.email:
        raise Unauthenticated(f"The JWT's iss is not {account.email}, the key's account")
    if "sub" in claims and claims["sub"] != account.email:
        raise Unauthenticated(f"The JWT's sub is not {account.email}, the key's account")
    issued, expires = claims["iat"], claims["exp"]
    if not all(type(t) in (int, float) and 0 < t < _TIME_LIMIT for t in (issued, expires)):
        raise Unauthenticated("The JWT's iat and exp must be times in seconds since 1970")
    if expires - issued > MAX_LIFETIME_SECONDS:
        raise Unauthenticated(
            f"The JWT's exp is {expires - issued:.0f} s after its iat; at most "
            f"{MAX_LIFETIME_SECONDS} s are allowed"
        )
    if issued > now + LEEWAY_SECONDS:
        raise Unauthenticated("The JWT's iat is in the future")
    if expires < now - LEEWAY_SECONDS:
        raise Unauthenticated(f"The JWT expired {now - expires:.0f} s ago")
    return claims
