"""Many idle TLS devices held at once: server memory per connection, beyond one process's
open-file limit.

Run from the project root: `.venv/bin/python -m benchmarks.hold` (50,000 connections, about
3 minutes). This machine lets a process open 20,000 files at most (the hard limit; no
CAP_SYS_RESOURCE to raise it), so neither one server process nor one load generator can hold
50,000 connections:

- ironcore runs `--mqtt-workers` processes (default 4) sharing the port with SO_REUSEPORT;
- the load is `--loadgens` processes (default 4) of the fleet simulator, each connecting its
  share of devices from its own loopback address (127.0.0.2, 127.0.0.3, ...), since one
  address has ~28,000 ephemeral ports towards one server port.

Every device has its own ES256 key (JWTs minted before the connect, as a device does); each
connects over TLS, subscribes to config (QoS 1) and commands (QoS 0), receives its config, and
then only sends PINGREQ every 20 s. Server memory is the VmRSS of all its processes, just before
the first connect and 5 s after the last; per connection is the difference divided by the
connections held. Mosquitto (one process, so at most ~19,900 connections here) is measured
with `--mosquitto` connections for reference, the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import brokers as b

REGISTRY = "bench"
TARGET_RSS_KB = 30.0
# Seconds between a held device's PINGREQs (its keep-alive is 60 s).
PING_SECONDS = 20.0


@dataclass
class Held:
    broker: str
    processes: int
    wanted: int
    held: int
    errors: int
    connect_seconds: float
    rss_before_kb: int
    rss_after_kb: int
    loadgen_rss_kb: int
    load: str

    @property
    def per_connection_kb(self) -> float:
        return (self.rss_after_kb - self.rss_before_kb) / self.held if self.held else 0.0


async def hold(
    name: str,
    port: int,
    ca_file: Path,
    server_pids: list[int],
    credentials: list[tuple[str, str]],
    loadgens: int,
    concurrency: int,
    tmp: Path,
) -> Held:
    """Connect every (device id, password) from `loadgens` processes; measure; let go."""
    await asyncio.sleep(1.0)
    rss_before = sum(b.rss_kb(pid) for pid in server_pids)
    shares = [credentials[k::loadgens] for k in range(loadgens)]
    children = []
    started = time.perf_counter()
    for k, share in enumerate(shares):
        path = tmp / f"{name}-share-{k}.json"
        path.write_text(json.dumps(share))
        children.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.hold",
                "--loadgen",
                json.dumps([str(path), port, str(ca_file), f"127.0.0.{k + 2}", concurrency]),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        )
    held = errors = 0
    for child in children:
        assert child.stdout is not None
        line = await child.stdout.readline()
        if not line:
            raise RuntimeError(f"a load generator exited with {await child.wait()}")
        report = json.loads(line)
        held += report["held"]
        errors += report["errors"]
    connect_seconds = time.perf_counter() - started
    await asyncio.sleep(5.0)  # initial configs delivered and acknowledged
    rss_after = sum(b.rss_kb(pid) for pid in server_pids)
    loadgen_rss = sum(b.rss_kb(child.pid) for child in children)
    load = b.load_average()
    for child in children:
        assert child.stdin is not None
        child.stdin.close()
    for child in children:
        await child.wait()
    return Held(
        name,
        len(server_pids),
        len(credentials),
        held,
        errors,
        connect_seconds,
        rss_before,
        rss_after,
        loadgen_rss,
        load,
    )


async def loadgen(share_file: str, port: int, ca_file: str, source: str, concurrency: int) -> None:
    """One load generator process: connect the share, report, ping until stdin closes."""
    from ironcore.simulator.device import Stats, connect

    share = json.loads(Path(share_file).read_text())  # noqa: ASYNC240 (before any connection)
    tls = b.client_tls(Path(ca_file))
    tgt = b.target("127.0.0.1", port, tls, REGISTRY)
    stats = Stats()
    gate = asyncio.Semaphore(concurrency)
    devices = []

    async def one(device_id: str, password: str) -> None:
        async with gate:
            try:
                devices.append(
                    await connect(
                        tgt.host,
                        tgt.port,
                        tls,
                        tgt.client_id(device_id),
                        device_id,
                        password,
                        stats,
                        source=source,
                    )
                )
            except Exception:
                stats.errors += 1

    await asyncio.gather(*(one(device_id, password) for device_id, password in share))
    print(json.dumps({"held": len(devices), "errors": stats.errors}), flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.create_future()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def wait_eof() -> None:
        await reader.read()
        stdin_closed.set_result(None)

    watcher = asyncio.create_task(wait_eof())
    while not stdin_closed.done():
        try:
            await asyncio.wait_for(asyncio.shield(stdin_closed), PING_SECONDS)
        except TimeoutError:
            for device in devices:
                device.ping()
    watcher.cancel()
    await b.close_all(devices)


def print_rows(rows: list[Held]) -> None:
    print("\nIdle TLS connections held (subscribed to config and commands)")
    print(
        "| broker | processes | held / wanted | errors | connect time s | server RSS before → "
        "after MB | KB per connection | target | load generators' RSS MB | load avg |"
    )
    print("|" + "---|" * 10)
    for r in rows:
        target = (
            f"≤ {TARGET_RSS_KB:g} KB ({'ok' if r.per_connection_kb <= TARGET_RSS_KB else 'MISSED'})"
            if r.broker == "ironcore"
            else "-"
        )
        print(
            f"| {r.broker} | {r.processes} | {r.held:,} / {r.wanted:,} | {r.errors} "
            f"| {r.connect_seconds:.1f} "
            f"| {r.rss_before_kb / 1024:.0f} → {r.rss_after_kb / 1024:.0f} "
            f"| {r.per_connection_kb:.1f} | {target} | {r.loadgen_rss_kb / 1024:.0f} | {r.load} |"
        )


async def run(args: argparse.Namespace, tmp: Path) -> None:
    t0 = time.perf_counter()
    data = tmp / "ironcore"
    members = await b.seed_devices(data, REGISTRY, args.connections, shared_key=False)
    print(
        f"seeded {len(members):,} devices with their own keys in {time.perf_counter() - t0:.0f} s"
    )
    t0 = time.perf_counter()
    tokens = [(m.device_id, m.token()) for m in members]
    print(f"minted {len(tokens):,} JWTs in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    server = b.start_ironcore(data, extra=("--mqtt-workers", str(args.workers)))
    try:
        pids = b.wait_for_processes(server, args.workers)
        rows.append(
            await hold(
                "ironcore",
                server.mqtt_port,
                server.ca_file,
                pids,
                tokens,
                args.loadgens,
                args.concurrency,
                tmp,
            )
        )
        print(f"  ironcore: {rows[-1].held:,} held, {rows[-1].per_connection_kb:.1f} KB each")
    finally:
        server.stop()
    if args.mosquitto:
        mosquitto = b.start_mosquitto(tmp / "mosquitto", server.tls_dir)
        try:
            passwords = [(m.device_id, m.token()) for m in b.password_members(args.mosquitto)]
            rows.append(
                await hold(
                    "mosquitto",
                    mosquitto.port,
                    server.ca_file,
                    [mosquitto.pid],
                    passwords,
                    args.loadgens,
                    args.concurrency,
                    tmp,
                )
            )
        finally:
            mosquitto.stop()
    print_rows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=4, help="ironcore --mqtt-workers")
    parser.add_argument("--loadgens", type=int, default=4, help="load generator processes")
    parser.add_argument("--concurrency", type=int, default=50, help="handshakes at a time, each")
    parser.add_argument(
        "--mosquitto", type=int, default=19_000, help="Mosquitto's connections (0: none)"
    )
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)  # a load generator process
    args = parser.parse_args()
    b.raise_fd_limit()
    if args.loadgen:
        share, port, ca_file, source, concurrency = json.loads(args.loadgen)
        with b.event_loop_runner() as runner:
            runner.run(loadgen(share, port, ca_file, source, concurrency))
        return
    print(f"hold benchmark, {os.cpu_count()} CPUs, load average {b.load_average()}", flush=True)
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="ironcore-hold-bench-") as tmp,
        b.event_loop_runner() as runner,
    ):
        runner.run(run(args, Path(tmp)))
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average {b.load_average()}")


if __name__ == "__main__":
    main()
