"""Sign a firmware manifest with a KeyStore: a key in an encrypted file or on a PKCS#11 token.

The manifest format, and `check`, which says whether an image may boot, are
`ironcore.formats.firmware`: the device reads them too.
"""

from __future__ import annotations

from ironcore import jose
from ironcore.formats.firmware import Manifest, SignedManifest, check_p256, header, kid
from ironcore.pki.keystore import KeyStore


def sign(key: KeyStore, manifest: Manifest) -> SignedManifest:
    """The manifest signed ES256 by `key` (a file or PKCS#11 key; P-256)."""
    public = key.public_key()
    check_p256(public)
    key_id = kid(public)
    protected = header(key_id)
    payload = jose.b64url_encode(manifest.claims())
    signature = jose.es256_signature(key.sign(jose.signing_input(protected, payload)))
    return SignedManifest(manifest, key_id, protected, payload, signature)
