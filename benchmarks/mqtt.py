"""The MQTT bridge against Mosquitto (and amqtt), side by side in one run, one load generator.

Run from the project root: `.venv/bin/python -m benchmarks.mqtt` (about 3 minutes). A fresh
`ironcore serve` (SQLite, TLS with its generated ECDSA P-256 certificate, plus the plaintext
listener), Debian's Mosquitto 2 and amqtt are started side by side; Mosquitto and amqtt serve
the same certificate and key from ironcore's data directory. The load generator is the fleet
simulator (`ironcore.simulator`), one process and one event loop, for every broker.

1. Connect rate: `--connects` fresh TLS connections, `--concurrency` handshakes at a time,
   CONNECT → CONNACK (no subscriptions), two rounds (the first on a cold server: first PEM parse
   of each device's key, cold SQLite pages). ironcore verifies an ES256 JWT per connect against
   the device's credential; Mosquitto checks one user's password from its password file (every
   simulated device logs in as the same user: the simulator's username is "unused", and the
   password replaces the JWT).
2. QoS 1 throughput: `--devices` devices each keep `--window` events in flight (a new PUBLISH
   the moment a PUBACK arrives), warm-up, then `--duration` seconds counted. ironcore PUBACKs
   after a durable group commit to SQLite (WAL, synchronous=FULL); Mosquitto runs with
   `persistence false`, amqtt with its defaults (in memory). ironcore grants a connection 100
   messages/s (Cloud IoT Core's quota), so `--devices` must be large enough for that not to be
   the cap: 2,000 devices allow 200,000/s (until session 3 the default was 500 devices, whose
   50,000/s cap was where ironcore's figure stood). `--workers 1,2` gives one ironcore row per
   process count (`ironcore serve --mqtt-workers N`, processes sharing the port with
   SO_REUSEPORT); its CPU is that of every process.
   With `--database-url postgresql://…` the QoS 1 rows measure the PostgreSQL event log
   instead: `--servers` servers (default 2) share one fresh schema, the devices registered
   through the admin API and spread over them, PUBACK after the PostgreSQL commit; each
   `--server` build gets `--repeat` windows, the builds alternating (A B, B A, …), each window
   on a schema of its own (an older build cannot open a schema a newer one migrated). The
   table adds the CPU of the PostgreSQL backends serving those servers (found by their client
   ports, so other work on the database does not count), and a side-by-side table gives each
   build's means and their ratios. Issue 13's A/B: `--only throughput --database-url
   postgresql://postgres@127.0.0.1:5432/test --devices 600 --peers '' --repeat 3 --warmup 5
   --duration 25 --server baseline=…/.venv/bin/python --server current=.venv/bin/python`.
3. Idle connections: `--idle` TLS devices connect and subscribe (config QoS 1, commands QoS 0)
   and stay idle; the broker's VmRSS before and after, per connection.
4. Config fan-out (ironcore): with the idle fleet connected, a new config for every device,
   `--fanout` ways one after the other: `bulk`, one ironcore ModifyCloudToDeviceConfigs request
   naming every device of the fleet (one transaction), then `api`, one ModifyCloudToDeviceConfig
   per device through the admin API (`--api-concurrency` requests in flight,
   httpx.AsyncClient); the time until every device has received its new config and until the
   server has recorded every device's acknowledgement (device_configs.device_ack_time of that
   version, counted in the SQLite file). The Mosquitto row is the nearest peer: one backend
   client publishes each device's config (QoS 1, pipelined) to /devices/{id}/config, timed until
   every device has received it.

CPU: ours from os.times() (the load generator), the broker's from /proc/<pid>/stat, the whole
machine's from /proc/stat. The machine has 2 cores and may be shared: every table carries the
load average (1/5/15 min) at the end of its measurement.

Devices are created before the server starts, straight into its SQLite file through the store's
bulk insert (the path manifest import uses), see `brokers.seed_devices`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks import brokers as b
from benchmarks.connects import Generator, connect_packets
from benchmarks.loadgen import (
    Cpu,
    CpuMeter,
    add_server_option,
    postgres_backends,
    servers_option,
)
from ironcore.bridge.mqtt import codec
from ironcore.simulator.device import SimulatedDevice, Stats
from ironcore.simulator.fleet import Member, Target
from ironcore.simulator.provision import register_generated

REGISTRY = "bench"
TARGET_CONNECT_RATIO = 1.0  # ≥ Mosquitto's connects/s
TARGET_VS_MOSQUITTO = 0.5  # QoS 1 events/s
TARGET_VS_AMQTT = 5.0
TARGET_RSS_KB = 30.0  # per idle connection
TARGET_FANOUT_PER_S = 10_000 / 5.0  # 10,000 devices acked within 5 s


@dataclass
class ConnectRow:
    broker: str
    auth: str
    round: int
    connected: int
    errors: int
    seconds: float
    cpu: Cpu
    load: str

    @property
    def rate(self) -> float:
        return self.connected / self.seconds if self.seconds else 0.0


@dataclass
class IdleRow:
    broker: str
    connected: int
    wanted: int
    seconds: float
    rss_before: int
    rss_after: int
    loadgen_rss_delta: int
    cpu: Cpu
    load: str

    @property
    def per_connection_kb(self) -> float:
        return (self.rss_after - self.rss_before) / self.connected if self.connected else 0.0


@dataclass
class FanoutRow:
    broker: str
    devices: int
    how: str
    pushed_s: float  # all API calls answered (ironcore) / all publishes written (mosquitto)
    received_s: float
    acked_s: float | None
    received: int
    acked: int | None
    cpu: Cpu
    load: str


async def connect_rate(
    name: str,
    auth: str,
    tgt: Target,
    members: list[Member],
    pids: Callable[[], list[int]],
    rounds: int,
    args: argparse.Namespace,
    ca_file: Path,
) -> list[ConnectRow]:
    """`rounds` measured rounds of fresh TLS connects against one broker process (tree)."""
    if args.connect_client == "sim":
        return await connect_rate_sim(name, auth, tgt, members, pids, rounds, args.concurrency)
    rows = []
    generator = await asyncio.to_thread(
        Generator, tgt.host, tgt.port, str(ca_file), args.loadgen_processes, args.concurrency
    )
    try:
        for round_ in range(1, rounds + 1):
            # JWTs minted and CONNECTs built before the window, as a device mints its JWT before
            # it dials: signing is the device's work, not the broker's.
            packets = connect_packets(tgt, members)
            result = await asyncio.to_thread(generator.run, packets, pids())
            rows.append(
                ConnectRow(
                    name,
                    auth,
                    round_,
                    result.connected,
                    result.refused + result.errors,
                    result.cpu.wall,
                    result.cpu,
                    b.load_average(),
                )
            )
            await asyncio.sleep(0.5)
    finally:
        await asyncio.to_thread(generator.close)
    return rows


async def connect_rate_sim(
    name: str,
    auth: str,
    tgt: Target,
    members: list[Member],
    pids: Callable[[], list[int]],
    rounds: int,
    concurrency: int,
) -> list[ConnectRow]:
    """The connect rounds as sessions 1-3 measured them (`--connect-client sim`): the fleet
    simulator's device in this one process, which saturates on connects (issue 12)."""
    rows = []
    for round_ in range(1, rounds + 1):
        ready = [Member(m.device_id, functools.partial(str, m.token())) for m in members]
        stats = Stats()
        meter = CpuMeter(pids())
        devices = await b.connect_plain(tgt, ready, stats, concurrency, subscribe=False)
        cpu = meter.stop()
        rows.append(
            ConnectRow(
                name,
                auth,
                round_,
                len(devices),
                stats.errors + stats.refused,
                cpu.wall,
                cpu,
                b.load_average(),
            )
        )
        await b.close_all(devices)
        await asyncio.sleep(0.5)
    return rows


async def idle_fleet(
    name: str, tgt: Target, members: list[Member], pids: list[int], concurrency: int
) -> tuple[IdleRow, list[SimulatedDevice], Stats]:
    """`pids`: every process of the broker (ironcore's MQTT workers too); RSS is their sum."""
    await asyncio.sleep(1.0)
    rss_before = sum(b.rss_kb(pid) for pid in pids)
    me_before = b.rss_kb(os.getpid())
    stats = Stats()
    meter = CpuMeter(pids)
    devices = await b.connect_plain(tgt, members, stats, concurrency, subscribe=True)
    cpu = meter.stop()
    # Idle, not silent: like a real device, each sends PINGREQ within its 60 s keep-alive (a
    # broker drops a client silent for 1.5 keep-alives, which the fan-out would outlast).
    pinger = asyncio.create_task(_keep_alive(devices))
    # Let subscriptions, initial configs and their acknowledgements settle.
    await asyncio.sleep(3.0)
    row = IdleRow(
        name,
        len(devices),
        len(members),
        cpu.wall,
        rss_before,
        sum(b.rss_kb(pid) for pid in pids),
        b.rss_kb(os.getpid()) - me_before,
        cpu,
        b.load_average(),
    )
    PINGERS[id(devices)] = pinger
    return row, devices, stats


# The keep-alive task of each idle fleet, by id(devices).
PINGERS: dict[int, asyncio.Task[None]] = {}


async def _keep_alive(devices: list[SimulatedDevice], every: float = 20.0) -> None:
    while True:
        await asyncio.sleep(every)
        for device in devices:
            device.ping()


async def close_fleet(devices: list[SimulatedDevice]) -> int:
    """Stop pinging and disconnect; returns how many the broker had already dropped."""
    pinger = PINGERS.pop(id(devices), None)
    if pinger is not None:
        pinger.cancel()
    dropped = sum(1 for d in devices if d.transport is None or d.transport.is_closing())
    await b.close_all(devices)
    return dropped


def _acked_count(db: Path, version: int) -> int:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM device_configs WHERE version = ? AND device_ack_time > 0",
                (version,),
            ).fetchone()[0]
        )


async def ironcore_fanout(
    server: b.Ironcore,
    members: list[Member],
    stats: Stats,
    concurrency: int,
    bulk: bool,
    version: int,
    name: str,
    pids: list[int],
) -> FanoutRow:
    """Give every device of the fleet config `version`: in one bulk request, or one request per
    device; timed until all are received and all acknowledgements recorded. `pids`: every
    process of the server, whose CPU is counted."""
    db = server.data_dir / "ironcore.db"
    base = stats.configs
    n = len(members)
    registry = f"projects/{b.PROJECT}/locations/{b.LOCATION}/registries/{REGISTRY}"
    payload = base64.b64encode(f'{{"led": "on", "version": {version}}}'.encode()).decode()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []
    async with httpx.AsyncClient(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=120,
        limits=limits,
    ) as api:
        await api.get("/readyz")

        async def push(member: Member) -> None:
            async with gate:
                r = await api.post(
                    f"/v1/{registry}/devices/{member.device_id}:modifyCloudToDeviceConfig",
                    json={"binaryData": payload},
                )
            if r.status_code != 200 and len(failures) < 5:
                failures.append(f"{r.status_code} {r.text[:200]}")

        async def push_all() -> None:
            r = await api.post(
                f"/ironcore/v1/{registry}:modifyCloudToDeviceConfigs",
                json={"binaryData": payload, "deviceIds": [m.device_id for m in members]},
            )
            if r.status_code != 200 or r.json()["updatedDevices"] != n:
                failures.append(f"{r.status_code} {r.text[:200]}")

        meter = CpuMeter(pids)
        start = time.perf_counter()
        pushing = (
            asyncio.ensure_future(push_all())
            if bulk
            else asyncio.gather(*(push(m) for m in members))
        )
        received_at: float | None = None
        pushed_at: float | None = None
        acked_at: float | None = None
        acked = 0
        deadline = start + 300
        polled = start
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
            now = time.perf_counter()
            if pushed_at is None and pushing.done():
                pushed_at = now
            if received_at is None and stats.configs - base >= n:
                received_at = now
            if received_at is not None or now - polled > 0.5:
                polled = now
                acked = await asyncio.to_thread(_acked_count, db, version)
                if acked >= n:
                    acked_at = time.perf_counter()
                    break
            if pushed_at is not None and now - pushed_at > 30:
                break  # every push answered 30 s ago, and still not all received or acked
        await pushing
        if pushed_at is None:  # the last answers came after the last acknowledgement
            pushed_at = time.perf_counter()
        cpu = meter.stop()
    if failures:
        print(f"  config update failures: {failures}", file=sys.stderr)
    how = (
        f"1 x ModifyCloudToDeviceConfigs naming {n:,} devices"
        if bulk
        else f"{n:,} x ModifyCloudToDeviceConfig, {concurrency} in flight"
    )
    return FanoutRow(
        name,
        n,
        how,
        (pushed_at or float("nan")) - start,
        (received_at or float("nan")) - start,
        (acked_at or float("nan")) - start,
        stats.configs - base,
        acked,
        cpu,
        b.load_average(),
    )


async def mosquitto_fanout(
    broker: b.Broker, tgt: Target, members: list[Member], stats: Stats
) -> FanoutRow:
    base = stats.configs
    n = len(members)
    backend_stats = Stats()
    backend = await b.connect_plain(
        tgt, [Member("backend", lambda: b.MOSQUITTO_PASSWORD)], backend_stats, 1, False
    )
    if not backend:
        raise RuntimeError("the Mosquitto fan-out publisher could not connect")
    sender = backend[0]
    payload = b'{"led": "on", "interval": 30}'
    meter = CpuMeter([broker.pid])
    start = time.perf_counter()
    chunk: list[bytes] = []
    for i, member in enumerate(members):
        chunk.append(
            codec.encode(
                codec.Publish(
                    f"/devices/{member.device_id}/config", payload, qos=1, packet_id=i % 65535 + 1
                )
            )
        )
        if len(chunk) == 500:
            sender.transport.write(b"".join(chunk))  # type: ignore[union-attr]
            chunk = []
            await asyncio.sleep(0)
    if chunk:
        sender.transport.write(b"".join(chunk))  # type: ignore[union-attr]
    pushed = time.perf_counter() - start
    received_at = None
    deadline = start + 60
    while time.perf_counter() < deadline:
        if stats.configs - base >= n:
            received_at = time.perf_counter() - start
            break
        await asyncio.sleep(0.005)
    cpu = meter.stop()
    await b.close_all(backend)
    return FanoutRow(
        "mosquitto",
        n,
        f"one client publishes {n:,} QoS 1 configs, pipelined",
        pushed,
        received_at if received_at is not None else float("nan"),
        None,
        stats.configs - base,
        None,
        cpu,
        b.load_average(),
    )


async def cluster_throughput(args: argparse.Namespace, tmp: Path) -> list[b.Throughput]:
    """QoS 1 into the PostgreSQL event log from `--servers` servers sharing one schema: for each
    `--server` build, `--repeat` windows, the builds alternating (A B, B A, A B, …). Every window
    gets a fresh schema (made and migrated by that build's first server: an older build cannot
    open a database a newer one migrated) and `--devices` devices registered through its admin
    API, spread over the servers; the schema is dropped afterwards. CPU: every process of every
    server, and the PostgreSQL backends serving their connections."""
    results = []
    count = args.servers
    for repeat in range(args.repeat):
        order = args.server if repeat % 2 == 0 else args.server[::-1]
        for label, python in order:
            schema = f"bench_{uuid.uuid4().hex[:12]}"
            name = f"{label} TLS, {count} servers, PostgreSQL"
            cluster = await asyncio.to_thread(
                b.start_cluster,
                tmp / f"cluster-{repeat}-{label}",
                count,
                args.database_url,
                schema,
                ("--mqtt-workers", "1"),
                python,
            )
            try:
                targets = [
                    b.target("127.0.0.1", s.mqtt_port, b.client_tls(s.ca_file), REGISTRY)
                    for s in cluster
                ]
                members = await register_generated(
                    cluster[0].url, cluster[0].token, targets[0], args.devices, prefix="pg"
                )
                fleets = [(t, members[i::count]) for i, t in enumerate(targets)]
                pids = [pid for s in cluster for pid in s.pids]
                result = await b.saturate(
                    name,
                    fleets[0][0],
                    fleets[0][1],
                    pids,
                    window=args.window,
                    warmup=args.warmup,
                    duration=args.duration,
                    more=fleets[1:],
                    database=functools.partial(postgres_backends, pids),
                )
            finally:
                for server in cluster:
                    server.stop()
                await asyncio.to_thread(b.drop_schema, args.database_url, schema)
            per_event = 1e6 * result.cpu.broker / result.acknowledged if result.acknowledged else 0
            print(
                f"  {name}: {result.rate:,.0f} events/s, {per_event:.1f} µs server CPU per event",
                flush=True,
            )
            results.append(result)
    return results


# Tables


def print_connects(rows: list[ConnectRow]) -> None:
    print("\n(1) Connect rate over TLS: fresh connections, CONNECT → CONNACK")
    print(
        "| broker | auth per connect | round | connected | errors | connects/s | vs Mosquitto "
        "(same round) | server CPU ms/connect | server CPU vs Mosquitto | server CPU % "
        "| generator CPU % | machine busy % | load avg |"
    )
    print("|" + "---|" * 13)
    peer = {r.round: r for r in rows if r.broker == "mosquitto"}

    def per(r: ConnectRow) -> float:
        return 1000 * r.cpu.broker / r.connected if r.connected else float("nan")

    for r in rows:
        m = peer.get(r.round)
        vs = r.rate / m.rate if m and m.rate else float("nan")
        vs_cpu = per(r) / per(m) if m else float("nan")
        bound = (
            " (a generator was saturated: not a valid ratio)"
            if (r.cpu.generator_bound or (m is not None and m.cpu.generator_bound))
            else ""
        )
        print(
            f"| {r.broker} | {r.auth} | {r.round} | {r.connected:,} | {r.errors} "
            f"| {r.rate:,.0f} | {vs:.2f}x{bound} | {per(r):.3f} | {vs_cpu:.2f}x "
            f"| {r.cpu.pct(r.cpu.broker):.0f} | {r.cpu.generator()} | {r.cpu.machine:.0f} "
            f"| {r.load} |"
        )


def print_throughput(rows: list[b.Throughput], window: int) -> None:
    print(f"\n(2) QoS 1 events/s acknowledged, saturating ({window} in flight per device)")
    print(
        "| broker | listener | PUBACK after | devices | events/s | vs Mosquitto | vs amqtt "
        "| target | PUBACK p50 / p99 ms | errors | generator CPU % | server CPU % "
        "| server CPU µs/event | PostgreSQL CPU µs/event | machine busy % | load avg |"
    )
    print("|" + "---|" * 16)
    by = {r.name: r for r in rows}
    mosq = by.get("mosquitto TLS")
    amqtt = by.get("amqtt TLS")
    for r in rows:
        vs_m = r.rate / mosq.rate if mosq and mosq.rate else float("nan")
        vs_a = r.rate / amqtt.rate if amqtt and amqtt.rate else float("nan")
        if r.name.startswith("ironcore"):
            ok_m = "ok" if vs_m >= TARGET_VS_MOSQUITTO else "MISSED"
            ok_a = "ok" if vs_a >= TARGET_VS_AMQTT else "MISSED"
            targets = [f"≥ 0.5x Mosquitto ({ok_m})"] if mosq else []
            targets += [f"≥ 5x amqtt ({ok_a})"] if amqtt else []
            target = ", ".join(targets) or "-"
            after = (
                "PostgreSQL commit" if "PostgreSQL" in r.name else "SQLite commit (WAL, sync FULL)"
            )
        elif r.name.startswith("mosquitto"):
            target, after = "-", "receipt (persistence false)"
        else:
            target, after = "-", "receipt (in memory)"
        broker, listener = r.name.split(" ", 1)
        per_event = 1e6 * r.cpu.broker / r.acknowledged if r.acknowledged else float("nan")
        database = (
            f"{1e6 * r.cpu.database / r.acknowledged:.1f}"
            if r.cpu.database is not None and r.acknowledged
            else "-"
        )
        print(
            f"| {broker} | {listener} | {after} | {r.devices} | {r.rate:,.0f} "
            f"| {f'{vs_m:.2f}x' if mosq else '-'} "
            f"| {f'{vs_a:.1f}x' if amqtt else '-'} | {target} "
            f"| {r.latency_ms(0.5):.0f} / {r.latency_ms(0.99):.0f} "
            f"| {r.errors} | {r.cpu.generator()} | {r.cpu.pct(r.cpu.broker):.0f} "
            f"| {per_event:.1f} | {database} | {r.cpu.machine:.0f} | {r.load} |"
        )


def print_side_by_side(rows: list[b.Throughput], labels: list[str]) -> None:
    """Each build's windows of the cluster rows, their means, and the ratio to the first."""
    print("\n(2b) Side by side: mean over the windows, ratio to the first --server")
    print(
        "| build | windows | events/s (each) | mean events/s | server CPU µs/event (each) "
        "| mean | PostgreSQL CPU µs/event (each) | mean | events/s ratio | server CPU ratio "
        "| server + PostgreSQL CPU ratio |"
    )
    print("|" + "---|" * 11)
    first: tuple[float, float, float] | None = None
    for label in labels:
        mine = [r for r in rows if r.name.split(" ", 1)[0] == label and r.acknowledged]
        if not mine:
            continue
        rates = [r.rate for r in mine]
        server = [1e6 * r.cpu.broker / r.acknowledged for r in mine]
        database = [1e6 * (r.cpu.database or 0.0) / r.acknowledged for r in mine]
        means = (
            statistics.mean(rates),
            statistics.mean(server),
            statistics.mean(s + d for s, d in zip(server, database, strict=True)),
        )
        first = first or means

        def each(values: list[float], fmt: str) -> str:
            return " / ".join(format(v, fmt) for v in values)

        print(
            f"| {label} | {len(mine)} | {each(rates, ',.0f')} | {means[0]:,.0f} "
            f"| {each(server, '.1f')} | {means[1]:.1f} | {each(database, '.1f')} "
            f"| {statistics.mean(database):.1f} | {means[0] / first[0]:.2f}x "
            f"| {means[1] / first[1]:.2f}x | {means[2] / first[2]:.2f}x |"
        )


def print_idle(rows: list[IdleRow]) -> None:
    print("\n(3) Idle TLS connections (subscribed to config and commands)")
    print(
        "| broker | connected / wanted | connect time s | connects/s "
        "| broker RSS before → after MB "
        "| KB per connection | target | loadgen RSS growth MB | loadgen CPU % | broker CPU % "
        "| load avg |"
    )
    print("|" + "---|" * 11)
    for r in rows:
        target = (
            f"≤ {TARGET_RSS_KB:.0f} KB "
            f"({'ok' if r.per_connection_kb <= TARGET_RSS_KB else 'MISSED'})"
            if r.broker.startswith("ironcore")
            else "-"
        )
        print(
            f"| {r.broker} | {r.connected:,} / {r.wanted:,} | {r.seconds:.1f} "
            f"| {r.connected / r.seconds:,.0f} "
            f"| {r.rss_before / 1024:.0f} → {r.rss_after / 1024:.0f} | {r.per_connection_kb:.1f} "
            f"| {target} | {r.loadgen_rss_delta / 1024:.0f} | {r.cpu.pct(r.cpu.loadgen):.0f} "
            f"| {r.cpu.pct(r.cpu.broker):.0f} | {r.load} |"
        )


def print_fanout(rows: list[FanoutRow]) -> None:
    print("\n(4) Config fan-out to connected devices")
    print(
        "| broker | devices | how | pushes done s | all received s | all acks recorded s "
        "| acks recorded/s | target (10,000 acked in 5 s = 2,000/s) | loadgen CPU % "
        "| broker CPU % | load avg |"
    )
    print("|" + "---|" * 11)

    def seconds(value: float, count: int | None) -> str:
        done = f"{value:.2f}" if value == value else "not all"  # nan: not all within the wait
        return f"{done} ({count:,})" if count is not None else done

    for r in rows:
        if r.acked_s is not None:
            per_s = r.devices / r.acked_s if r.acked_s == r.acked_s else float("nan")
            ok = "ok" if per_s >= TARGET_FANOUT_PER_S else "MISSED"
            acked = seconds(r.acked_s, r.acked)
            rate, target = f"{per_s:,.0f}", f"{ok}"
        else:
            acked, rate, target = "- (no acks kept)", "-", "-"
        print(
            f"| {r.broker} | {r.devices:,} | {r.how} | {seconds(r.pushed_s, None)} "
            f"| {seconds(r.received_s, r.received)} | {acked} | {rate} | {target} "
            f"| {r.cpu.pct(r.cpu.loadgen):.0f} | {r.cpu.pct(r.cpu.broker):.0f} | {r.load} |"
        )


# The run


async def run(args: argparse.Namespace, tmp: Path) -> None:
    parts = args.only.split(",") if args.only else ["connect", "throughput", "idle"]
    need = max(
        args.connects if "connect" in parts else 0,
        args.devices if "throughput" in parts else 0,
        args.idle if "idle" in parts else 0,
    )
    spy = b.Profiler(args.profile)
    t0 = time.perf_counter()
    data = tmp / "ironcore"
    members = await b.seed_devices(data, REGISTRY, need, shared_key=False)
    print(f"seeded {need:,} devices with their own ES256 keys in {time.perf_counter() - t0:.1f} s")
    passwords = b.password_members(need)
    # Every part gets fresh broker processes: a cold connect round, and RSS baselines that no
    # earlier part's freed memory hides.
    servers: list[tuple[str, str]] = args.server
    # This interpreter's server: seed_devices migrated the database with this checkout's code.
    server = b.start_ironcore(data)
    tls_dir, ca_file = server.tls_dir, server.ca_file
    tls = b.client_tls(ca_file)
    server.stop()
    copies = iter(range(1_000_000))

    def fresh_copy() -> Path:
        """A copy of the seeded data directory (database, TLS, admin token) for one server
        start, so each of several servers starts from the same files."""
        path = tmp / f"ironcore-{next(copies)}"
        shutil.copytree(data, path)
        return path

    def ic_target(server: b.Ironcore, plain: bool = False) -> Target:
        if plain:
            return b.target("127.0.0.1", server.insecure_port, None, REGISTRY)
        return b.target("127.0.0.1", server.mqtt_port, tls, REGISTRY)

    def mq_target(broker: b.Broker) -> Target:
        return b.target("127.0.0.1", broker.port, tls, REGISTRY)

    if "connect" in parts:
        n = args.connects
        how = (
            f"{args.loadgen_processes} generator processes, raw CONNECTs"
            if args.connect_client == "raw"
            else "the simulator in this process"
        )
        print(
            f"\nconnect rate: {n} connections, {args.concurrency} at a time, {how} ...",
            flush=True,
        )
        rows: list[ConnectRow] = []
        for label, python in servers:
            path = fresh_copy()
            server = b.start_ironcore(path, python=python)
            try:
                # Round 1 on a cold server (first PEM parse of each device's key, cold pages).
                spy.start(f"connect-{label}", server.pid, 2)
                rows += await connect_rate(
                    label,
                    "ES256 JWT",
                    ic_target(server),
                    members[:n],
                    functools.partial(lambda s: s.pids, server),
                    args.rounds,
                    args,
                    ca_file,
                )
            finally:
                server.stop()
                shutil.rmtree(path, ignore_errors=True)
        mosquitto = b.start_mosquitto(tmp / "mosquitto", tls_dir)
        try:
            rows += await connect_rate(
                "mosquitto",
                "password file",
                mq_target(mosquitto),
                passwords[:n],
                functools.partial(lambda pid: [pid], mosquitto.pid),
                args.rounds,
                args,
                ca_file,
            )
        finally:
            mosquitto.stop()
        order = [label for label, _ in servers]
        rows.sort(key=lambda r: (r.round, order.index(r.broker) if r.broker in order else 99))
        print_connects(rows)
        spy.report()

    if "throughput" in parts:
        d = args.devices
        print(
            f"\nthroughput: {d} devices x {args.window} in flight, "
            f"{args.warmup:g} s warm-up + {args.duration:g} s ...",
            flush=True,
        )
        results = []
        plan: list[tuple[str, str, str, int, bool]] = []  # name, kind, python, processes, plain
        if args.database_url:
            results += await cluster_throughput(args, tmp)
        else:
            for label, python in servers:
                for processes in args.workers:
                    suffix = f", {processes} processes" if processes > 1 else ""
                    plan.append((f"{label} TLS{suffix}", "ironcore", python, processes, False))
        plan += [(f"{peer} TLS", peer, "", 1, False) for peer in args.peers]
        if args.plaintext and not args.database_url:
            for label, python in servers:
                plan.append((f"{label} plaintext", "ironcore", python, 1, True))
        for name, kind, python, processes, plain in plan:
            pids: list[int]
            copy: Path | None = None
            if kind == "ironcore":
                copy = fresh_copy()
                broker: b.Ironcore | b.Broker = b.start_ironcore(
                    copy, extra=("--mqtt-workers", str(processes)), python=python
                )
                assert isinstance(broker, b.Ironcore)
                tgt = ic_target(broker, plain=plain)
                who = members[:d]
                pids = b.wait_for_processes(broker, processes)
            elif kind == "mosquitto":
                broker = b.start_mosquitto(tmp / "mosquitto", tls_dir)
                tgt, who = mq_target(broker), passwords[:d]
            else:
                broker = b.start_amqtt(tmp / "amqtt", tls_dir)
                tgt, who = mq_target(broker), passwords[:d]
            if kind != "ironcore":
                pids = [broker.pid]
            pid = broker.pid
            try:
                label = name.replace(" ", "-").replace(",", "")
                result = await b.saturate(
                    name,
                    tgt,
                    who,
                    pids,
                    window=args.window,
                    warmup=args.warmup,
                    duration=args.duration,
                    on_measure=functools.partial(spy.start, label, pid, args.duration)
                    if kind == "ironcore"
                    else None,
                )
            finally:
                broker.stop()
                if copy is not None:
                    shutil.rmtree(copy, ignore_errors=True)
            print(f"  {name}: {result.rate:,.0f} events/s", flush=True)
            results.append(result)
        print_throughput(results, args.window)
        if args.database_url and len(servers) > 1:
            print_side_by_side(results, [label for label, _ in servers])
        spy.report()

    if "idle" in parts:
        n = args.idle
        print(
            f"\nidle: {n:,} TLS devices, {args.idle_concurrency} handshakes at a time ...",
            flush=True,
        )
        idle_rows: list[IdleRow] = []
        fanout_rows: list[FanoutRow] = []
        version = 1  # each server starts on the same database: config versions go on counting
        for processes in args.workers:
            name = f"ironcore, {processes} processes" if processes > 1 else "ironcore"
            server = b.start_ironcore(
                data, extra=("--mqtt-workers", str(processes)), python=servers[0][1]
            )
            try:
                pids = b.wait_for_processes(server, processes)
                row, devices, stats = await idle_fleet(
                    name, ic_target(server), members[:n], pids, args.idle_concurrency
                )
                idle_rows.append(row)
                print(
                    f"  {name}: {row.connected:,} connected, {row.per_connection_kb:.1f} KB each",
                    flush=True,
                )
                ways = args.fanout.split(",") if row.connected else []
                for way in ways:
                    version += 1
                    if version > 2:
                        await asyncio.sleep(1.5)  # a device's config changes at most once a second
                    spy.start(f"fan-out-{way}", server.pid, 5 if way == "bulk" else 10)
                    fanout_rows.append(
                        await ironcore_fanout(
                            server,
                            members[:n],
                            stats,
                            args.api_concurrency,
                            way == "bulk",
                            version,
                            name,
                            pids,
                        )
                    )
                    print(f"  {name} fan-out ({way}): {fanout_rows[-1].acked_s:.2f} s", flush=True)
                dropped = await close_fleet(devices)
                if dropped:
                    print(f"  {name} had closed {dropped:,} of the idle connections", flush=True)
            finally:
                server.stop()
        mosquitto = b.start_mosquitto(tmp / "mosquitto", tls_dir)
        try:
            row, devices, stats = await idle_fleet(
                "mosquitto",
                mq_target(mosquitto),
                passwords[:n],
                [mosquitto.pid],
                args.idle_concurrency,
            )
            idle_rows.append(row)
            if row.connected:
                fanout_rows.append(
                    await mosquitto_fanout(mosquitto, mq_target(mosquitto), passwords[:n], stats)
                )
            dropped = await close_fleet(devices)
            if dropped:
                print(f"  mosquitto had closed {dropped:,} of the idle connections", flush=True)
        finally:
            mosquitto.stop()
        print_idle(idle_rows)
        print_fanout(fanout_rows)
        spy.report()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=1000, help="connections per round")
    parser.add_argument("--concurrency", type=int, default=50, help="handshakes at a time")
    parser.add_argument("--rounds", type=int, default=2, help="connect rounds per broker")
    parser.add_argument(
        "--loadgen-processes",
        type=int,
        default=2,
        help="connect generator processes (raw client), the handshakes shared among them",
    )
    parser.add_argument(
        "--connect-client",
        choices=("raw", "sim"),
        default="raw",
        help="raw: pre-built CONNECTs from --loadgen-processes processes; sim: the fleet "
        "simulator in this process (sessions 1-3; it saturates)",
    )
    add_server_option(parser)
    parser.add_argument(
        "--peers",
        default="mosquitto,amqtt",
        help="comma list of mosquitto,amqtt: the peers' QoS 1 rows",
    )
    parser.add_argument(
        "--no-plaintext",
        dest="plaintext",
        action="store_false",
        help="leave out ironcore's plaintext QoS 1 row",
    )
    parser.add_argument("--devices", type=int, default=2000, help="publishing devices")
    parser.add_argument(
        "--database-url",
        default="",
        help="PostgreSQL (postgresql://…): the QoS 1 rows run --servers servers sharing a fresh "
        "schema of this database, one schema per window, dropped afterwards",
    )
    parser.add_argument(
        "--servers", type=int, default=2, help="with --database-url: servers sharing the schema"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="with --database-url: windows per --server, the builds alternating",
    )
    parser.add_argument(
        "--workers",
        default="1,2",
        help="comma list: ironcore's QoS 1 rows with this many MQTT processes (--mqtt-workers)",
    )
    parser.add_argument("--window", type=int, default=16, help="QoS 1 events in flight each")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds counted")
    parser.add_argument("--idle", type=int, default=5000, help="idle TLS connections")
    parser.add_argument("--idle-concurrency", type=int, default=100)
    parser.add_argument("--api-concurrency", type=int, default=64, help="fan-out API requests")
    parser.add_argument(
        "--fanout",
        default="bulk,api",
        help="comma list of bulk,api: config fan-out ways, in this order",
    )
    parser.add_argument("--only", default="", help="comma list of connect,throughput,idle")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample ironcore with py-spy while measuring; collapsed stacks go to DIR",
    )
    args = parser.parse_args()
    try:
        args.workers = [int(n) for n in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers {args.workers!r}: a comma list of process counts")
    args.server = servers_option(parser, args.server)
    args.peers = [p for p in args.peers.split(",") if p]
    if any(p not in ("mosquitto", "amqtt") for p in args.peers):
        parser.error(f"--peers {args.peers!r}: a comma list of mosquitto and amqtt")
    ways = args.fanout.split(",") if args.fanout else []
    if any(way not in ("bulk", "api") for way in ways):
        parser.error(f"--fanout {args.fanout!r}: a comma list of bulk and api")
    if "bulk" in ways and args.idle > 10_000:
        parser.error("--fanout bulk names every device, at most 10,000 (--idle)")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    limit = b.raise_fd_limit()
    print(
        f"MQTT benchmark, {os.cpu_count()} CPUs, load average {b.load_average()}, "
        f"our fd limit {limit}"
    )
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="ironcore-mqtt-bench-") as tmp,
        b.event_loop_runner() as runner,
    ):
        runner.run(run(args, Path(tmp)))
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average {b.load_average()}")


if __name__ == "__main__":
    main()
