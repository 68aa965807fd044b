"""Secrets the server must read back, kept sealed in the database: push subscriptions' HMAC
signing secrets. Sealed with Fernet (AES-128-CBC and HMAC-SHA256, from `cryptography`) under
a key derived from the secret key file (`--secret-key-file`, kept apart from the database and
the same on every server of a cluster: the one the bridges' generated TLS keys are encrypted
under), so a copy of the database alone gives none of them away.

A sealed value is `SEALED_PREFIX` and the Fernet token; a value without the prefix was
written before sealing existed and is read as it is, until the primary seals it at start
(`PubSub.seal_push_secrets`): a migration could not, as the key is not in the database.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEALED_PREFIX = "sealed:v1:"
# Keys for other purposes derived from the same secret must use another label.
_PURPOSE = b"ironcore push subscription secrets"


class Sealer:
    """Seals and opens text under a key derived from `secret` (the secret key file's bytes)."""

    def __init__(self, secret: bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(secret)
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, text: str) -> str:
        return SEALED_PREFIX + self._fernet.encrypt(text.encode()).decode()

    def open(self, stored: str) -> str:
        """The text `seal` sealed; a value never sealed as it is. ValueError when this key
        did not seal it (another server's secret key file)."""
        if not is_sealed(stored):
            return stored
        try:
            return self._fernet.decrypt(stored.removeprefix(SEALED_PREFIX)).decode()
        except InvalidToken:
            raise ValueError(
                "a secret sealed under another secret key: every server sharing a database "
                "needs the same --secret-key-file"
            ) from None


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)
