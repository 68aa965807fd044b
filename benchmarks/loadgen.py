"""A lean closed-loop HTTP/1.1 load generator, and the CPU accounting every benchmark reports.

Each connection is an `asyncio.Protocol` that keeps one request in flight on a keep-alive
connection and sends the next one from `data_received`, so a request costs the generator one
write and one read callback: no coroutine, no stream buffering, no HTTP library. Requests are
pre-built bytes (or built by a cheap callable). Responses must carry Content-Length, which
uvicorn always sends for JSON.

CPU time comes from /proc: `/proc/<pid>/stat` (utime + stime of every thread of a process) for
the server (its processes and their descendants) and the database (the backends serving the
server, found by client port), `/proc/stat` for the whole machine, `os.times()` for ourselves.
`Cpu` is what a window used, `CpuMeter` measures one; `Cpu.generator()` is the table cell that
flags a saturated load generator. `--server LABEL=PYTHON` (`add_server_option`) lets a benchmark
run another checkout's server under the same harness.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK")


# CPU accounting


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all threads included; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return 0.0
    # The command name is in parentheses and may contain spaces; fields follow the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def process_tree_cpu(roots: Sequence[int]) -> dict[int, float]:
    """CPU seconds (utime + stime, every thread) of `roots` and all their live descendants, by
    pid; each root's entry also holds the CPU of its children that have exited and been waited
    for (cutime + cstime), so a worker that ends inside a window still counts."""
    parents: dict[int, int] = {}
    own: dict[int, float] = {}
    reaped: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue  # gone meanwhile
        pid = int(entry)
        parents[pid] = int(fields[1])
        own[pid] = (int(fields[11]) + int(fields[12])) / _TICK
        reaped[pid] = (int(fields[13]) + int(fields[14])) / _TICK
    wanted = {pid for pid in roots if pid in own}
    grew = True
    while grew:  # descendants, any depth (a forkserver's workers are grandchildren)
        more = {pid for pid, parent in parents.items() if parent in wanted} - wanted
        wanted |= more
        grew = bool(more)
    return {pid: own[pid] + (reaped[pid] if pid in roots else 0.0) for pid in wanted}


def tree_delta(start: dict[int, float], end: dict[int, float]) -> float:
    """CPU between two `process_tree_cpu` samples: a process born in between counts from 0; one
    that ended was waited for by its parent (a root), whose cutime now holds all of it."""
    return sum(end.values()) - sum(start.values())


def processes_named(name: str) -> list[int]:
    """Pids whose command name (/proc/<pid>/comm) is `name`, e.g. every PostgreSQL backend."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as file:
                if file.read().strip() == name:
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def postgres_backends(client_pids: Sequence[int], port: int = 5432) -> list[int]:
    """The PostgreSQL backends serving `client_pids`' connections (not the rest of the
    machine's): each client socket's local port, from /proc/<pid>/fd and /proc/net/tcp{,6},
    against the port a backend names in its title ("postgres: user db 127.0.0.1(PORT) …")."""
    inodes = set()
    for pid in client_pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as file:
                lines = file.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == port:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    backends = []
    for pid in processes_named("postgres"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                title = file.read()
        except OSError:
            continue
        start, end = title.find(b"("), title.find(b")")
        client = title[start + 1 : end] if 0 <= start < end else b""
        if client.isdigit() and int(client) in ports:
            backends.append(pid)
    return backends


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over cores."""
    with open("/proc/stat") as file:
        values = [int(v) for v in file.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return (total - idle) / _TICK, total / _TICK


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Cpu:
    """CPU used over a window: the load generator's, the server's (every process of it), the
    database's when asked for, and the machine's. `loadgen_peak` is the busiest generator
    process's CPU seconds: a generator process at >= 90 % of a core holds the rate to its own,
    not the server's."""

    wall: float
    loadgen: float
    broker: float  # the server measured (ironcore, Mosquitto, amqtt)
    machine: float  # % of all cores
    loadgen_peak: float = -1.0  # -1: one generator process, the same as `loadgen`
    loadgen_processes: int = 1
    database: float | None = None  # CPU seconds of the database processes, when measured

    def pct(self, seconds: float) -> float:
        return 100 * seconds / self.wall if self.wall else 0.0

    @property
    def peak(self) -> float:
        return self.loadgen if self.loadgen_peak < 0 else self.loadgen_peak

    @property
    def generator_bound(self) -> bool:
        return self.pct(self.peak) >= GENERATOR_BOUND_PCT

    def generator(self) -> str:
        """The load generator's CPU as a table cell: % of one core (busiest process), and a
        flag when it was saturated."""
        text = f"{self.pct(self.loadgen):.0f}"
        if self.loadgen_processes > 1:
            text += f" ({self.loadgen_processes} procs, busiest {self.pct(self.peak):.0f})"
        return text + (" **generator-bound**" if self.generator_bound else "")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


# A load generator process at this % of one core or more is saturated: the row measures it.
GENERATOR_BOUND_PCT = 90.0


class CpuMeter:
    """CPU of the server's processes (and their descendants, from /proc), of this process
    (the load generator, os.times), of the machine, and of the database processes
    `database()` names at the start and at the end (one that appears in between counts from
    zero), between construction and `stop`."""

    def __init__(
        self, pids: Sequence[int], database: Callable[[], Sequence[int]] | None = None
    ) -> None:
        self.pids = list(pids)
        self.database = database
        self._start = self._take()

    def _take(self) -> tuple[float, float, dict[int, float], float, float, dict[int, float]]:
        busy, total = machine_busy_seconds()
        server = process_tree_cpu(self.pids) if self.pids else {}
        database = (
            {pid: process_cpu_seconds(pid) for pid in self.database()} if self.database else {}
        )
        return time.perf_counter(), self_cpu_seconds(), server, busy, total, database

    def stop(self) -> Cpu:
        end = self._take()
        start = self._start
        total = end[4] - start[4]
        database = None
        if self.database is not None:
            # A backend gone by the end reads 0 (its CPU is lost either way).
            database = sum(max(0.0, cpu - start[5].get(pid, 0.0)) for pid, cpu in end[5].items())
        return Cpu(
            end[0] - start[0],
            end[1] - start[1],
            tree_delta(start[2], end[2]),
            100 * (end[3] - start[3]) / total if total else 0.0,
            database=database,
        )


# Servers under test


def add_server_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        action="append",
        metavar="LABEL=PYTHON",
        help="an ironcore to measure: a label and the interpreter that runs its server (another "
        "checkout's .venv/bin/python); repeatable, measured in this order; default: "
        "ironcore=this interpreter",
    )


def servers_option(
    parser: argparse.ArgumentParser, specs: list[str] | None
) -> list[tuple[str, str]]:
    """(label, interpreter) for each `--server LABEL=PYTHON`; labels read "ironcore[LABEL]"."""
    servers = []
    for spec in specs or [f"ironcore={sys.executable}"]:
        label, _, python = spec.partition("=")
        if not python or not os.path.exists(python):
            parser.error(f"--server {spec!r}: LABEL=PYTHON, an existing interpreter")
        servers.append((label if label.startswith("ironcore") else f"ironcore[{label}]", python))
    return servers


# The load generator


@dataclass
class Result:
    name: str
    completed: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu: Cpu | None = None
    load: str = ""  # the load average at the end of the round

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class _Run:
    def __init__(self, next_request: Callable[[], bytes], result: Result) -> None:
        self.next_request = next_request
        self.result = result
        self.measuring = False
        self.stopping = False
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.failure: BaseException | None = None

    def done(self, status: int, body: bytes, latency: float) -> None:
        if not self.measuring:
            return
        result = self.result
        result.completed += 1
        result.latencies.append(latency)
        if status != 200:
            result.errors += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if len(result.error_samples) < 5:
                result.error_samples.append(f"{status} {body[:300].decode(errors='replace')}")


class _Connection(asyncio.Protocol):
    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.need = -1  # bytes of the whole response, once its head is parsed
        self.status = 0
        self.head_end = 0
        self.sent_at = 0.0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack alike.
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> None:
        assert self.transport is not None
        self.run.in_flight += 1
        self.sent_at = time.perf_counter()
        self.transport.write(self.run.next_request())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need < 0:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buffer[:end].lower()
                self.status = int(head[9:12])
                at = head.find(b"\r\ncontent-length:")
                if at < 0:
                    self._fail(RuntimeError(f"response without Content-Length: {head[:200]!r}"))
                    return
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
                self.head_end = end + 4
                self.need = self.head_end + length
            if len(self.buffer) < self.need:
                return
            now = time.perf_counter()
            body = self.buffer[self.head_end : self.need] if self.status != 200 else b""
            self.buffer = self.buffer[self.need :]
            self.need = -1
            run = self.run
            run.in_flight -= 1
            run.done(self.status, body, now - self.sent_at)
            if run.stopping:
                if run.in_flight == 0:
                    run.idle.set()
            else:
                self.send()

    def _fail(self, error: BaseException) -> None:
        self.run.failure = error
        self.run.stopping = True
        self.run.idle.set()
        if self.transport:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.run.stopping:
            self._fail(exc or ConnectionError("the server closed a keep-alive connection"))
        if not self.closed.done():
            self.closed.set_result(None)


async def run_load(
    name: str,
    host: str,
    port: int,
    next_request: Callable[[], bytes],
    *,
    connections: int,
    warmup: float,
    rounds: int,
    duration: float,
    server_pids: Sequence[int],
    database: Callable[[], Sequence[int]] | None = None,
    on_measure: Callable[[], object] | None = None,
) -> list[Result]:
    """Keep `connections` requests in flight for `warmup` + `rounds` x `duration` seconds and
    measure each round on its own (throughput, latency, status codes and the CPU of everyone
    involved: `server_pids` and their descendants, the processes `database()` names). The
    load does not pause between rounds; a response counts in the round in which
    it arrives."""
    loop = asyncio.get_running_loop()
    results = [Result(name) for _ in range(rounds)]
    run = _Run(next_request, results[0])
    conns: list[_Connection] = []
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: _Connection(run), host, port)
        conns.append(conn)
    for conn in conns:
        conn.send()
    await asyncio.sleep(warmup)
    if on_measure is not None:
        on_measure()
    run.measuring = True
    for result in results:
        run.result = result
        meter = CpuMeter(server_pids, database)
        await asyncio.sleep(duration)
        result.cpu = meter.stop()
        result.seconds = result.cpu.wall
        result.load = load_average()
    run.measuring = False
    run.stopping = True
    if run.in_flight:
        try:
            await asyncio.wait_for(run.idle.wait(), 30)
        except TimeoutError:
            run.failure = run.failure or TimeoutError(
                f"{run.in_flight} requests unanswered 30 s after the measurement ended"
            )
    for conn in conns:
        if conn.transport:
            conn.transport.close()
    await asyncio.gather(*(conn.closed for conn in conns))
    if run.failure is not None:
        raise RuntimeError(f"{name}: load generator failed") from run.failure
    return results
