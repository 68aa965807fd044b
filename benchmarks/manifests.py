"""Reel creation and manifest import at scale.

Run from the project root: `.venv/bin/python -m benchmarks.manifests [COUNT]` (default 10,000).

1. A reel of COUNT software secure elements: keys made inside each element, a Microchip-style
   device certificate from the batch signer, a signed manifest entry, one element file each.
   Timed on tmpfs (/dev/shm) and on the disk, since creating files is what limits it on disk.
2. The manifest imported into a SQLite registry whose CA is the owner's root: every ES256
   signature and every certificate chain verified (in a process pool, on every core), devices
   created in bulk transactions. Then imported again (every entry unchanged).

Every figure comes with its CPU: the import runs in this process (the server's code, called as
the admin API's import route calls it) and its verification pool, so its CPU is this process's
and every descendant's (utime + stime from /proc, the pool's forkserver workers included),
sampled before and after each import; the reel is the factory side (not the server), reported
the same way. The machine's busy % over the import shows whether other work shared it.

To measure another checkout's import with this harness, run it with that checkout's
interpreter from this directory: `/path/to/checkout/.venv/bin/python -m benchmarks.manifests`
(the benchmark is this directory's, `ironcore` is the interpreter's).

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

from benchmarks.loadgen import machine_busy_seconds, process_tree_cpu, tree_delta
from ironcore.factory.importer import import_manifest
from ironcore.factory.reel import make_reel
from ironcore.pki.ca import CaDirectory, KeySpec, pem
from ironcore.registry.names import LocationName, RegistryName
from ironcore.registry.resources import DeviceRegistry, PublicKeyCertificate, RegistryCredential
from ironcore.registry.service import DeviceManager
from ironcore.registry.store import Store

SPEC = KeySpec("file", passphrase=b"benchmark passphrase")


class Window:
    """Wall time, the CPU of this process and its descendants, and the machine's busy %."""

    def __init__(self) -> None:
        self.cpu0 = process_tree_cpu([os.getpid()])
        self.busy0, self.total0 = machine_busy_seconds()
        self.wall0 = time.perf_counter()

    def stop(self) -> tuple[float, float, float]:
        wall = time.perf_counter() - self.wall0
        cpu = tree_delta(self.cpu0, process_tree_cpu([os.getpid()]))
        busy, total = machine_busy_seconds()
        machine = 100 * (busy - self.busy0) / (total - self.total0) if total > self.total0 else 0.0
        return wall, cpu, machine


def describe(what: str, count: int, noun: str, wall: float, cpu: float, machine: float) -> str:
    return (
        f"{what} {wall:.2f} s, {count / wall:,.0f} {noun}/s; CPU {cpu:.2f} s "
        f"({1000 * cpu / count:.3f} ms per entry, {100 * cpu / wall:.0f} % of one core); "
        f"machine {machine:.0f} % busy"
    )


def reel(ca: CaDirectory, out: Path, count: int) -> tuple[float, float, float]:
    window = Window()
    make_reel(
        out=out,
        count=count,
        signer=ca.signer("b1"),
        signer_key=SPEC.open(ca.signer_path("b1")),
        manifest_signer=ca.manifest_signer(),
        manifest_key=SPEC.open(ca.manifest_signer_path),
        now=datetime.now(UTC),
    )
    return window.stop()


Timing = tuple[float, float, float]  # wall s, CPU s (this process and its pool), machine busy %


async def import_twice(ca: CaDirectory, data: bytes, database: Path) -> tuple[Timing, Timing]:
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
        window = Window()
        report = await import_manifest(
            manager, registry, data, trust_signers=[pem(ca.manifest_signer())]
        )
        timings.append(window.stop())
        assert report.count(expected) == len(report.entries), report.entries[:3]
    await store.close()
    return timings[0], timings[1]


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    import ironcore

    print(
        f"{os.cpu_count()} CPUs, {count} secure elements, ironcore from "
        f"{Path(ironcore.__file__).parent}, load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as disk:
        ca = CaDirectory(Path(disk) / "pki")
        ca.init(SPEC, ec.SECP256R1(), "Bench Root CA", "Bench", datetime.now(UTC))
        ca.create_signer("b1", SPEC, SPEC.open(ca.root_path), datetime.now(UTC))
        if Path("/dev/shm").is_dir():
            shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
            try:
                print(describe("reel on tmpfs:", count, "elements", *reel(ca, shm / "reel", count)))
            finally:
                shutil.rmtree(shm)
        print(describe("reel on disk: ", count, "elements", *reel(ca, Path(disk) / "reel", count)))
        first, again = asyncio.run(
            import_twice(
                ca, (Path(disk) / "reel" / "manifest.json").read_bytes(), Path(disk) / "bench.db"
            )
        )
        print(describe("import:       ", count, "entries", *first) + " (all verified, all new)")
        print(describe("re-import:    ", count, "entries", *again) + " (all unchanged)")
        print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
