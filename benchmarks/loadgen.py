"""A lean closed-loop HTTP/1.1 load generator and the CPU accounting the API benchmark reports.

Each connection is an `asyncio.Protocol` that keeps one request in flight on a keep-alive
connection and sends the next one from `data_received`, so a request costs the generator one
write and one read callback: no coroutine, no stream buffering, no HTTP library. Requests are
pre-built bytes (or built by a cheap callable). Responses must carry Content-Length, which
uvicorn always sends for JSON.

CPU time comes from /proc: `/proc/<pid>/stat` (utime + stime of every thread of a process) for
the server and the database, `/proc/stat` for the whole machine, `os.times()` for ourselves.
"""

from __future__ import annotations

import asyncio
import os
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
class CpuSnapshot:
    wall: float
    me: float
    server: float
    database: dict[int, float]
    machine_busy: float
    machine_total: float

    @classmethod
    def take(cls, server_pid: int, database_name: str | None) -> CpuSnapshot:
        database = (
            {pid: process_cpu_seconds(pid) for pid in processes_named(database_name)}
            if database_name
            else {}
        )
        busy, total = machine_busy_seconds()
        return cls(
            time.perf_counter(),
            self_cpu_seconds(),
            process_cpu_seconds(server_pid),
            database,
            busy,
            total,
        )


@dataclass
class CpuUsage:
    """CPU used between two snapshots, in seconds and as % of one core."""

    wall: float
    loadgen: float
    server: float
    database: float | None
    machine: float  # % of all cores (100 = every core busy)

    @classmethod
    def between(cls, start: CpuSnapshot, end: CpuSnapshot, has_database: bool) -> CpuUsage:
        database = None
        if has_database:
            # A backend that started during the window counts from zero.
            database = sum(cpu - start.database.get(pid, 0.0) for pid, cpu in end.database.items())
        total = end.machine_total - start.machine_total
        return cls(
            end.wall - start.wall,
            end.me - start.me,
            end.server - start.server,
            database,
            100 * (end.machine_busy - start.machine_busy) / total if total else 0.0,
        )

    def percent(self, seconds: float) -> float:
        return 100 * seconds / self.wall


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
    cpu: CpuUsage | None = None

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
    server_pid: int,
    database_process: str | None = None,
    on_measure: Callable[[], object] | None = None,
) -> list[Result]:
    """Keep `connections` requests in flight for `warmup` + `rounds` x `duration` seconds and
    measure each round on its own (throughput, latency, status codes and the CPU of everyone
    involved). The load does not pause between rounds; a response counts in the round in which
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
    start = CpuSnapshot.take(server_pid, database_process)
    for result in results:
        run.result = result
        await asyncio.sleep(duration)
        end = CpuSnapshot.take(server_pid, database_process)
        result.seconds = end.wall - start.wall
        result.cpu = CpuUsage.between(start, end, database_process is not None)
        start = end
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
