"""Event routing: the embedded log behind the MQTT bridge, JetStream, HTTP publishEvent and
pull subscriptions.

Run from the project root: `.venv/bin/python -m benchmarks.events` (about 2 minutes). Every
part gets a fresh `ironcore serve` process (SQLite) on one data directory, seeded before the
first start with `--devices` devices (see `brokers.seed_devices`).

1. The embedded log, durable vs a null sink. MQTT QoS 1 from `--devices` devices, each keeping
   `--window` events in flight (the fleet simulator as in benchmarks/mqtt.py), counted over
   `--duration` s after a warm-up. ironcore has no flag for a sink that does nothing, so the
   "null sink" server is the same CLI run through this module (`--as-server null`), which first
   replaces `BridgeStore.append_events` (the one call the event log's group commit makes per batch)
   with a no-op: the bridge, routing, batching and PUBACK ordering all run as usual, only the
   SQLite transaction is skipped. The ratio durable / null is what durability costs the bridge.
   The same comparison is also made in isolation, in this process, without MQTT:
   `EventLog.submit` with `--window x --devices` events outstanding, into SQLite or the no-op.
2. JetStream: the registry's events go to a topic created with backend "nats" on a server
   started with `--nats-url`; every PUBACK waits for JetStream's publish acknowledgement. The
   stream is deleted afterwards. (Run last: it points the registry at that topic.)
3. HTTP publishEvent: `--http-connections` keep-alive connections (benchmarks/loadgen.py's lean
   client), requests pre-built round-robin over `--http-devices` devices, each with one ES256
   JWT minted up front; the server verifies the JWT on every request (no token cache).
4. Pull subscriptions: `--pull-events` events published to an embedded topic through
   `topics/{t}:publish` (1,000 per request), then one consumer pulls (maxMessages 1000) and
   acknowledges in a loop until all are acknowledged.

Every row leads with the server's CPU per item (utime + stime of the server process and its
descendants, every thread, from /proc, over the counted window): on a shared machine rates fall
but this holds. Beside it: the load generator's CPU (this process, os.times; flagged
**generator-bound** at >= 90 % of a core, when the rate measures the generator), NATS's CPU
when it is involved, and the load average (the machine has 2 cores and may be shared). Part
3's HTTP row is the best of three 3 s rounds; its CPU per request is that round's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks import brokers as b
from benchmarks.loadgen import Cpu, CpuMeter, processes_named, run_load
from ironcore.simulator.fleet import Member

REGISTRY = "bench"
EVENTS_TOPIC = f"projects/{b.PROJECT}/topics/{REGISTRY}-events"
NATS_URL = os.environ.get("IRONCORE_BENCH_NATS_URL", "nats://127.0.0.1:4222")
TARGET = {"durable": 20_000.0, "nats": 10_000.0, "http": 2_000.0, "pull": 20_000.0}


@dataclass
class Row:
    part: str
    what: str
    rate: float
    unit: str
    target: float | None
    ratio: str
    detail: str
    generator: str  # the load generator's CPU % of one core, flagged when it was the limit
    server_pct: float
    per_item_us: float  # the server's CPU per event / request / message
    other: str
    load: str


# The null-sink server


def serve_as(variant: str, argv: list[str]) -> None:
    """Run the ironcore CLI (`argv` = `serve …`), after patching it for `variant`."""
    if variant == "null":
        from ironcore.registry.store.bridge import BridgeStore

        async def append_events(self: BridgeStore, rows: object) -> None:
            return None

        BridgeStore.append_events = append_events  # type: ignore[method-assign]
    elif variant != "stock":
        raise SystemExit(f"unknown server variant {variant!r}")
    sys.argv = ["ironcore", *argv]
    from ironcore.cli.main import app

    app()


def start_server(data: Path, variant: str = "stock", extra: list[str] | None = None) -> b.Ironcore:
    return b.start_ironcore(
        data, extra or [], module=("-m", "benchmarks.events", "--as-server", variant)
    )


# 1. The embedded log


async def isolated_log(
    null: bool, outstanding: int, seconds: float, tmp: Path
) -> tuple[float, Cpu]:
    """EventLog.submit → group commit, in this process: events/s with `outstanding` waiting."""
    from ironcore.registry.store import Store
    from ironcore.routing.log import EventLog

    store = await Store.open(f"sqlite:///{tmp / ('null' if null else 'durable')}-log.db", None)
    if null:

        async def nothing(rows: object) -> None:
            return None

        store.bridge.append_events = nothing  # type: ignore[method-assign]
    log = EventLog(store)
    # As the router hands them over: serialized once per device.
    attributes = json.dumps(
        {
            "deviceId": "dev-000001",
            "deviceNumId": "1000000000000002",
            "deviceRegistryId": REGISTRY,
            "deviceRegistryLocation": b.LOCATION,
            "projectId": b.PROJECT,
        }
    )
    payload = b"x" * 64
    done = 0
    try:
        pending: list[asyncio.Future[None]] = []
        end = time.perf_counter() + 1.0  # warm-up
        while time.perf_counter() < end:
            pending.append(log.submit(EVENTS_TOPIC, payload, attributes))
            if len(pending) >= outstanding:
                await pending[0]
                pending = [f for f in pending if not f.done()]
        meter = CpuMeter([])
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for _ in range(outstanding - len(pending)):
                pending.append(log.submit(EVENTS_TOPIC, payload, attributes))
            await pending[0]
            still = [f for f in pending if not f.done()]
            done += len(pending) - len(still)
            pending = still
        cpu = meter.stop()
        await asyncio.gather(*pending)
    finally:
        await log.close()
        await store.close()
    return done / cpu.wall, cpu


async def mqtt_events(
    name: str,
    data: Path,
    members: list[Member],
    args: argparse.Namespace,
    variant: str,
    extra: list[str] | None = None,
    setup: object = None,
    spy: b.Profiler | None = None,
) -> tuple[b.Throughput, b.Ironcore]:
    server = start_server(data, variant, extra)
    try:
        if setup is not None:
            await setup(server)  # type: ignore[operator]
        tls = b.client_tls(server.ca_file)
        tgt = b.target("127.0.0.1", server.mqtt_port, tls, REGISTRY)
        also = processes_named("nats-server") if extra else []
        result = await b.saturate(
            name,
            tgt,
            members[: args.devices],
            [server.pid],
            window=args.window,
            warmup=args.warmup,
            duration=args.duration,
            also=also,
            on_measure=(lambda: spy.start(name, server.pid, args.duration)) if spy else None,
        )
    finally:
        server.stop()
    return result, server


# 2. JetStream


async def use_nats_topic(server: b.Ironcore, topic: str) -> None:
    """Create `topic` with backend nats and point the registry's events at it."""
    _, project, _, topic_id = topic.split("/")
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=30
    ) as api:
        r = await api.put(f"/v1/projects/{project}/topics/{topic_id}", json={"backend": "nats"})
        if r.status_code != 200:
            raise RuntimeError(f"CreateTopic (nats) answered {r.status_code}: {r.text}")
        r = await api.patch(
            f"/v1/projects/{b.PROJECT}/locations/{b.LOCATION}/registries/{REGISTRY}",
            params={"updateMask": "eventNotificationConfigs"},
            json={"eventNotificationConfigs": [{"pubsubTopicName": topic}]},
        )
        if r.status_code != 200:
            raise RuntimeError(f"UpdateDeviceRegistry answered {r.status_code}: {r.text}")


async def delete_stream(topic: str) -> str:
    import nats

    from ironcore.routing.nats import stream_name

    client = await nats.connect(NATS_URL)
    try:
        js = client.jetstream()
        name = stream_name(topic)
        info = await js.stream_info(name)
        stored = info.state.messages
        await js.delete_stream(name)
        return f"stream {name} held {stored:,} messages, deleted"
    finally:
        await client.close()


def nats_reachable() -> bool:
    import socket

    host, _, port = NATS_URL.removeprefix("nats://").partition(":")
    try:
        with socket.create_connection((host, int(port or 4222)), timeout=1):
            return True
    except OSError:
        return False


# 3. HTTP publishEvent


def publish_requests(members: list[Member]) -> tuple[Callable[[], bytes], int]:
    body = json.dumps({"binaryData": base64.b64encode(b"x" * 64).decode()}).encode()
    prebuilt = []
    for member in members:
        path = (
            f"/v1/projects/{b.PROJECT}/locations/{b.LOCATION}/registries/{REGISTRY}"
            f"/devices/{member.device_id}:publishEvent"
        )
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {member.token()}"
            f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        prebuilt.append(head.encode() + body)
    index = 0

    def next_request() -> bytes:
        nonlocal index
        request = prebuilt[index % len(prebuilt)]
        index += 1
        return request

    return next_request, len(prebuilt)


# 4. Pull subscriptions


async def pull_subscription(server: b.Ironcore, count: int, batch: int = 1000) -> tuple[Row, Row]:
    headers = {"Authorization": f"Bearer {server.token}"}
    topic, sub = "pull-bench", "pull-bench-sub"
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=120) as api:
        r = await api.put(f"/v1/projects/{b.PROJECT}/topics/{topic}", json={})
        assert r.status_code == 200, r.text
        r = await api.put(
            f"/v1/projects/{b.PROJECT}/subscriptions/{sub}",
            json={"topic": f"projects/{b.PROJECT}/topics/{topic}", "ackDeadlineSeconds": 600},
        )
        assert r.status_code == 200, r.text
        data = base64.b64encode(b"x" * 64).decode()
        body = {"messages": [{"data": data, "attributes": {"n": "1"}}] * batch}
        meter = CpuMeter([server.pid])
        published = 0
        while published < count:
            r = await api.post(f"/v1/projects/{b.PROJECT}/topics/{topic}:publish", json=body)
            assert r.status_code == 200, r.text
            published += len(r.json()["messageIds"])
        cpu = meter.stop()
        pub = Row(
            "4",
            f"publish {count:,} events, {batch} per request, 1 client",
            published / cpu.wall,
            "messages/s",
            None,
            "-",
            f"{published // batch} requests in {cpu.wall:.1f} s",
            cpu.generator(),
            cpu.pct(cpu.broker),
            1e6 * cpu.broker / published,
            "-",
            b.load_average(),
        )
        meter = CpuMeter([server.pid])
        acked = pulls = 0
        while acked < count:
            r = await api.post(
                f"/v1/projects/{b.PROJECT}/subscriptions/{sub}:pull", json={"maxMessages": batch}
            )
            assert r.status_code == 200, r.text
            pulls += 1
            ids = [m["ackId"] for m in r.json().get("receivedMessages", [])]
            if not ids:
                break
            r = await api.post(
                f"/v1/projects/{b.PROJECT}/subscriptions/{sub}:acknowledge", json={"ackIds": ids}
            )
            assert r.status_code == 200, r.text
            acked += len(ids)
        cpu = meter.stop()
        target = TARGET["pull"]
        rate = acked / cpu.wall
        pull = Row(
            "4",
            f"pull (maxMessages {batch}) + acknowledge, 1 consumer",
            rate,
            "messages/s",
            target,
            f"{rate / target:.2f}x target",
            f"{acked:,} acked, {pulls} pulls in {cpu.wall:.1f} s",
            cpu.generator(),
            cpu.pct(cpu.broker),
            1e6 * cpu.broker / acked if acked else float("nan"),
            "-",
            b.load_average(),
        )
    return pub, pull


# The run


def _verdict(rate: float, target: float | None) -> str:
    if target is None:
        return "-"
    return f"{target:,.0f} ({'ok' if rate >= target else 'MISSED'})"


def print_rows(rows: list[Row]) -> None:
    print(
        "\n| part | what | server CPU µs / item | rate | unit | target | ratio | detail "
        "| generator CPU % | server CPU % | NATS CPU % | load avg |"
    )
    print("|" + "---|" * 12)
    for r in rows:
        print(
            f"| {r.part} | {r.what} | **{r.per_item_us:.1f}** | {r.rate:,.0f} | {r.unit} "
            f"| {_verdict(r.rate, r.target)} | {r.ratio} | {r.detail} | {r.generator} "
            f"| {r.server_pct:.0f} | {r.other} | {r.load} |"
        )


def mqtt_row(
    part: str, what: str, t: b.Throughput, target: float | None, ratio: str, other: str = "-"
) -> Row:
    return Row(
        part,
        what,
        t.rate,
        "events/s",
        target,
        ratio,
        f"{t.devices} devices x window; PUBACK p50 {t.latency_ms(0.5):.0f} / "
        f"p99 {t.latency_ms(0.99):.0f} ms; {t.errors} errors",
        t.cpu.generator(),
        t.cpu.pct(t.cpu.broker),
        1e6 * t.cpu.broker / t.acknowledged if t.acknowledged else float("nan"),
        other,
        t.load,
    )


async def run(args: argparse.Namespace, tmp: Path) -> list[Row]:
    parts = args.only.split(",") if args.only else ["log", "http", "pull", "nats"]
    data = tmp / "ironcore"
    members = await b.seed_devices(
        data, REGISTRY, max(args.devices, args.http_devices), shared_key=False
    )
    rows: list[Row] = []
    spy = b.Profiler(args.profile)

    if "log" in parts:
        outstanding = args.devices * args.window
        print(f"embedded log in isolation, {outstanding:,} outstanding ...", flush=True)
        durable, dcpu = await isolated_log(False, outstanding, 4.0, tmp)
        null, ncpu = await isolated_log(True, outstanding, 4.0, tmp)
        for what, rate, cpu, target, ratio in (
            (
                "EventLog.submit → SQLite group commit, in process (no MQTT)",
                durable,
                dcpu,
                TARGET["durable"],
                f"{durable / null:.2f}x null",
            ),
            ("EventLog.submit → no-op store, in process (no MQTT)", null, ncpu, None, "1.00x"),
        ):
            rows.append(
                Row(
                    "1",
                    what,
                    rate,
                    "events/s",
                    target,
                    ratio,
                    f"{outstanding:,} outstanding",
                    "- (the log runs in this process: its CPU is the server's)",
                    cpu.pct(cpu.loadgen),
                    1e6 * cpu.loadgen / (rate * cpu.wall),
                    "-",
                    b.load_average(),
                )
            )
        print(f"  durable {durable:,.0f}/s, null {null:,.0f}/s", flush=True)
        print(f"MQTT QoS 1 → embedded log, {args.devices} devices x {args.window} ...", flush=True)
        durable_t, _ = await mqtt_events("durable", data, members, args, "stock", spy=spy)
        print(f"  durable {durable_t.rate:,.0f}/s", flush=True)
        null_t, _ = await mqtt_events("null", data, members, args, "null", spy=spy)
        print(f"  null sink {null_t.rate:,.0f}/s", flush=True)
        vs_null = durable_t.rate / null_t.rate if null_t.rate else float("nan")
        rows.append(
            mqtt_row(
                "1",
                "MQTT (TLS) QoS 1 → embedded log, durable (SQLite WAL, synchronous=FULL)",
                durable_t,
                TARGET["durable"],
                f"{vs_null:.2f}x null sink",
            )
        )
        rows.append(
            mqtt_row(
                "1", "MQTT (TLS) QoS 1 → null sink (append_events a no-op)", null_t, None, "1.00x"
            )
        )

    if "http" in parts:
        print(
            f"HTTP publishEvent, {args.http_connections} connections, "
            f"{args.http_devices} devices ...",
            flush=True,
        )
        server = start_server(data)
        try:
            next_request, n = publish_requests(members[: args.http_devices])
            results = await run_load(
                "publishEvent",
                "127.0.0.1",
                int(server.url.rsplit(":", 1)[1]),
                next_request,
                connections=args.http_connections,
                warmup=1.0,
                rounds=3,
                duration=3.0,
                server_pids=[server.pid],
                on_measure=lambda: spy.start("http-publishEvent", server.pid, 9.0),
            )
        finally:
            server.stop()
        best = max(results, key=lambda r: r.rate)
        usage = best.cpu
        assert usage is not None
        errors = sum(r.errors for r in results)
        samples = [s for r in results for s in r.error_samples][:3]
        rows.append(
            Row(
                "3",
                f"HTTP publishEvent, JWT verified per request, {n} devices, "
                f"{args.http_connections} connections",
                best.rate,
                "req/s",
                TARGET["http"],
                f"{best.rate / TARGET['http']:.2f}x target",
                "rounds "
                + " / ".join(f"{r.rate:,.0f}" for r in results)
                + f"; p50 {1000 * best.percentile(50):.1f} ms"
                + f" / p99 {1000 * best.percentile(99):.1f} ms"
                + f"; non-200: {errors}"
                + (f" {samples}" if samples else ""),
                usage.generator(),
                usage.pct(usage.broker),
                1e6 * usage.broker / best.completed if best.completed else float("nan"),
                "-",
                b.load_average(),
            )
        )
        print(f"  {best.rate:,.0f} req/s", flush=True)

    if "pull" in parts:
        print(f"pull subscription, {args.pull_events:,} events ...", flush=True)
        server = start_server(data)
        try:
            pub, pull = await pull_subscription(server, args.pull_events)
        finally:
            server.stop()
        rows += [pub, pull]
        print(f"  publish {pub.rate:,.0f}/s, pull+ack {pull.rate:,.0f}/s", flush=True)
    if "nats" in parts:
        if not nats_reachable():
            print(f"NATS is not reachable at {NATS_URL}: JetStream row skipped")
        else:
            topic = f"projects/{b.PROJECT}/topics/{REGISTRY}-jetstream"
            print(f"MQTT QoS 1 → JetStream ({NATS_URL}) ...", flush=True)
            try:
                nats_t, _ = await mqtt_events(
                    "nats",
                    data,
                    members,
                    args,
                    "stock",
                    ["--nats-url", NATS_URL],
                    lambda server: use_nats_topic(server, topic),
                    spy=spy,
                )
            finally:
                try:
                    print("  " + await delete_stream(topic), flush=True)
                except Exception as error:  # the stream may not exist if the topic failed
                    print(f"  could not delete the stream: {error}")
            print(f"  JetStream {nats_t.rate:,.0f}/s", flush=True)
            nats_pct = f"{nats_t.cpu.pct(nats_t.also_cpu):.0f}"
            ratio = f"{nats_t.rate / TARGET['nats']:.2f}x target"
            if "log" in parts:
                ratio += f", {nats_t.rate / durable_t.rate:.2f}x embedded"
            row = mqtt_row(
                "2",
                "MQTT (TLS) QoS 1 → JetStream stream (PUBACK after JetStream's ack)",
                nats_t,
                TARGET["nats"],
                ratio,
                nats_pct,
            )
            rows.append(row)

    spy.report()
    return rows


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--as-server":
        serve_as(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--devices",
        type=int,
        default=2000,
        help="MQTT publishing devices (100 events/s each at most)",
    )
    parser.add_argument("--window", type=int, default=16, help="QoS 1 events in flight each")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds counted")
    parser.add_argument("--http-devices", type=int, default=500)
    parser.add_argument("--http-connections", type=int, default=32)
    parser.add_argument("--pull-events", type=int, default=100_000)
    parser.add_argument("--only", default="", help="comma list of log,http,pull,nats")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample ironcore with py-spy while measuring; collapsed stacks go to DIR",
    )
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    limit = b.raise_fd_limit()
    print(
        f"Events benchmark, {os.cpu_count()} CPUs, load average {b.load_average()}, "
        f"fd limit {limit}"
    )
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="ironcore-events-bench-") as tmp,
        b.event_loop_runner() as runner,
    ):
        rows = runner.run(run(args, Path(tmp)))
    print_rows(rows)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average {b.load_average()}")


if __name__ == "__main__":
    main()
