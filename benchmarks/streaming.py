"""Messages/s to `google-cloud-pubsub` `subscribe()` (StreamingPull over gRPC, TLS) with acks,
beside REST pull + acknowledge of the same subscription, on one fresh `ironcore serve`.

Run from the project root: `.venv/bin/python -m benchmarks.streaming`. Before every window the
benchmark publishes `--backlog` messages (REST, batches of 1000, not measured), then the
consumers drain the subscription's backlog while the window runs; windows alternate
(StreamingPull with one subscriber process, REST, StreamingPull with `--processes` subscriber
processes; `--pairs` rounds), so drift on a shared machine hits each alike. Each consumer is a
process of its own (this module with `--consume`):

- stream: `SubscriberClient.subscribe()` with `FlowControl(max_messages=--max-messages)` (the
  library's default, 1000), the callback acking every message;
- rest: `--in-flight` loops of `:pull` (1000 messages) then `:acknowledge` of what came, on
  HTTP/1.1 keep-alive connections (httpx, asyncio).

A window counts the messages the consumers acked between two marks (each consumer reports its
count and its own CPU when the benchmark asks on its stdin) and the server's CPU between the
same marks (benchmarks/loadgen.py's per-process meter), after each consumer acked its first
message and `--warmup` seconds more. The issue's bar: ≥ 10,000 messages/s
with one subscriber process. A window whose consumers ran out of backlog says so.

The subscriber processes also time the library's unary Acknowledge calls: it sends them from
one thread, at most 100 ids each, the next once the last returned, so one process acks at most
100 messages per call's duration, whatever its CPU (the table's "time in Acknowledge" near
100 % says a process is bound there).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import profile
from benchmarks.brokers import Ironcore, free_port, start_ironcore
from benchmarks.loadgen import (
    machine_busy_seconds,
    process_tree_cpu,
    self_cpu_seconds,
    tree_delta,
)

PROJECT = "bench-project"
TOPIC = f"projects/{PROJECT}/topics/telemetry"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/backend"
TARGET = 10_000


def _post(url: str, token: str, body: object, method: str = "POST") -> Any:
    request = urllib.request.Request(
        url,
        json.dumps(body).encode(),
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{method} {url}: {error.code} {error.read()[:500]!r}") from None


def publish_backlog(server: Ironcore, count: int, size: int) -> None:
    """`count` telemetry-shaped messages (`size` bytes of data, Cloud IoT Core's attributes)."""
    data = base64.b64encode(os.urandom(size)).decode()
    attributes = {
        "deviceId": "dev-000001",
        "deviceNumId": "2837465019283746",
        "deviceRegistryId": "bench-registry",
        "deviceRegistryLocation": "us-central1",
        "projectId": PROJECT,
        "subFolder": "",
    }
    batch = {"messages": [{"data": data, "attributes": attributes}] * 1000}
    url = f"{server.url}/v1/{TOPIC}:publish"
    threads = [
        threading.Thread(
            target=lambda n=n: [_post(url, server.token, batch) for _ in range(n)],
        )
        for n in _split(count // 1000, 4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# The consumers (child processes)


class Counter:
    def __init__(self) -> None:
        self.acked = 0
        # The client library's Acknowledge calls: how many, and the seconds spent in them.
        self.ack_calls = 0
        self.ack_seconds = 0.0
        self.lock = threading.Lock()


def consume_stream(endpoint: str, token: str, counter: Counter, max_messages: int) -> None:
    from google.cloud.pubsub_v1 import SubscriberClient
    from google.cloud.pubsub_v1.subscriber.message import Message
    from google.cloud.pubsub_v1.types import FlowControl
    from google.oauth2.credentials import Credentials

    class TimedClient(SubscriberClient):  # type: ignore[misc]  # untyped library
        """Times the unary Acknowledge calls the library makes (at most 100 ids each, one at
        a time, from one thread of its own): how long a call takes bounds its rate."""

        def acknowledge(self, *args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            try:
                super().acknowledge(*args, **kwargs)
            finally:
                with counter.lock:
                    counter.ack_calls += 1
                    counter.ack_seconds += time.perf_counter() - start

    client = TimedClient(
        credentials=Credentials(token=token),  # type: ignore[no-untyped-call]  # google-auth
        client_options={"api_endpoint": endpoint},
    )

    def callback(message: Message) -> None:
        message.ack()
        with counter.lock:
            counter.acked += 1
            if counter.acked == 1:
                print("ready", flush=True)

    client.subscribe(SUBSCRIPTION, callback, flow_control=FlowControl(max_messages=max_messages))


def consume_rest(url: str, token: str, counter: Counter, in_flight: int) -> None:
    import httpx

    async def loop(http: httpx.AsyncClient) -> None:
        while True:
            pulled = await http.post(f"/v1/{SUBSCRIPTION}:pull", json={"maxMessages": 1000})
            ids = [m["ackId"] for m in pulled.json().get("receivedMessages", [])]
            if not ids:
                await asyncio.sleep(0.05)
                continue
            acked = await http.post(f"/v1/{SUBSCRIPTION}:acknowledge", json={"ackIds": ids})
            acked.raise_for_status()
            if not counter.acked:
                print("ready", flush=True)
            counter.acked += len(ids)

    async def run() -> None:
        limits = httpx.Limits(max_connections=in_flight)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            base_url=url, headers=headers, limits=limits, timeout=60
        ) as http:
            await asyncio.gather(*(loop(http) for _ in range(in_flight)))

    threading.Thread(target=asyncio.run, args=(run(),), daemon=True).start()


def consumer_main(args: argparse.Namespace) -> None:
    """A consumer process: consume, and on every line of stdin print (count, own CPU)."""
    counter = Counter()
    if args.consume == "stream":
        consume_stream(args.endpoint, args.token, counter, args.max_messages)
    else:
        consume_rest(args.url, args.token, counter, args.in_flight)
    for _ in sys.stdin:
        with counter.lock:
            state = {"acked": counter.acked, "calls": counter.ack_calls, "ack": counter.ack_seconds}
        print(json.dumps({**state, "cpu": self_cpu_seconds()}), flush=True)
    os._exit(0)  # the client library's threads would otherwise hold the process


# The benchmark


@dataclass
class Window:
    messages: int
    seconds: float
    server_cpu: float
    client_cpu: float
    busiest_client: float
    machine: float
    ran_dry: bool
    processes: int = 1
    ack_calls: int = 0
    ack_seconds: float = 0.0  # summed over the consumers

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


@dataclass
class Row:
    name: str
    windows: list[Window] = field(default_factory=list)

    @property
    def best(self) -> Window:
        return max(self.windows, key=lambda w: w.rate)


def run_window(
    server: Ironcore, grpc_port: int, kind: str, processes: int, args: argparse.Namespace
) -> Window:
    publish_backlog(server, args.backlog, args.size)
    env = {**os.environ, "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(server.ca_file)}
    command = [sys.executable, "-m", "benchmarks.streaming", "--consume", kind]
    command += ["--token", server.token, "--url", server.url]
    command += ["--endpoint", f"127.0.0.1:{grpc_port}", "--in-flight", str(args.in_flight)]
    command += ["--max-messages", str(args.max_messages)]
    consumers = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(processes)
    ]

    def mark() -> list[dict[str, float]]:
        for consumer in consumers:
            assert consumer.stdin is not None
            consumer.stdin.write("\n")
            consumer.stdin.flush()
        out = []
        for consumer in consumers:
            assert consumer.stdout is not None
            out.append(json.loads(consumer.stdout.readline()))
        return out

    try:
        for consumer in consumers:  # the client library takes seconds to import and connect
            assert consumer.stdout is not None
            if consumer.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a {kind} consumer exited before its first message")
        time.sleep(args.warmup)
        if args.profile:
            output = args.profile / f"{kind}-{processes}.txt"
            spy = profile.start(server.pid, args.duration, output)
        start = mark()
        server_start, busy_start = process_tree_cpu(server.pids), machine_busy_seconds()
        wall = time.perf_counter()
        time.sleep(args.duration)
        end = mark()
        wall = time.perf_counter() - wall
        server_end, busy_end = process_tree_cpu(server.pids), machine_busy_seconds()
        # Nearly the whole backlog consumed by the end: the consumers may have waited for more.
        ran_dry = sum(m["acked"] for m in end) >= 0.98 * args.backlog
        if args.profile:
            spy.communicate(timeout=60)
            print(f"\n{kind}, {processes} process(es): server profile\n{profile.summarize(output)}")
    finally:
        for consumer in consumers:
            consumer.kill()
            consumer.wait()
    clients = [e["cpu"] - s["cpu"] for s, e in zip(start, end, strict=True)]
    return Window(
        messages=int(sum(e["acked"] - s["acked"] for s, e in zip(start, end, strict=True))),
        seconds=wall,
        server_cpu=tree_delta(server_start, server_end),
        client_cpu=sum(clients),
        busiest_client=max(clients),
        machine=100 * (busy_end[0] - busy_start[0]) / (busy_end[1] - busy_start[1]),
        ran_dry=ran_dry,
        processes=processes,
        ack_calls=int(sum(e["calls"] - s["calls"] for s, e in zip(start, end, strict=True))),
        ack_seconds=sum(e["ack"] - s["ack"] for s, e in zip(start, end, strict=True)),
    )


def drain(server: Ironcore) -> None:
    """Acknowledge whatever a window left, so the next one starts from its own backlog."""
    url = f"{server.url}/v1/{SUBSCRIPTION}"
    while ids := [
        m["ackId"]
        for m in _post(f"{url}:pull", server.token, {"maxMessages": 1000}).get(
            "receivedMessages", []
        )
    ]:
        _post(f"{url}:acknowledge", server.token, {"ackIds": ids})


def print_table(rows: list[Row]) -> None:
    print(
        "| consumer | messages/s (best) | all windows | server CPU µs / message "
        "| consumers' CPU µs / message | busiest consumer % of a core "
        "| Acknowledge call, mean ms | time in Acknowledge, % per process | machine busy % |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        w = row.best
        spread = " / ".join(
            f"{x.rate:,.0f}" + (" (ran dry)" if x.ran_dry else "") for x in row.windows
        )
        print(
            f"| {row.name} | {w.rate:,.0f} | {spread} | {1e6 * w.server_cpu / w.messages:,.0f} "
            f"| {1e6 * w.client_cpu / w.messages:,.0f} | {100 * w.busiest_client / w.seconds:.0f} "
            f"| {_ack_columns(w)} | {w.machine:.0f} |"
        )


def _ack_columns(w: Window) -> str:
    if not w.ack_calls:  # REST consumers are not timed
        return "- | -"
    busy = w.ack_seconds / w.seconds / w.processes  # of each process's wall time, on average
    return f"{1e3 * w.ack_seconds / w.ack_calls:.1f} | {100 * busy:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="rounds of windows")
    parser.add_argument("--backlog", type=int, default=100_000, help="messages per window")
    parser.add_argument("--size", type=int, default=64, help="bytes of data per message")
    parser.add_argument("--processes", type=int, default=2, help="subscriber processes (row 3)")
    parser.add_argument(
        "--max-messages",
        type=int,
        default=1000,
        help="the subscribers' FlowControl.max_messages (default: the client library's)",
    )
    parser.add_argument("--in-flight", type=int, default=4, help="REST pull loops")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds after the first message, unmeasured"
    )
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per window")
    parser.add_argument(
        "--database-url", default="", help="run the server on this database (default SQLite)"
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="sample the server with py-spy in each window"
    )
    parser.add_argument(
        "--server-python",
        metavar="PYTHON",
        help="the server's interpreter: another checkout's .venv/bin/python measures that "
        "checkout's server (before/after)",
    )
    parser.add_argument("--consume", choices=("stream", "rest"), help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.consume:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            consumer_main(args)
        return

    port = free_port()
    extra = ["--grpc-port", str(port)]
    if args.database_url:
        extra += ["--database-url", args.database_url]
    one = Row("StreamingPull, `subscribe()`, 1 subscriber process")
    rest = Row(f"REST `:pull` + `:acknowledge`, {args.in_flight} loops in 1 process")
    many = Row(f"StreamingPull, `subscribe()`, {args.processes} subscriber processes")
    print(
        f"StreamingPull vs REST pull: {args.backlog:,} messages of {args.size} B published "
        f"before each window, {args.pairs} rounds of {args.duration:g} s windows (after "
        f"{args.warmup:g} s warm-up), {os.cpu_count()} CPUs, "
        f"{'PostgreSQL' if args.database_url else 'SQLite'}, server "
        f"{args.server_python or sys.executable}; load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="ironcore-bench-streaming-") as tmp:
        server = start_ironcore(Path(tmp) / "data", extra, python=args.server_python)
        try:
            _post(f"{server.url}/v1/{TOPIC}", server.token, {}, "PUT")
            _post(
                f"{server.url}/v1/{SUBSCRIPTION}",
                server.token,
                {"topic": TOPIC, "ackDeadlineSeconds": 60},
                "PUT",
            )
            for _ in range(args.pairs):
                for row, kind, processes in (
                    (one, "stream", 1),
                    (rest, "rest", 1),
                    (many, "stream", args.processes),
                ):
                    row.windows.append(run_window(server, port, kind, processes, args))
                    drain(server)
        finally:
            server.stop()
    print()
    print_table([one, rest, many])
    verdict = "meets" if one.best.rate >= TARGET else "MISSES"
    print(f"\nOne subscriber process: {one.best.rate:,.0f} messages/s ({verdict} {TARGET:,}).")
    print(f"Load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
