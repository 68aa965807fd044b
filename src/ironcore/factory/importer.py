"""Manifest import: one device per verified entry, safe to repeat, never half-done.

The rules, in order, for each entry of a manifest:

1. It verifies completely (`manifest.verify_entry`): pinned signer, ES256 over the exact
   strings, `header.uniqueId`, signer valid at provisioning time, the `x5c` chain to a trusted
   root (and to the registry's CA certificates when it has some), no revoked signer.
2. Its device id (`d` + uppercase serial by default) is a valid id, and not used twice in
   the manifest.
3. A device with that id and that key already exists: unchanged. A device with that id and
   another key, or another device with that key: rejected, and the device is left alone.
4. Everything else is created, in bulk, with the certificate (`ES256_X509_PEM`) or the slot 0
   key (`ES256_PEM`, provenance "manifest") as its credential; Lite entries (no keys) become
   devices without credentials. Metadata keeps the part number, group id, unique id,
   provisioning time and the signers.

Signature and chain checks are CPU work: large manifests are verified in a process pool, off
the event loop, on every core. Devices are inserted in transactions of `_BATCH` devices; if a
batch fails (a device created meanwhile), its devices are inserted one by one so that only the
one in conflict is rejected.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import secrets
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ironcore import jose, limits
from ironcore.errors import AlreadyExists, InvalidArgument, NotFound
from ironcore.factory import manifest as mf
from ironcore.identity import credentials as creds
from ironcore.pki.ca import ec_public_key
from ironcore.registry import provenance
from ironcore.registry.names import RegistryName
from ironcore.registry.resources import (
    Device,
    DeviceConfig,
    DeviceCredential,
    PublicKeyCredential,
    PublicKeyFormat,
)
from ironcore.registry.service import DeviceManager
from ironcore.registry.store.devices import NumIdTaken

DEFAULT_TEMPLATE = "d{SERIAL}"
# Below this many entries a process pool costs more than it saves.
_POOL_MIN_ENTRIES = 256
_BATCH = 2000
_AUTH_SLOT = 0


@dataclass(frozen=True)
class EntryReport:
    index: int
    unique_id: str
    device_id: str
    status: str  # "imported", "unchanged" or "rejected"
    reason: str = ""

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": self.status}
        if self.unique_id:
            out["uniqueId"] = self.unique_id
        if self.device_id:
            out["deviceId"] = self.device_id
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class ImportReport:
    dry_run: bool
    entries: list[EntryReport] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for entry in self.entries if entry.status == status)

    def to_wire(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "imported": self.count("imported"),
            "unchanged": self.count("unchanged"),
            "rejected": self.count("rejected"),
            "entries": [entry.to_wire() for entry in self.entries],
        }


@dataclass(frozen=True)
class _Candidate:
    """A verified entry, reduced to what the device needs; plain data, to cross processes."""

    unique_id: str
    key_format: str
    key: str
    fingerprint: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class _TrustMaterial:
    signers: tuple[bytes, ...]
    anchors: tuple[bytes, ...]
    required: tuple[bytes, ...]
    revoked: frozenset[str]


async def import_manifest(
    manager: DeviceManager,
    registry: RegistryName,
    data: bytes | str,
    *,
    trust_signers: Sequence[str] = (),
    trust_roots: Sequence[str] = (),
    device_id_template: str = DEFAULT_TEMPLATE,
    dry_run: bool = False,
) -> ImportReport:
    """Import a manifest into a registry; the report lists every entry's outcome.

    The whole manifest is refused (ManifestError) only when it is not a JSON array of
    entries; any problem with one entry rejects that entry alone.
    """
    record = await manager.store.registries.get_registry(registry)
    if record is None:
        raise NotFound(f"Registry {registry} not found")
    _check_template(device_id_template)
    material = _TrustMaterial(
        signers=_ders(trust_signers, "trust_signers"),
        anchors=_ders(trust_roots, "trust_roots"),
        required=tuple(
            _der(c.public_key_certificate.certificate, "registry.credentials")
            for c in record.registry.credentials
            if c.public_key_certificate
        ),
        revoked=frozenset(r.key_id for r in await manager.store.revocations.revoked_signers()),
    )
    entries = mf.read_manifest(data)
    if not entries:
        raise mf.ManifestError("the manifest holds no entries")
    checked = await _verify_all(entries, material)

    report = ImportReport(dry_run)
    existing = await manager.store.devices.device_credentials(record.pk)
    by_id = {device_id: (_fingerprints(creds_), meta) for device_id, creds_, meta in existing}
    by_key = {fp: device_id for device_id, (fps, _) in by_id.items() for fp in fps}
    planned: dict[str, _Candidate] = {}
    to_create: list[tuple[int, Device]] = []
    for index, outcome in enumerate(checked):
        if isinstance(outcome, str):
            report.entries.append(
                EntryReport(index, _unique_id_hint(entries[index]), "", "rejected", outcome)
            )
            continue
        device_id = _device_id(device_id_template, outcome.unique_id)
        entry = _decide(index, outcome, device_id, by_id, by_key, planned)
        if entry.status == "imported":
            planned[device_id] = outcome
            if outcome.fingerprint:
                by_key[outcome.fingerprint] = device_id
            to_create.append((index, _device(device_id, outcome)))
        report.entries.append(entry)
    if not dry_run:
        failed = await _create(manager, record.pk, registry, to_create)
        for index, reason in failed.items():
            entry = report.entries[index]
            report.entries[index] = EntryReport(
                index, entry.unique_id, entry.device_id, "rejected", reason
            )
    return report


def _decide(
    index: int,
    candidate: _Candidate,
    device_id: str,
    by_id: dict[str, tuple[set[str], dict[str, str]]],
    by_key: dict[str, str],
    planned: dict[str, _Candidate],
) -> EntryReport:
    unique_id = candidate.unique_id
    if not limits.is_valid_id(device_id):
        reason = f"device id {device_id!r} made by the template is not a valid id"
        return EntryReport(index, unique_id, device_id, "rejected", reason)
    if device_id in planned:
        if planned[device_id].fingerprint == candidate.fingerprint:
            return EntryReport(index, unique_id, device_id, "unchanged", "repeated in this file")
        reason = "another entry of this manifest already makes this device, with another key"
        return EntryReport(index, unique_id, device_id, "rejected", reason)
    if device_id in by_id:
        fingerprints, metadata = by_id[device_id]
        same = (
            candidate.fingerprint in fingerprints
            if candidate.fingerprint
            else not fingerprints and metadata.get("uniqueId") == unique_id
        )
        if same:
            return EntryReport(index, unique_id, device_id, "unchanged", "already imported")
        reason = f"device {device_id} already exists with other credentials; left alone"
        return EntryReport(index, unique_id, device_id, "rejected", reason)
    if candidate.fingerprint and candidate.fingerprint in by_key:
        reason = f"its key is already a credential of device {by_key[candidate.fingerprint]}"
        return EntryReport(index, unique_id, device_id, "rejected", reason)
    return EntryReport(index, unique_id, device_id, "imported")


def _device(device_id: str, candidate: _Candidate) -> Device:
    credentials = []
    if candidate.key:
        credentials.append(
            DeviceCredential(
                public_key=PublicKeyCredential(
                    format=PublicKeyFormat[candidate.key_format], key=candidate.key
                )
            )
        )
    return Device(
        id=device_id,
        credentials=credentials,
        metadata=candidate.metadata,
        config=DeviceConfig(),
    )


async def _create(
    manager: DeviceManager, registry_pk: int, registry: RegistryName, todo: list[tuple[int, Device]]
) -> dict[int, str]:
    """Insert the devices; the reasons of those that could not be created, by entry index."""
    failed: dict[int, str] = {}
    now = manager.clock()
    for start in range(0, len(todo), _BATCH):
        batch = todo[start : start + _BATCH]
        for _, device in batch:
            device.num_id = _num_id()
        try:
            await manager.store.devices.create_devices(
                registry_pk, registry, [d for _, d in batch], now, provenance.MANIFEST
            )
            continue
        except (NumIdTaken, AlreadyExists):
            pass
        for index, device in batch:
            for _ in range(8):
                device.num_id = _num_id()
                try:
                    await manager.store.devices.create_device(
                        registry_pk, registry, device, now, provenance.MANIFEST
                    )
                    break
                except NumIdTaken:
                    continue
                except AlreadyExists:
                    failed[index] = f"device {device.id} was created meanwhile; left alone"
                    break
            else:
                failed[index] = "could not draw a free numeric device id"
    return failed


def _num_id() -> int:
    return limits.NUM_ID_MIN + secrets.randbelow(limits.NUM_ID_MAX - limits.NUM_ID_MIN)


# Verification, in this process or in a pool


_pool: ProcessPoolExecutor | None = None


def _executor() -> ProcessPoolExecutor:
    global _pool
    if _pool is None:
        # forkserver: workers start from a clean process, not a fork of a threaded server.
        _pool = ProcessPoolExecutor(
            max_workers=os.cpu_count() or 1, mp_context=multiprocessing.get_context("forkserver")
        )
    return _pool


async def _verify_all(entries: list[object], material: _TrustMaterial) -> list[_Candidate | str]:
    if len(entries) < _POOL_MIN_ENTRIES:
        return await asyncio.to_thread(_verify_chunk, entries, material)
    pool = _executor()
    workers = os.cpu_count() or 1
    size = max(64, -(-len(entries) // (workers * 4)))
    loop = asyncio.get_running_loop()
    chunks = [entries[i : i + size] for i in range(0, len(entries), size)]
    results = await asyncio.gather(
        *(loop.run_in_executor(pool, _verify_chunk, chunk, material) for chunk in chunks)
    )
    return [outcome for chunk in results for outcome in chunk]


_trust_cache: dict[_TrustMaterial, mf.Trust] = {}


def _verify_chunk(entries: list[object], material: _TrustMaterial) -> list[_Candidate | str]:
    trust = _trust_cache.get(material)
    if trust is None:
        base = mf.default_trust()
        trust = mf.Trust(
            base.signers,
            base.anchors + tuple(x509.load_der_x509_certificate(d) for d in material.anchors),
            material.revoked,
            tuple(x509.load_der_x509_certificate(d) for d in material.required),
        ).with_signers([x509.load_der_x509_certificate(d) for d in material.signers])
        _trust_cache.clear()
        _trust_cache[material] = trust
    out: list[_Candidate | str] = []
    for raw in entries:
        try:
            out.append(_candidate(mf.verify_entry(raw, trust)))
        except mf.ManifestError as error:
            out.append(error.message)
    return out


def _candidate(verified: mf.VerifiedElement) -> _Candidate:
    element = verified.element
    metadata = {
        "uniqueId": element.unique_id,
        "partNumber": element.part_number[:200],
        "model": element.model[:200],
        "groupId": element.group_id[:200],
        "provisioningTime": element.provisioning_time.isoformat().replace("+00:00", "Z"),
        "manifestSigner": f"{verified.manifest_signer.name} (kid {verified.manifest_signer.kid})",
    }
    key_format, key, fingerprint = "", "", ""
    if verified.device_certificate is not None:
        assert verified.certificate_signer is not None
        key_format = "ES256_X509_PEM"
        key = verified.device_certificate.public_bytes(serialization.Encoding.PEM).decode()
        spki = verified.device_certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        metadata["certificateSigner"] = verified.certificate_signer.subject.rfc4514_string()
        signer_key = ec_public_key(verified.certificate_signer)
        metadata["certificateSignerKeyId"] = jose.key_id(signer_key).hex()
    elif (jwk := element.key(_AUTH_SLOT)) is not None:
        key_format = "ES256_PEM"
        public = jwk.public_key()
        key = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        spki = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    if key:
        fingerprint = hashlib.sha256(spki).hexdigest()
    return _Candidate(element.unique_id, key_format, key, fingerprint, metadata)


# Small helpers


def _check_template(template: str) -> None:
    try:
        _device_id(template, "0123456789abcdef01")
    except (KeyError, IndexError, ValueError):
        raise InvalidArgument.field(
            "device_id_template", "may use only {serial} and {SERIAL} as placeholders"
        ) from None


def _device_id(template: str, unique_id: str) -> str:
    return template.format(serial=unique_id, SERIAL=unique_id.upper())


def _ders(pems: Sequence[str], field_name: str) -> tuple[bytes, ...]:
    return tuple(_der(pem, f"{field_name}[{i}]") for i, pem in enumerate(pems))


def _der(pem: str, field_name: str) -> bytes:
    return creds.load_certificate(pem, field_name).public_bytes(serialization.Encoding.DER)


def _fingerprints(credentials: list[Any]) -> set[str]:
    """SHA-256 of each stored credential's SubjectPublicKeyInfo (as ParsedKey.fingerprint)."""
    out = set()
    for credential in credentials:
        public = credential.get("publicKey") or {}
        try:
            parsed = creds.parse_device_key(public.get("format", ""), public.get("key", ""), "")
        except InvalidArgument:
            continue
        out.add(parsed.fingerprint)
    return out


def _unique_id_hint(raw: object) -> str:
    """The unsigned header.uniqueId of a rejected entry, to help find it (not trusted)."""
    if isinstance(raw, dict) and isinstance(raw.get("header"), dict):
        value = raw["header"].get("uniqueId")
        if isinstance(value, str):
            return value[:40]
    return ""
