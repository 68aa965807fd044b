"""Where each device credential came from, and so which revoked signer cuts it off.

A credential is certified by a batch signer (its certificate names the signer), rotated in over
a session another credential authenticated (docs/rotation.md), added by an operator with a
plain public key, made from a manifest's slot 0 key, or re-attested by an operator. Revoking a
signer must reach every credential whose only proof leads back to it, through any chain of
rotations: so each credential records the signers it descends from (`signers`), inherited
from the credential whose session offered it. An operator who trusts a device anyway attests
its credentials: an attested credential descends from no signer, and neither does a key
rotated from it later.

Provenance lives in the device row's JSON body (`BODY_KEY`, a map from credential fingerprint
to record) beside the credentials, like a key rotation: a rotation adds the key and its
provenance in one update, and the bridges read it with the device, no extra query. Whoever
writes credentials writes the map through `carried`, which keeps the records of credentials
that stay and derives those of new ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ironcore.errors import IronCoreError
from ironcore.identity import credentials as creds

BODY_KEY = "credentialProvenance"

# Origins. CERTIFICATE: an X.509 credential, certified by the signer that issued it. ROTATION:
# offered by the device over a session authenticated with `rotated_from`. ADMIN: a plain key an
# operator added. MANIFEST: a manifest's slot 0 key, stored without a certificate. UNKNOWN: a
# plain key on a certified device that was there before provenance was recorded (migration
# 0011 counts it as descending from the device's signers).
CERTIFICATE, ROTATION, ADMIN, MANIFEST, UNKNOWN = (
    "certificate",
    "rotation",
    "admin",
    "manifest",
    "unknown",
)

T = TypeVar("T")


@dataclass(frozen=True)
class Provenance:
    origin: str
    # Key id (hex) of the signer that issued the credential's certificate.
    certified_by: str = ""
    # Fingerprint of the credential whose session offered this key.
    rotated_from: str = ""
    # Key ids of the signers it descends from: revoking any of them cuts it off.
    signers: tuple[str, ...] = ()
    # Who re-attested it (an admin token's principal) and when (RFC 3339).
    attested_by: str = ""
    attest_time: str = ""

    def revoked_by(self, revoked: Callable[[str], T | None]) -> T | None:
        """The first of its signers `revoked` knows (None when attested: the operator vouched
        for it after the fact)."""
        if self.attested_by:
            return None
        for signer in self.signers:
            found = revoked(signer)
            if found is not None:
                return found
        return None

    def to_body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"origin": self.origin}
        if self.certified_by:
            out["certifiedBy"] = self.certified_by
        if self.rotated_from:
            out["rotatedFrom"] = self.rotated_from
        if self.signers:
            out["signers"] = list(self.signers)
        if self.attested_by:
            out["attestedBy"] = self.attested_by
            out["attestTime"] = self.attest_time
        return out

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Provenance:
        return cls(
            origin=str(body.get("origin", UNKNOWN)),
            certified_by=str(body.get("certifiedBy", "")),
            rotated_from=str(body.get("rotatedFrom", "")),
            signers=tuple(str(s) for s in body.get("signers", ())),
            attested_by=str(body.get("attestedBy", "")),
            attest_time=str(body.get("attestTime", "")),
        )


def signer_key_id(certificate: x509.Certificate) -> str | None:
    """The issuing signer's key id (AuthorityKeyIdentifier, lowercase hex), None if absent.

    Microchip's TNGTLS device certificates carry a SAN that `cryptography` refuses to parse
    (a PrintableString with `_`), so those fall back to asn1crypto, which reads it.
    """
    try:
        extension = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        return None
    except ValueError:
        return _key_id_leniently(certificate)
    key_id = extension.value.key_identifier
    return key_id.hex() if key_id else None


def _key_id_leniently(certificate: x509.Certificate) -> str | None:
    parsed = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
    value = parsed.authority_key_identifier
    return bytes(value).hex() if value else None


def parsed(credential: dict[str, Any]) -> creds.ParsedKey | None:
    """A stored credential (wire form) parsed, None if it does not parse."""
    public = credential.get("publicKey") or {}
    try:
        return creds.parse_device_key(public.get("format", ""), public.get("key", ""), "credential")
    except IronCoreError:
        return None


def fingerprint(credential: dict[str, Any]) -> str:
    """A stored credential's key fingerprint (`ParsedKey.fingerprint`); for one that does not
    parse, a hash of its text, so that it still has a stable name."""
    key = parsed(credential)
    if key is not None:
        return key.fingerprint
    return hashlib.sha256(str(credential.get("publicKey", {})).encode()).hexdigest()


def derived(key: creds.ParsedKey | None, origin: str) -> Provenance:
    """A new credential's provenance: certified by its certificate's signer if it has one,
    else `origin` (ADMIN or MANIFEST), descending from no signer."""
    if key is not None and key.certificate is not None:
        signer = signer_key_id(key.certificate)
        if signer:
            return Provenance(CERTIFICATE, certified_by=signer, signers=(signer,))
        return Provenance(CERTIFICATE)
    return Provenance(origin)


def of(key: creds.ParsedKey, recorded: dict[str, Provenance]) -> Provenance:
    """A credential's provenance as recorded, or derived from it (a credential written by a
    path that records none is a plain key an operator added, or certified by its signer)."""
    return recorded.get(key.fingerprint) or derived(key, ADMIN)


def rotated(parent: Provenance, parent_fingerprint: str) -> Provenance:
    """The provenance of a key offered over a session authenticated by `parent`: it descends
    from what the parent descends from, and from no signer if the parent was attested."""
    return Provenance(
        ROTATION,
        rotated_from=parent_fingerprint,
        signers=() if parent.attested_by else parent.signers,
    )


def attested(provenance: Provenance, principal: str, when: str) -> Provenance:
    return Provenance(
        provenance.origin,
        provenance.certified_by,
        provenance.rotated_from,
        provenance.signers,
        attested_by=principal,
        attest_time=when,
    )


def read(body: dict[str, Any]) -> dict[str, Provenance]:
    """The provenance records of a device body, by credential fingerprint."""
    return {fp: Provenance.from_body(p) for fp, p in (body.get(BODY_KEY) or {}).items()}


def carried(
    previous: dict[str, Any] | None,
    credentials: Iterable[dict[str, Any]],
    origin: str = ADMIN,
    added: dict[str, Provenance] | None = None,
) -> dict[str, Any]:
    """The body map for `credentials` (wire form): the `previous` map's records of credentials
    that stay, `added` for the ones given, the rest derived (`derived` with `origin`)."""
    out: dict[str, Any] = {}
    for credential in credentials:
        key = parsed(credential)
        name = key.fingerprint if key is not None else fingerprint(credential)
        if added and name in added:
            out[name] = added[name].to_body()
        elif previous and name in previous:
            out[name] = previous[name]
        else:
            out[name] = derived(key, origin).to_body()
    return out
