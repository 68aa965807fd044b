"""Reel creation and manifest import at scale.

Run from the project root: `.venv/bin/python -m benchmarks.manifests [COUNT]` (default 10,000).

1. A reel of COUNT software secure elements: keys made inside each element, a Microchip-style
   device certificate from the batch signer, a signed manifest entry, one element file each.
   Timed on tmpfs (/dev/shm) and on the disk, since creating files is what limits it on disk.
2. The manifest imported into a SQLite registry whose CA is the owner's root: every ES256
   signature and every certificate chain verified (in a process pool, on every core), devices
   created in bulk transactions. Then imported again (every entry unchanged).

For scale: AWS's published Trust&GO bulk importer (thingpress) registers about 100,000
certificates per hour, 28 per second.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from ironcore.factory.importer import import_manifest
from ironcore.factory.reel import make_reel
from ironcore.pki.ca import CaDirectory, KeySpec, pem
from ironcore.registry.names import LocationName, RegistryName
from ironcore.registry.resources import DeviceRegistry, PublicKeyCertificate, RegistryCredential
from ironcore.registry.service import DeviceManager
from ironcore.registry.store import Store

SPEC = KeySpec("file", passphrase=b"benchmark passphrase")


def reel(ca: CaDirectory, out: Path, count: int) -> float:
    started = time.perf_counter()
    make_reel(
        out=out,
        count=count,
        signer=ca.signer("b1"),
        signer_key=SPEC.open(ca.signer_path("b1")),
        manifest_signer=ca.manifest_signer(),
        manifest_key=SPEC.open(ca.manifest_signer_path),
        now=datetime.now(UTC),
    )
    return time.perf_counter() - started


async def import_twice(ca: CaDirectory, data: bytes, database: Path) -> tuple[float, float]:
    store = await Store.open(f"sqlite:///{database}")
    manager = DeviceManager(store)
    location = LocationName("bench", "us-central1")
    credential = RegistryCredential(
        public_key_certificate=PublicKeyCertificate(certificate=pem(ca.root()))
    )
    await manager.create_registry(location, DeviceRegistry(id="reel", credentials=[credential]))
    registry = RegistryName(location, "reel")
    timings = []
    for expected in ("imported", "unchanged"):
        started = time.perf_counter()
        report = await import_manifest(
            manager, registry, data, trust_signers=[pem(ca.manifest_signer())]
        )
        timings.append(time.perf_counter() - started)
        assert report.count(expected) == len(report.entries), report.entries[:3]
    await store.close()
    return timings[0], timings[1]


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    print(f"{os.cpu_count()} CPUs, {count} secure elements")
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as disk:
        ca = CaDirectory(Path(disk) / "pki")
        ca.init(SPEC, ec.SECP256R1(), "Bench Root CA", "Bench", datetime.now(UTC))
        ca.create_signer("b1", SPEC, SPEC.open(ca.root_path), datetime.now(UTC))
        if Path("/dev/shm").is_dir():
            shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
            try:
                seconds = reel(ca, shm / "reel", count)
                print(f"reel on tmpfs: {seconds:.2f} s, {count / seconds:,.0f} elements/s")
            finally:
                shutil.rmtree(shm)
        seconds = reel(ca, Path(disk) / "reel", count)
        print(f"reel on disk:  {seconds:.2f} s, {count / seconds:,.0f} elements/s")
        first, again = asyncio.run(
            import_twice(
                ca, (Path(disk) / "reel" / "manifest.json").read_bytes(), Path(disk) / "bench.db"
            )
        )
        print(
            f"import:        {first:.2f} s, {count / first:,.0f} entries/s (all verified, all new)"
        )
        print(f"re-import:     {again:.2f} s, {count / again:,.0f} entries/s (all unchanged)")


if __name__ == "__main__":
    main()
