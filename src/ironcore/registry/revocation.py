"""Revoked batch signer CAs: record them, and tell whether a device credential is affected;
re-attestation, by which an operator vouches for a device all the same.

A device certificate names its issuing signer by its AuthorityKeyIdentifier, which equals the
signer's SubjectKeyIdentifier; revoked signers are kept by that key id (and by certificate
fingerprint). A credential is affected when it descends from a revoked signer: certified by
it, or rotated in from a key that is (`registry.provenance`). Revoking one asks every
registry's connected devices to be checked again, so devices it signed, and keys they rotated
to, are disconnected at once; the bridges refuse them from then on.

Two objects, because they sit on either side of the hub: the bridges keep a `RevokedSigners`
for the life of the process, whose `get` answers from an in-memory snapshot (no I/O on the hot
path) and whose `fresh` refreshes a stale snapshot first, so revocations made by another
process are seen within `refresh_seconds`. `Revocations`, what the admin API calls,
records a revocation, refreshes that same snapshot and tells the hub, which makes the bridges
check their devices again against it. (One object holding both would need the hub before the
hub's own cache, the device authenticator, could be built.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ironcore import jose
from ironcore.errors import InvalidArgument, NotFound
from ironcore.identity import credentials as creds
from ironcore.registry import provenance as prov
from ironcore.registry.service import ConnectedDevices
from ironcore.registry.store import Store
from ironcore.registry.store.devices import DeviceRecord
from ironcore.registry.store.revocation import RevokedSignerRecord
from ironcore.registry.wire import format_timestamp

log = logging.getLogger(__name__)
REASON_MAX = 1000


class RevokedSigners:
    """The revoked signers a process checks device certificates against: a snapshot of the
    database's, refreshed by `refresh` (after a revocation here, or when the hub hears of a
    registry change elsewhere) and by `check` once it is `refresh_seconds` old."""

    def __init__(self, store: Store, refresh_seconds: float = 2.0) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self._snapshot: dict[str, RevokedSignerRecord] = {}
        self._loaded_at = float("-inf")

    async def refresh(self) -> None:
        records = await self.store.revocations.revoked_signers()
        self._snapshot = {r.key_id: r for r in records} | {r.fingerprint: r for r in records}
        self._loaded_at = time.monotonic()

    def get(self, key_id_or_fingerprint: str) -> RevokedSignerRecord | None:
        """From the snapshot: the revoked signer with this key id or fingerprint (hex)."""
        return self._snapshot.get(key_id_or_fingerprint)

    async def fresh(self) -> None:
        """Refresh the snapshot if it is more than `refresh_seconds` old."""
        if time.monotonic() - self._loaded_at > self.refresh_seconds:
            await self.refresh()


class Revocations:
    def __init__(
        self,
        store: Store,
        signers: RevokedSigners,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        links: ConnectedDevices | None = None,
    ) -> None:
        """`signers` is the snapshot this process's bridges check (refreshed at each
        revocation); `links` is told that every registry changed when a signer is revoked."""
        self.store = store
        self.signers = signers
        self.clock = clock
        self.links = links

    async def revoke_signer(
        self, certificate_pem: str, reason: str
    ) -> tuple[RevokedSignerRecord, bool]:
        """Revoke a signer (or root) CA; (the record, False if it was already revoked).

        Devices it signed that are connected now are disconnected through the hub.
        """
        certificate = creds.load_certificate(certificate_pem, "certificate")
        _check_ca(certificate)
        if len(reason) > REASON_MAX:
            raise InvalidArgument.field("reason", f"at most {REASON_MAX} characters")
        key = certificate.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise InvalidArgument.field("certificate", "batch signer CAs hold EC keys")
        record = RevokedSignerRecord(
            key_id=jose.key_id(key).hex(),
            fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
            subject=certificate.subject.rfc4514_string(),
            certificate=certificate_pem.strip() + "\n",
            reason=reason or "unspecified",
            revoked_at=self.clock(),
        )
        created = await self.store.revocations.add_revoked_signer(record)
        await self.signers.refresh()
        if not created:
            return self.signers.get(record.key_id) or record, False
        if self.links is not None:
            for name in await self.store.registries.all_registry_names():
                await self.links.registry_changed(name)
        return record, True

    async def provenance(self, record: DeviceRecord) -> list[CredentialProvenance]:
        """Where each of the device's credentials came from, and the revoked signer that cuts
        it off, if any."""
        credentials = [c.to_wire() for c in record.device.credentials]
        return await self._described(credentials, _recorded(credentials, record.provenance))

    async def reattest(self, num_id: int, principal: str) -> list[CredentialProvenance]:
        """An operator vouches for the device: each of its credentials is attested by
        `principal` now, so no revoked signer cuts it off, nor a key rotated from it later."""
        when = format_timestamp(self.clock())

        def attest(
            credentials: list[dict[str, Any]], recorded: dict[str, prov.Provenance]
        ) -> dict[str, prov.Provenance]:
            return {
                f: prov.attested(p, principal, when)
                for f, p in _recorded(credentials, recorded).items()
            }

        found = await self.store.devices.change_provenance(num_id, attest)
        if found is None:
            raise NotFound(f"No device with numeric id {num_id}")
        log.warning(
            "device %s: %d credential(s) re-attested by %s: accepted whatever signer is revoked",
            num_id,
            len(found[1]),
            principal,
        )
        if self.links is not None:
            await self.links.device_changed(num_id)
        return await self._described(*found)

    async def _described(
        self, credentials: list[dict[str, Any]], recorded: dict[str, prov.Provenance]
    ) -> list[CredentialProvenance]:
        await self.signers.fresh()
        out = []
        for credential in credentials:
            name = prov.fingerprint(credential)
            found = recorded.get(name, prov.Provenance(prov.UNKNOWN))
            out.append(
                CredentialProvenance(
                    name,
                    str((credential.get("publicKey") or {}).get("format", "")),
                    found,
                    found.revoked_by(self.signers.get),
                )
            )
        return out

    async def list(self) -> list[RevokedSignerRecord]:
        return await self.store.revocations.revoked_signers()

    async def is_revoked(self, key_id_or_fingerprint: str) -> RevokedSignerRecord | None:
        """From the database: the revoked signer with this key id or fingerprint (hex)."""
        return await self.store.revocations.revoked_signer(key_id_or_fingerprint)


@dataclass(frozen=True)
class CredentialProvenance:
    fingerprint: str
    format: str
    provenance: prov.Provenance
    # The revoked signer it descends from (and is refused for), if any.
    revoked_signer: RevokedSignerRecord | None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "fingerprint": self.fingerprint,
            "format": self.format,
            **self.provenance.to_body(),
        }
        if self.revoked_signer is not None:
            out["revokedSigner"] = {
                "keyId": self.revoked_signer.key_id,
                "subject": self.revoked_signer.subject,
            }
        return out


def _recorded(
    credentials: list[dict[str, Any]], recorded: dict[str, prov.Provenance]
) -> dict[str, prov.Provenance]:
    """Every credential's provenance, recorded or derived (`provenance.of`)."""
    out = {}
    for credential in credentials:
        key = prov.parsed(credential)
        if key is not None:
            out[key.fingerprint] = prov.of(key, recorded)
    return out


def _check_ca(certificate: x509.Certificate) -> None:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except (x509.ExtensionNotFound, ValueError):
        raise InvalidArgument.field(
            "certificate", "is not a CA certificate (no basic constraints)"
        ) from None
    if not constraints.value.ca:
        raise InvalidArgument.field(
            "certificate", "is not a CA certificate; revoke the batch signer that issued it"
        )
