"""Device JWTs, minted where the key lives.

ES256 tokens are signed by a secure element slot: the device hashes the signing input and the
element returns the raw r‖s that JWS wants, so the private key never leaves the element. RS256
is for software RSA keys, which Cloud IoT Core devices also used. `TokenSource` hands out the
current token and mints the next one before the current one expires.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ironcore import jose, limits
from ironcore.device.secure_element import SecureElement

# Cloud IoT Core's MQTT sample used 20 minutes; shorter tokens limit what a stolen one is worth.
DEFAULT_LIFETIME_SECONDS = 20 * 60
# A token is replaced this long before it expires, so a reconnect never presents a stale one.
REFRESH_MARGIN_SECONDS = 60


def _signing_input(alg: str, project: str, iat: int, exp: int) -> str:
    header = jose.b64url_json({"alg": alg, "typ": "JWT"})
    payload = jose.b64url_json({"iat": iat, "exp": exp, "aud": project})
    return f"{header}.{payload}"


def es256_jwt(
    element: SecureElement,
    slot: int,
    project: str,
    now: float,
    lifetime: float = DEFAULT_LIFETIME_SECONDS,
) -> str:
    """An ES256 JWT for `project`, signed inside the secure element with `slot`'s key."""
    return es256_jwt_with(lambda digest: element.sign(slot, digest), project, now, lifetime)


def es256_jwt_with(
    sign: Callable[[bytes], bytes],
    project: str,
    now: float,
    lifetime: float = DEFAULT_LIFETIME_SECONDS,
) -> str:
    """An ES256 JWT whose SHA-256 digest `sign` turns into a raw 64-byte r‖s signature."""
    _check_lifetime(lifetime)
    signing_input = _signing_input("ES256", project, int(now), int(now + lifetime))
    signature = sign(hashlib.sha256(signing_input.encode()).digest())
    return f"{signing_input}.{jose.b64url_encode(signature)}"


def rs256_jwt(
    key: rsa.RSAPrivateKey, project: str, now: float, lifetime: float = DEFAULT_LIFETIME_SECONDS
) -> str:
    """An RS256 JWT for `project`, signed with a software RSA key."""
    _check_lifetime(lifetime)
    signing_input = _signing_input("RS256", project, int(now), int(now + lifetime))
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{jose.b64url_encode(signature)}"


def _check_lifetime(lifetime: float) -> None:
    if not 0 < lifetime <= limits.JWT_MAX_LIFETIME_SECONDS:
        raise ValueError(
            f"a device JWT lives between 0 and {limits.JWT_MAX_LIFETIME_SECONDS} seconds, "
            f"not {lifetime}"
        )


@dataclass
class _Minted:
    token: str
    expires: float


class TokenSource:
    """The device's current JWT, minted again `REFRESH_MARGIN_SECONDS` before it expires.

    `mint(now)` makes a token that expires at `now + lifetime`; it is called from whichever
    thread asks first, one at a time (a secure element takes one command at a time).
    """

    def __init__(
        self,
        mint: Callable[[float], str],
        lifetime: float = DEFAULT_LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._mint = mint
        self.lifetime = lifetime
        self._clock = clock
        self._lock = threading.Lock()
        self._current: _Minted | None = None

    @classmethod
    def for_element(
        cls,
        element: SecureElement,
        project: str,
        slot: int = 0,
        lifetime: float = DEFAULT_LIFETIME_SECONDS,
    ) -> TokenSource:
        return cls(lambda now: es256_jwt(element, slot, project, now, lifetime), lifetime)

    @classmethod
    def for_rsa_key(
        cls, key: rsa.RSAPrivateKey, project: str, lifetime: float = DEFAULT_LIFETIME_SECONDS
    ) -> TokenSource:
        return cls(lambda now: rs256_jwt(key, project, now, lifetime), lifetime)

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._current is None or self.due(now):
                self._current = _Minted(self._mint(now), now + self.lifetime)
            return self._current.token

    def due(self, now: float) -> bool:
        """Whether the current token is within the refresh margin of expiring (or absent)."""
        margin = min(REFRESH_MARGIN_SECONDS, self.lifetime / 4)
        return self._current is None or now >= self._current.expires - margin

    def expires(self) -> float:
        return self._current.expires if self._current is not None else 0.0

    def reset(self) -> None:
        """Forget the current token (after the key changed), so the next call mints one."""
        with self._lock:
            self._current = None
