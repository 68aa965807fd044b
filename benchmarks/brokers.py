"""What the MQTT and event benchmarks share: brokers to measure (a fresh `ironcore serve`,
Mosquitto, amqtt), a saturating QoS 1 publisher built on the fleet simulator, and the
bookkeeping every table reports (CPU from /proc and os.times, RSS, load average).

Every broker is a process of its own, started by `bash -c 'ulimit -n 65536; exec …'` so that
it can hold tens of thousands of sockets; the pid we measure is the broker itself (exec), not a
wrapper. The load generator is the fleet simulator (`ironcore.simulator`): one process, one
event loop, ironcore's own MQTT codec.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from benchmarks import profile
from benchmarks.loadgen import Cpu, CpuMeter
from benchmarks.loadgen import load_average as load_average
from ironcore.bridge.mqtt import codec
from ironcore.simulator.device import SimulatedDevice, Stats
from ironcore.simulator.device import connect as device_connect
from ironcore.simulator.fleet import Member, Target
from ironcore.simulator.provision import member_with_key

PROJECT = "bench-project"
LOCATION = "us-central1"
FD_LIMIT = 65536
MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
# The one Mosquitto account every simulated device logs in with (the simulator sends the
# username "unused"; the password takes the JWT's place).
MOSQUITTO_USER, MOSQUITTO_PASSWORD = "unused", "bench-password-1"


# Process bookkeeping


def raise_fd_limit(limit: int = FD_LIMIT) -> int:
    """Raise our own RLIMIT_NOFILE (root may raise the hard limit too); returns the soft one."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    for want in ((limit, max(limit, hard)), (min(limit, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, want)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    fields = file.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# Brokers


def _spawn(
    args: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `args` with a raised fd limit; the shell execs, so the pid is the broker's."""
    command = f"ulimit -n {FD_LIMIT} 2>/dev/null || ulimit -n $(ulimit -Hn); exec " + shlex.join(
        args
    )
    with log.open("wb") as out:
        return subprocess.Popen(
            ["bash", "-c", command], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_port(process: subprocess.Popen[bytes], port: int, log: Path, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{log.read_text()[-3000:]}")
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    stop(process)
    raise RuntimeError(f"{what} did not listen on {port}:\n{log.read_text()[-3000:]}")


@dataclass
class Ironcore:
    process: subprocess.Popen[bytes]
    data_dir: Path
    url: str
    token: str
    mqtt_port: int
    insecure_port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pids(self) -> list[int]:
        """The server's processes: the primary and its MQTT workers (`--mqtt-workers`)."""
        return [self.pid, *children(self.pid)]

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.crt"

    def stop(self) -> None:
        stop(self.process, 40)


def wait_for_processes(server: Ironcore, count: int) -> list[int]:
    """The server's pids once all `count` of its MQTT processes run (the workers start before
    the primary is ready, so this is at once)."""
    deadline = time.monotonic() + 10
    while len(pids := server.pids) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"ironcore has {len(pids)} of {count} MQTT processes")
        time.sleep(0.05)
    return pids


def start_ironcore(
    data_dir: Path,
    extra: Sequence[str] = (),
    module: Sequence[str] = ("-m", "ironcore"),
    python: str | None = None,
) -> Ironcore:
    """A fresh `python -m ironcore serve` (TLS MQTT and a plaintext MQTT listener), ready.

    `module` replaces `-m ironcore` for a wrapper that patches the server before running the
    same CLI (the events benchmark's null sink). `python` is the interpreter that runs the
    server, ours by default: another checkout's `.venv/bin/python` measures that checkout's
    server with this harness (before/after comparisons)."""
    api, mqtt, insecure = free_port(), free_port(), free_port()
    log = data_dir.parent / f"{data_dir.name}-server.log"
    args = [python or sys.executable, *module, "serve", "--data-dir", str(data_dir)]
    args += ["--api-host", "127.0.0.1", "--api-port", str(api), "--log-level", "warning"]
    args += ["--device-http-port", "0"]
    args += ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(mqtt)]
    # No gRPC port unless `extra` asks for one (the last --grpc-port given counts).
    args += ["--insecure-mqtt-port", str(insecure), "--grpc-port", "0", *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONCORE_")}
    process = _spawn(args, log, env)
    url = f"http://127.0.0.1:{api}"
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"ironcore serve exited:\n{log.read_text()[-3000:]}")
        with (
            suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"{url}/readyz", timeout=2) as response,
        ):
            if response.status == 200:
                break
        if time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"ironcore serve did not become ready:\n{log.read_text()}")
        time.sleep(0.05)
    token = (data_dir / "admin-token").read_text().strip()
    return Ironcore(process, data_dir, url, token, mqtt, insecure, log)


def start_cluster(
    workdir: Path,
    count: int,
    database_url: str,
    schema: str,
    extra: Sequence[str] = (),
    python: str | None = None,
) -> list[Ironcore]:
    """`count` servers sharing one PostgreSQL schema (made by the first, migrated by its own
    code), each with its own data directory (and so its own TLS CA: a device trusts the server
    it dials). The first creates the owner token; the others are handed its file."""
    servers: list[Ironcore] = []
    try:
        for index in range(count):
            data = workdir / f"server-{index}"
            data.mkdir(parents=True)
            if servers:
                shutil.copy(servers[0].data_dir / "admin-token", data / "admin-token")
            servers.append(
                start_ironcore(
                    data,
                    ("--database-url", database_url, "--database-schema", schema, *extra),
                    python=python,
                )
            )
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def drop_schema(database_url: str, schema: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


@dataclass
class Broker:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    tls: bool
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        stop(self.process)


def start_mosquitto(workdir: Path, tls_dir: Path) -> Broker:
    """Our own Mosquitto on a free port: TLS with ironcore's ECDSA P-256 server certificate
    (chain) and key, a password file with one account, no persistence, TCP_NODELAY."""
    workdir.mkdir(parents=True, exist_ok=True)
    passwords = workdir / "passwords"
    subprocess.run(
        [MOSQUITTO_PASSWD, "-b", "-c", str(passwords), MOSQUITTO_USER, MOSQUITTO_PASSWORD],
        check=True,
        capture_output=True,
    )
    port = free_port()
    config = workdir / "mosquitto.conf"
    config.write_text(
        "\n".join(
            [
                "user root",  # started as root it would switch to `mosquitto` and lose our files
                "persistence false",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "connection_messages false",
                "allow_anonymous false",
                f"password_file {passwords}",
                "max_connections -1",
                f"listener {port} 127.0.0.1",
                "set_tcp_nodelay true",
                f"cafile {tls_dir / 'ca.crt'}",
                f"certfile {tls_dir / 'server.crt'}",
                f"keyfile {tls_dir / 'server.key'}",
                "",
            ]
        )
    )
    log = workdir / "mosquitto.log"
    process = _spawn([MOSQUITTO, "-c", str(config)], log)
    _wait_port(process, port, log, "mosquitto")
    return Broker("mosquitto", process, port, True, log)


def start_amqtt(workdir: Path, tls_dir: Path, tls: bool = True) -> Broker:
    """amqtt (pure-Python asyncio broker) on a free port, TLS with the same certificate, the
    anonymous-auth plugin (it accepts any username/password), no $SYS or packet logging."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = [
        "listeners:",
        "  default:",
        "    type: tcp",
        f"    bind: 127.0.0.1:{port}",
    ]
    if tls:
        lines += [
            "    ssl: true",
            f"    certfile: {tls_dir / 'server.crt'}",
            f"    keyfile: {tls_dir / 'server.key'}",
        ]
    lines += [
        "plugins:",
        "  amqtt.plugins.authentication.AnonymousAuthPlugin:",
        "    allow_anonymous: true",
        "",
    ]
    config = workdir / "amqtt.yaml"
    config.write_text("\n".join(lines))
    log = workdir / "amqtt.log"
    exe = str(Path(sys.executable).parent / "amqtt")
    process = _spawn([exe, "-c", str(config)], log)
    _wait_port(process, port, log, "amqtt")
    return Broker("amqtt", process, port, tls, log)


# Devices


def client_tls(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def target(host: str, port: int, tls: ssl.SSLContext | None, registry: str) -> Target:
    return Target(host, port, tls, PROJECT, LOCATION, registry)


def password_members(count: int, prefix: str = "dev") -> list[Member]:
    """Members for Mosquitto/amqtt: the shared account's password instead of a JWT."""
    return [Member(f"{prefix}-{i:06d}", lambda: MOSQUITTO_PASSWORD) for i in range(count)]


async def seed_devices(
    data_dir: Path, registry: str, count: int, *, prefix: str = "dev", shared_key: bool = True
) -> list[Member]:
    """Before the server first starts: create the registry (events to the embedded topic
    `<registry>-events`) and `count` devices with ES256 keys straight into the data directory's
    SQLite database, through the store's bulk insert (`store.devices.create_devices`, the path
    manifest import uses, 2,000 devices per transaction). Registering ten thousand devices one
    CreateDevice at a time takes a minute on this machine, more than the whole benchmark may.

    With `shared_key` every device gets the same key (generating and serializing 10,000 keys
    is another few seconds): the server still parses and checks each device's own credential
    and verifies every JWT's signature."""
    from datetime import UTC, datetime

    from ironcore import limits as ic_limits
    from ironcore.registry.names import LocationName, RegistryName
    from ironcore.registry.resources import (
        Device,
        DeviceConfig,
        DeviceCredential,
        DeviceRegistry,
        EventNotificationConfig,
        PublicKeyCredential,
        PublicKeyFormat,
    )
    from ironcore.registry.service import DeviceManager
    from ironcore.registry.store import Store
    from ironcore.registry.store.pubsub import PubSubStore
    from ironcore.routing.pubsub import PubSub

    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (before any server runs)
    store = await Store.open(f"sqlite:///{data_dir / 'ironcore.db'}", None)
    try:
        manager = DeviceManager(store, topics=PubSub(PubSubStore(store)))
        name = RegistryName(LocationName(PROJECT, LOCATION), registry)
        topic = f"projects/{PROJECT}/topics/{registry}-events"
        await manager.create_registry(
            name.location,
            DeviceRegistry(
                id=registry,
                event_notification_configs=[EventNotificationConfig(pubsub_topic_name=topic)],
            ),
        )
        record = await manager._registry(name)
        keys = (
            [ec.generate_private_key(ec.SECP256R1())] * count
            if shared_key
            else [ec.generate_private_key(ec.SECP256R1()) for _ in range(count)]
        )
        pems: dict[int, str] = {}
        members: list[Member] = []
        devices: list[Device] = []
        used: set[int] = set()
        for index, key in enumerate(keys):
            pem = pems.get(id(key))
            if pem is None:
                pem = pems[id(key)] = (
                    key.public_key()
                    .public_bytes(
                        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                    )
                    .decode()
                )
            device_id = f"{prefix}-{index:06d}"
            num_id = ic_limits.NUM_ID_MIN + index + 1
            used.add(num_id)
            devices.append(
                Device(
                    id=device_id,
                    num_id=num_id,
                    credentials=[
                        DeviceCredential(
                            public_key=PublicKeyCredential(
                                format=PublicKeyFormat.ES256_PEM, key=pem
                            )
                        )
                    ],
                    config=DeviceConfig(),
                )
            )
            members.append(member_with_key(device_id, key, PROJECT))
        now = datetime.now(UTC)
        for start in range(0, len(devices), 2000):
            await store.devices.create_devices(record.pk, name, devices[start : start + 2000], now)
        return members
    finally:
        await store.close()


# A saturating QoS 1 publisher on the simulator's device


@dataclass
class Tally:
    acknowledged: int = 0
    errors: int = 0
    in_flight: int = 0
    latencies: list[float] = field(default_factory=list)
    sample_every: int = 16
    _n: int = 0


class PumpDevice(SimulatedDevice):
    """A simulated device that, once `pump` is called, keeps `window` QoS 1 events in flight:
    each PUBACK sends the next PUBLISH from the protocol callback, with no coroutine or future
    per event (`SimulatedDevice.publish_event` costs a task switch and a future per event, which
    would make the load generator the bottleneck against a C broker). PUBLISHes are the codec's
    bytes with the packet id patched in; PUBACKs are parsed inline and any other packet goes
    through the codec to the simulator's handler as before."""

    def pump(self, tally: Tally, window: int, payload: bytes) -> None:
        topic = f"/devices/{self.device_id}/events"
        template = codec.encode(codec.Publish(topic, payload, qos=1, packet_id=0x0102))
        at = template.index(b"\x01\x02", len(template) - len(payload) - 2)
        self._head, self._tail = template[:at], template[at + 2 :]
        self._tally = tally
        self._sent: dict[int, float] = {}
        self._buf = b""
        self._stopping = False
        self._pumping = True
        batch = [self._next_publish() for _ in range(window)]
        if self.transport is not None:
            self.transport.write(b"".join(batch))

    def stop_pump(self) -> None:
        self._stopping = True

    def _next_publish(self) -> bytes:
        packet_id = self._next_id
        self._next_id = packet_id % 65535 + 1
        self._sent[packet_id] = time.perf_counter()
        self._tally.in_flight += 1
        return self._head + packet_id.to_bytes(2) + self._tail

    def data_received(self, data: bytes) -> None:
        if not getattr(self, "_pumping", False):
            super().data_received(data)
            return
        buf = self._buf + data if self._buf else data
        tally = self._tally
        out: list[bytes] = []
        i, n = 0, len(buf)
        while n - i >= 2:
            if buf[i] == 0x40 and buf[i + 1] == 2:
                if n - i < 4:
                    break
                packet_id = int.from_bytes(buf[i + 2 : i + 4])
                i += 4
                sent = self._sent.pop(packet_id, None)
                if sent is None:
                    continue
                tally.in_flight -= 1
                tally.acknowledged += 1
                tally._n += 1
                if tally._n % tally.sample_every == 0 and len(tally.latencies) < 200_000:
                    tally.latencies.append(time.perf_counter() - sent)
                if not self._stopping:
                    out.append(self._next_publish())
                continue
            # Any other packet: find its length, decode it with the codec.
            length, shift, j = 0, 0, i + 1
            while j < n and j - i <= 4:
                byte = buf[j]
                length |= (byte & 0x7F) << shift
                shift += 7
                j += 1
                if not byte & 0x80:
                    break
            else:
                break
            if n - j < length:
                break
            self._decoder.feed(buf[i : j + length])
            i = j + length
            while (packet := self._decoder.next_packet()) is not None:
                self._handle(packet)
        self._buf = buf[i:]
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_pumping", False):
            self._tally.in_flight -= len(self._sent)
            if not self._stopping:
                self._tally.errors += 1
            self._sent.clear()
        super().connection_lost(exc)


async def connect_pumps(
    tgt: Target, members: Sequence[Member], concurrency: int = 50
) -> tuple[list[PumpDevice], Stats]:
    """Connect `members` as PumpDevices (no subscriptions), `concurrency` handshakes at a time."""
    stats = Stats()
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    devices: list[PumpDevice] = []

    async def one(member: Member) -> None:
        async with gate:
            try:
                _, device = await loop.create_connection(
                    lambda: PumpDevice(tgt.client_id(member.device_id), member.device_id, stats),
                    tgt.host,
                    tgt.port,
                    ssl=tgt.tls,
                    server_hostname=tgt.host if tgt.tls is not None else None,
                )
                try:
                    await device.handshake(member.token(), 60, False)
                except BaseException:
                    device.close()
                    raise
            except Exception:
                stats.errors += 1
                return
            devices.append(device)

    await asyncio.gather(*(one(m) for m in members))
    return devices, stats


@dataclass
class Throughput:
    name: str
    devices: int
    acknowledged: int
    seconds: float
    cpu: Cpu
    latencies: list[float]
    errors: int
    load: str
    # CPU seconds of the `also` processes (e.g. nats-server behind ironcore) over the window.
    also_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.acknowledged / self.seconds if self.seconds else 0.0

    def latency_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def saturate(
    name: str,
    tgt: Target,
    members: Sequence[Member],
    broker_pids: Sequence[int],
    *,
    window: int = 16,
    warmup: float = 2.0,
    duration: float = 10.0,
    payload: bytes = b"x" * 64,
    on_measure: Callable[[], object] | None = None,
    also: Sequence[int] = (),
    more: Sequence[tuple[Target, Sequence[Member]]] = (),
    database: Callable[[], Sequence[int]] | None = None,
) -> Throughput:
    """Connect every member, keep `window` QoS 1 events in flight on each, and count PUBACKs
    over `duration` seconds after `warmup`. `more`: other brokers (servers of a cluster) and
    the members that connect to each; `database`: the database processes whose CPU counts."""
    devices, stats = await connect_pumps(tgt, members)
    for other, others in more:
        also_devices, also_stats = await connect_pumps(other, others)
        devices += also_devices
        stats.refused += also_stats.refused
        stats.errors += also_stats.errors
    if not devices:
        raise RuntimeError(
            f"{name}: no device connected ({stats.refused} refused, {stats.errors} errors)"
        )
    tally = Tally()
    try:
        for device in devices:
            device.pump(tally, window, payload)
        await asyncio.sleep(warmup)
        tally.latencies.clear()
        start_acks = tally.acknowledged
        meter = CpuMeter(broker_pids, database)
        also_meter = CpuMeter(also)
        if on_measure is not None:
            on_measure()
        await asyncio.sleep(duration)
        acked = tally.acknowledged - start_acks
        cpu = meter.stop()
        also_cpu = also_meter.stop().broker
        load = load_average()
        for device in devices:
            device.stop_pump()
        deadline = time.monotonic() + 10
        while tally.in_flight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        for device in devices:
            device.close()
        await asyncio.gather(*(d.wait_closed() for d in devices), return_exceptions=True)
    return Throughput(
        name,
        len(devices),
        acked,
        cpu.wall,
        cpu,
        list(tally.latencies),
        tally.errors,
        load,
        also_cpu,
    )


async def connect_plain(
    tgt: Target, members: Sequence[Member], stats: Stats, concurrency: int, subscribe: bool
) -> list[SimulatedDevice]:
    """Connect members with the simulator's own `connect` (a plain SimulatedDevice each)."""
    gate = asyncio.Semaphore(concurrency)
    out: list[SimulatedDevice] = []

    async def one(member: Member) -> None:
        async with gate:
            try:
                out.append(
                    await device_connect(
                        tgt.host,
                        tgt.port,
                        tgt.tls,
                        tgt.client_id(member.device_id),
                        member.device_id,
                        member.token(),
                        stats,
                        subscribe=subscribe,
                    )
                )
            except Exception:
                stats.errors += 1

    await asyncio.gather(*(one(m) for m in members))
    return out


async def close_all(devices: Sequence[SimulatedDevice]) -> None:
    for device in devices:
        device.close()
    await asyncio.gather(*(d.wait_closed() for d in devices), return_exceptions=True)


class Profiler:
    """`--profile DIR`: sample the ironcore process with py-spy (benchmarks.profile) while a
    part is measured, and print where its time went."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.running: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, pid: int, seconds: float) -> None:
        if self.directory is None:
            return
        output = self.directory / f"ironcore-{name}.txt"
        self.running.append((name, profile.start(pid, seconds, output), output))

    def report(self) -> None:
        for name, spy, output in self.running:
            _, err = spy.communicate(timeout=120)
            if spy.returncode or not output.exists():
                print(f"py-spy failed for {name}: {err.decode(errors='replace')}")
                continue
            print(f"\nironcore server profile, {name} ({output}):")
            print(profile.summarize(output))
        self.running.clear()


def event_loop_runner() -> asyncio.Runner:
    """uvloop when installed (as ironcore itself uses), else asyncio's loop."""
    with suppress(ImportError):
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()
