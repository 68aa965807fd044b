"""Serving firmware images: N devices download a 1 MB image at once, each with its own JWT.

`python -m benchmarks.firmware [--devices 1000] [--size-mb 1] [--rounds 2]`: a fresh
`ironcore serve` (SQLite, devices seeded in bulk as the MQTT benchmark does), one signed image
uploaded through the admin API, then every device opens its own connection and GETs
`/ironcore/v1/…/devices/{id}/firmware/{sha256}` with its device JWT at the same moment,
`--rounds` times. The load generator is raw asyncio streams in this process (a request,
headers, then `Content-Length` bytes). There is no peer: the figure stands against the wire.

A row per round, led by the server's CPU per MB served (utime + stime of the server process and
its descendants, every thread, from /proc), the figure that holds on a shared machine; then
aggregate MB/s, wall time, errors, server RSS before and at its peak, the load generator's CPU
(flagged **generator-bound** at >= 90 % of a core: the rate is then the generator's) and the
load average. `--server LABEL=PYTHON` (repeatable) measures another checkout's server with the
same harness.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import tempfile
import threading
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from benchmarks.brokers import (
    LOCATION,
    PROJECT,
    raise_fd_limit,
    rss_kb,
    seed_devices,
    start_ironcore,
)
from benchmarks.loadgen import CpuMeter, add_server_option, load_average, servers_option
from ironcore.firmware.signing import sign
from ironcore.formats.firmware import Manifest
from ironcore.pki.keystore import EncryptedFileKey
from ironcore.simulator.fleet import Member

REGISTRY = "fw-serve"


async def download(host: str, port: int, path: str, token: str) -> int:
    """GET one image over its own connection; the bytes received (0 on an error)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await reader.readexactly(length)
        return len(body) if status == b"200" else 0
    finally:
        writer.close()


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, rss_kb(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_kb(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def run(devices: int, size_mb: float, rounds: int, servers: list[tuple[str, str]]) -> None:
    raise_fd_limit()
    print(
        f"Firmware serving, {devices} devices x {size_mb:g} MB at once, {rounds} rounds, "
        f"{os.cpu_count()} CPUs, load average {load_average()}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        seeded = Path(tmp) / "seeded"
        members: list[Member] = await seed_devices(seeded, REGISTRY, devices, prefix="fw")
        for label, python in servers:
            data = Path(tmp) / label
            shutil.copytree(seeded, data)
            rows += await serve_rounds(label, python, data, members, size_mb, rounds)
    print(
        "| server | round | server CPU ms / MB | devices | complete | errors | wall s "
        "| aggregate MB/s | server RSS before → peak MB | server CPU % | generator CPU % "
        "| machine busy % | load avg |"
    )
    print("|" + "---|" * 13)
    for row in rows:
        print(row)
    print(f"load average {load_average()} at the end")


async def serve_rounds(
    label: str, python: str, data: Path, members: list[Member], size_mb: float, rounds: int
) -> list[str]:
    """Start `python`'s server on `data`, upload one image, and time `rounds` downloads of it
    by every member at once; a table row each."""
    server = start_ironcore(data, python=python)
    rows = []
    try:
        key = EncryptedFileKey.generate(
            data.parent / f"{label}-fw.key", ec.SECP256R1(), b"benchmark passphrase"
        )
        image = os.urandom(int(size_mb * 1024 * 1024))
        manifest = sign(key, Manifest.for_image("bench-model", 1, image, 1)).to_json()
        async with httpx.AsyncClient(timeout=120) as api:
            response = await api.post(
                f"{server.url}/ironcore/v1/projects/{PROJECT}/firmware",
                json={"image": base64.b64encode(image).decode(), "manifest": manifest},
                headers={"Authorization": f"Bearer {server.token}"},
            )
        response.raise_for_status()
        sha = response.json()["sha256"]
        tokens = [(m.device_id, m.token()) for m in members]
        host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])
        registry = f"/ironcore/v1/projects/{PROJECT}/locations/{LOCATION}/registries/{REGISTRY}"
        for round_ in range(1, rounds + 1):
            rss_before = rss_kb(server.pid)
            meter = CpuMeter([server.pid])
            with PeakRss(server.pid) as peak:
                results = await asyncio.gather(
                    *(
                        download(host, port, f"{registry}/devices/{d}/firmware/{sha}", t)
                        for d, t in tokens
                    ),
                    return_exceptions=True,
                )
            cpu = meter.stop()
            received = sum(r for r in results if isinstance(r, int))
            complete = sum(1 for r in results if r == len(image))
            mb = received / 1e6
            per_mb = 1000 * cpu.broker / mb if mb else float("nan")
            rows.append(
                f"| {label} | {round_} | **{per_mb:.2f}** | {len(members)} | {complete} "
                f"| {len(members) - complete} | {cpu.wall:.2f} | {mb / cpu.wall:,.0f} "
                f"| {rss_before / 1024:.0f} → {peak.peak / 1024:.0f} "
                f"| {cpu.pct(cpu.broker):.0f} | {cpu.generator()} | {cpu.machine:.0f} "
                f"| {load_average()} |"
            )
            print(f"  {label} round {round_}: {mb / cpu.wall:,.0f} MB/s", flush=True)
            await asyncio.sleep(1.0)  # the server closes the last connections
    finally:
        server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--size-mb", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2, help="downloads by every device")
    add_server_option(parser)
    options = parser.parse_args()
    servers = servers_option(parser, options.server)
    asyncio.run(run(options.devices, options.size_mb, options.rounds, servers))


if __name__ == "__main__":
    main()
