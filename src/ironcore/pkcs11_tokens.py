"""PKCS#11 tokens (SoftHSM2, an HSM, cryptoauthlib's PKCS#11 module): find one by its label,
log in once per token and process, read an EC public key off it.

Both CA keys on a token (`pki.keystore.Pkcs11Key`) and secure elements on a token
(`device.pkcs11_element`) go through here: PKCS#11 allows one login per token and application,
so the session a process holds on a token must be one and the same for both.
"""

from __future__ import annotations

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11.exceptions import NoSuchToken, PinIncorrect, PKCS11Error
from pkcs11.util.ec import encode_ec_public_key

from ironcore.errors import FailedPrecondition, InvalidArgument


def pkcs11_token(module: str, token_label: str) -> pkcs11.Token:
    """The token with this label; FailedPrecondition naming what is missing."""
    try:
        lib = pkcs11.lib(module)
    except (OSError, RuntimeError, PKCS11Error) as exc:
        raise FailedPrecondition(f"cannot load PKCS#11 module {module}: {exc}") from None
    try:
        token = lib.get_token(token_label=token_label)
    except NoSuchToken:
        # Tokens created since the module was loaded appear only after a re-scan.
        lib.reinitialize()
        try:
            token = lib.get_token(token_label=token_label)
        except NoSuchToken:
            raise FailedPrecondition(f"no PKCS#11 token labelled {token_label!r}") from None
    return token


# PKCS#11 logs in per token and application: a second login while the first session lives
# fails, so each token gets one session per process, reused.
_sessions: dict[tuple[str, str], tuple[pkcs11.Session, str]] = {}


def pkcs11_session(module: str, token_label: str, pin: str) -> pkcs11.Session:
    """A logged-in read-write session on the token, shared within this process."""
    cached = _sessions.get((module, token_label))
    if cached is not None:
        if cached[1] != pin:
            raise InvalidArgument(f"wrong PIN for PKCS#11 token {token_label!r}")
        return cached[0]
    token = pkcs11_token(module, token_label)
    try:
        session = token.open(user_pin=pin, rw=True)
    except PinIncorrect:
        raise InvalidArgument(f"wrong PIN for PKCS#11 token {token_label!r}") from None
    _sessions[(module, token_label)] = (session, pin)
    return session


def ec_public_key(public: pkcs11.PublicKey) -> ec.EllipticCurvePublicKey:
    """A token's EC public key as a `cryptography` key (CKA_EC_POINT wrapped or not)."""
    key = serialization.load_der_public_key(encode_ec_public_key(public))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise FailedPrecondition("the PKCS#11 key is not an EC key")
    return key
