"""Serving firmware images: N devices download a 1 MB image at once, each with its own JWT.

`python -m benchmarks.firmware [--devices 1000] [--size-mb 1]`: a fresh `ironcore serve`
(SQLite, devices seeded in bulk as the MQTT benchmark does), one signed image uploaded through
the admin API, then every device opens its own connection and GETs
`/ironcore/v1/…/devices/{id}/firmware/{sha256}` with its device JWT at the same moment. The load
generator is raw asyncio streams (a request, headers, then `Content-Length` bytes). Reported:
aggregate MB/s, wall time, errors, server RSS before and at its peak, and the CPU of server
and load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from benchmarks.brokers import (
    LOCATION,
    PROJECT,
    CpuMeter,
    load_average,
    raise_fd_limit,
    rss_kb,
    seed_devices,
    start_ironcore,
)
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


async def run(devices: int, size_mb: float) -> None:
    raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        members: list[Member] = await seed_devices(data, REGISTRY, devices, prefix="fw")
        server = start_ironcore(data)
        try:
            key = EncryptedFileKey.generate(
                Path(tmp) / "fw.key", ec.SECP256R1(), b"benchmark passphrase"
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
            rss_before = rss_kb(server.pid)
            meter = CpuMeter([server.pid])
            with PeakRss(server.pid) as peak:
                started = time.perf_counter()
                results = await asyncio.gather(
                    *(
                        download(host, port, f"{registry}/devices/{d}/firmware/{sha}", t)
                        for d, t in tokens
                    ),
                    return_exceptions=True,
                )
                seconds = time.perf_counter() - started
            cpu = meter.stop()
            received = sum(r for r in results if isinstance(r, int))
            complete = sum(1 for r in results if r == len(image))
            print(f"Firmware serving, {devices} devices x {size_mb:g} MB at once, 2 CPUs")
            print(
                "| devices | complete | errors | wall s | aggregate MB/s "
                "| server RSS before → peak MB | server CPU % | load generator CPU % | load avg |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
            print(
                f"| {devices} | {complete} | {devices - complete} | {seconds:.2f} | "
                f"{received / seconds / 1e6:,.0f} | "
                f"{rss_before / 1024:.0f} → {peak.peak / 1024:.0f} | "
                f"{cpu.pct(cpu.broker):.0f} | {cpu.pct(cpu.loadgen):.0f} | {load_average()} |"
            )
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--size-mb", type=float, default=1.0)
    options = parser.parse_args()
    asyncio.run(run(options.devices, options.size_mb))


if __name__ == "__main__":
    main()
