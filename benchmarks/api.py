"""Admin API throughput: CreateDevice and GetDevice over HTTP, on SQLite and on PostgreSQL.

Run from the project root: `.venv/bin/python -m benchmarks.api` (or `make bench`). For each
database a fresh `ironcore serve` process is started in a temporary data directory; the
benchmark creates one registry, then keeps `--connections` requests in flight on keep-alive
connections: CreateDevice (a new device with one ES256 public key per request), then GetDevice
over the devices just created, in random order. Each operation warms up, then is measured in
rounds of fixed length under continuous load; the table shows the best round (noise from other
work on the machine only ever slows a round down) and lists every round's rate beside it.

The table leads with the server's CPU per request (utime + stime of the server process and its
descendants, every thread, from /proc; the median of the rounds, each round listed), the figure
that holds when the machine is shared, then requests/s with Cloud IoT Core's per-project quota
as the peer (500 device manager reads/s and 50 writes/s per project), latency percentiles,
non-200 answers (must be 0), the load generator's CPU (this process; flagged
**generator-bound** at >= 90 % of a core, when the rate is the generator's), PostgreSQL's CPU
per request (the backends serving the server's connections, found by their client ports: other
work on the database does not count), the whole machine's busy % and the load average. The
load generator is a raw asyncio HTTP/1.1 client (benchmarks/loadgen.py).

`--server LABEL=PYTHON` (repeatable) runs another checkout's server (its `.venv/bin/python`)
under the same harness, side by side: before/after comparisons.

PostgreSQL is used at IRONCORE_BENCH_DATABASE_URL (default IRONCORE_TEST_DATABASE_URL, else
postgresql://postgres@127.0.0.1:5432/test) in a schema of its own that is dropped afterwards;
its rows are skipped when no server answers.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from benchmarks import profile
from benchmarks.brokers import drop_schema, free_port
from benchmarks.loadgen import (
    Result,
    add_server_option,
    load_average,
    machine_busy_seconds,
    postgres_backends,
    run_load,
    servers_option,
)

PROJECT = "bench-project"
LOCATION = "us-central1"
REGISTRY = "bench-registry"
PARENT = f"/v1/projects/{PROJECT}/locations/{LOCATION}/registries/{REGISTRY}"
PG_URL = os.environ.get(
    "IRONCORE_BENCH_DATABASE_URL",
    os.environ.get("IRONCORE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)

# Cloud IoT Core's default per-project quota for device manager requests (the peer column), and
# ironcore's targets on a 2-core machine (SQLite; PostgreSQL is shown against the same bar).
PEER = {"GetDevice": 500.0, "CreateDevice": 50.0}
TARGET = {"GetDevice": 1000.0, "CreateDevice": 300.0}


@dataclass
class Server:
    url: str
    host: str
    port: int
    token: str
    process: subprocess.Popen[bytes]
    log: Path


def _http(
    method: str, url: str, token: str | None = None, body: object = None
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@contextmanager
def server(
    data_dir: Path, database_url: str = "", schema: str = "", python: str = sys.executable
) -> Iterator[Server]:
    """A real `python -m ironcore serve` process (run by `python`), ready, with its owner
    token."""
    port = free_port()
    log = data_dir.parent / f"{data_dir.name}-server.log"
    args = [python, "-m", "ironcore", "serve", "--data-dir", str(data_dir)]
    args += ["--api-host", "127.0.0.1", "--api-port", str(port), "--log-level", "warning"]
    args += ["--device-http-port", "0"]
    if database_url:
        args += ["--database-url", database_url, "--database-schema", schema]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONCORE_")}
    # Only the REST admin API is measured: keep the MQTT bridge and the gRPC API off (each
    # ignored by versions without it); the gRPC port is a fixed one, where two runs at once
    # would collide. (Servers before session 7 sharing a PostgreSQL database did not start
    # with gRPC on and MQTT off: they had no certificate for it.)
    env["IRONCORE_MQTT_PORT"] = "0"
    env["IRONCORE_GRPC_PORT"] = "0"
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ironcore serve exited:\n{log.read_text()}")
            with suppress(OSError):
                if _http("GET", f"{url}/readyz")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ironcore serve did not become ready:\n{log.read_text()}")
            time.sleep(0.05)
        token = (data_dir / "admin-token").read_text().strip()
        yield Server(url, "127.0.0.1", port, token, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _pg_reachable(url: str) -> bool:
    rest = url.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = rest.partition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 5432)), timeout=1):
            return True
    except OSError:
        return False


def _request(method: str, path: str, token: str, body: bytes = b"") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Accept: application/json\r\n"
    )
    if method in ("POST", "PATCH", "PUT"):
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def _public_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


class CreateRequests:
    """POST …/devices with a fresh device id each time and one ES256 key (the usual fleet
    provisioning call)."""

    def __init__(self, token: str) -> None:
        self.token = token
        credentials = [{"publicKey": {"format": "ES256_PEM", "key": _public_key_pem()}}]
        self.suffix = ('", "credentials": ' + json.dumps(credentials) + "}").encode()
        self.ids: list[str] = []

    def __call__(self) -> bytes:
        device_id = f"dev-{len(self.ids):08d}"
        self.ids.append(device_id)
        body = b'{"id": "' + device_id.encode() + self.suffix
        return _request("POST", f"{PARENT}/devices", self.token, body)


def get_requests(token: str, ids: list[str]) -> Callable[[], bytes]:
    """GET …/devices/{id} over every given device, shuffled, round and round."""
    order = list(ids)
    random.Random(1).shuffle(order)
    prebuilt = [_request("GET", f"{PARENT}/devices/{device_id}", token) for device_id in order]
    return itertools.cycle(prebuilt).__next__


@dataclass
class Row:
    server: str
    backend: str
    operation: str
    rounds: list[Result]

    @property
    def best(self) -> Result:
        """The round with the highest throughput: machine noise only ever slows a round down."""
        return max(self.rounds, key=lambda r: r.rate)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)

    @staticmethod
    def per_request_ms(result: Result, seconds: float | None) -> float:
        if seconds is None or not result.completed:
            return float("nan")
        return 1000 * seconds / result.completed

    def server_ms(self) -> list[float]:
        """Server CPU ms per request, by round."""
        return [self.per_request_ms(r, r.cpu.broker if r.cpu else None) for r in self.rounds]


def bench_backend(
    label: str,
    python: str,
    backend: str,
    database_url: str,
    args: argparse.Namespace,
    workdir: Path,
) -> list[Row]:
    schema = f"bench_{uuid.uuid4().hex[:12]}" if database_url else ""
    rows = []
    try:
        with server(workdir / f"{label}-{backend}", database_url, schema, python) as running:
            database = (
                functools.partial(postgres_backends, [running.process.pid])
                if database_url
                else None
            )
            status, body = _http(
                "POST",
                f"{running.url}/v1/projects/{PROJECT}/locations/{LOCATION}/registries",
                running.token,
                {"id": REGISTRY},
            )
            if status != 200:
                raise RuntimeError(f"CreateDeviceRegistry answered {status}: {body!r}")
            creates = CreateRequests(running.token)

            async def load(name: str, next_request: Callable[[], bytes]) -> list[Result]:
                spy: list[subprocess.Popen[bytes]] = []
                output = args.profile / f"{backend}-{name}.txt" if args.profile else None

                def on_measure() -> None:
                    if output is not None:
                        seconds = args.rounds * args.duration
                        spy.append(profile.start(running.process.pid, seconds, output))

                results = await run_load(
                    name,
                    running.host,
                    running.port,
                    next_request,
                    connections=args.connections,
                    warmup=args.warmup,
                    rounds=args.rounds,
                    duration=args.duration,
                    server_pids=[running.process.pid],
                    database=database,
                    on_measure=on_measure,
                )
                if output is not None and spy:
                    _, err = spy[0].communicate(timeout=60)
                    if spy[0].returncode or not output.exists():
                        print(f"py-spy failed: {err.decode(errors='replace')}")
                    else:
                        print(f"\n{backend} {name}: server profile ({output})")
                        print(profile.summarize(output))
                return results

            rows.append(Row(label, backend, "CreateDevice", _run(load("CreateDevice", creates))))
            gets = get_requests(running.token, creates.ids)
            rows.append(Row(label, backend, "GetDevice", _run(load("GetDevice", gets))))
    finally:
        if schema:
            drop_schema(database_url, schema)
    return rows


def _run(coro: Coroutine[Any, Any, list[Result]]) -> list[Result]:
    loop_factory = None
    with suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


def background_load(seconds: float = 1.0) -> float:
    """How busy the machine is before we start, in % of all cores."""
    busy0, total0 = machine_busy_seconds()
    time.sleep(seconds)
    busy1, total1 = machine_busy_seconds()
    return 100 * (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0


def print_table(rows: list[Row]) -> None:
    header = (
        "| server | backend | operation | server CPU ms / req | all rounds | req/s (best round) "
        "| all rounds | peer req/s | vs peer | target | p50 ms | p99 ms | non-200 "
        "| generator CPU % | server CPU % | PostgreSQL CPU ms / req | machine busy % | load avg |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        r = row.best
        cpu = r.cpu
        assert cpu is not None
        per_round = row.server_ms()
        target = TARGET[row.operation]
        verdict = "ok" if r.rate >= target else "BELOW"
        db = f"{row.per_request_ms(r, cpu.database):.2f}" if cpu.database is not None else "-"
        print(
            f"| {row.server} | {row.backend} | {row.operation} "
            f"| **{statistics.median(per_round):.2f}** "
            f"| {' / '.join(f'{ms:.2f}' for ms in per_round)} | {r.rate:,.0f} "
            f"| {' / '.join(f'{x.rate:,.0f}' for x in row.rounds)} "
            f"| {PEER[row.operation]:,.0f} | {r.rate / PEER[row.operation]:.1f}x "
            f"| {target:,.0f} ({verdict}) "
            f"| {1000 * r.percentile(50):.1f} | {1000 * r.percentile(99):.1f} | {row.errors} "
            f"| {cpu.generator()} | {cpu.pct(cpu.broker):.0f} | {db} | {cpu.machine:.0f} "
            f"| {r.load} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=32, help="requests in flight")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per operation")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per round")
    parser.add_argument(
        "--backend", choices=["sqlite", "postgresql", "all"], default="all", help="database"
    )
    parser.add_argument("--database-url", default=PG_URL, help="PostgreSQL to use")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the server with py-spy while measuring; collapsed stacks go to DIR",
    )
    add_server_option(parser)
    args = parser.parse_args()
    servers = servers_option(parser, args.server)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    print(
        f"Admin API over HTTP: {args.connections} keep-alive connections, "
        f"{args.warmup:g} s warm-up + {args.rounds} rounds of {args.duration:g} s per operation "
        f"(the table shows the best round), {os.cpu_count()} CPUs, "
        f"load average {load_average()}"
    )
    for label, python in servers:
        where = subprocess.run(
            [python, "-c", "import ironcore; print(ironcore.__file__)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        print(f"Server {label}: {python} -m ironcore serve, from {Path(where).parent}")
    busy = background_load()
    print(f"Machine busy before the run (1 s sample, all cores): {busy:.0f}%")
    if busy > 10:
        print("  WARNING: something else is using the CPU; figures will be low and noisy.")
    backends: list[tuple[str, str]] = []
    if args.backend in ("sqlite", "all"):
        backends.append(("sqlite", ""))
    if args.backend in ("postgresql", "all"):
        if _pg_reachable(args.database_url):
            backends.append(("postgresql", args.database_url))
        else:
            print(f"PostgreSQL is not reachable at {args.database_url}: its rows are skipped.")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ironcore-bench-") as tmp:
        for backend, url in backends:
            for label, python in servers:
                rows += bench_backend(label, python, backend, url, args, Path(tmp))
    print()
    print_table(rows)
    print(f"\nload average {load_average()} at the end")
    failed = [row for row in rows if row.errors]
    for row in failed:
        statuses: dict[int, int] = {}
        for r in row.rounds:
            for status, count in r.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
        print(
            f"\n{row.server} {row.backend} {row.operation}: {row.errors} non-200 answers {statuses}"
        )
        for sample in [s for r in row.rounds for s in r.error_samples][:5]:
            print("  ", sample)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
