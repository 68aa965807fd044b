"""A cluster as an operator runs one: real `ironcore serve` processes sharing a PostgreSQL
schema and the NATS bus, one TLS certificate, and a real HAProxy in front of them running
deploy/haproxy/haproxy.cfg with its bind ports and server lines replaced by the test's."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import Database, Server, free_port, need_service, start_server, stop_server
from tests.keys import localhost_certificate, make_ca

HAPROXY = "/usr/sbin/haproxy"
CONFIG = Path(__file__).parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
BUS = "nats://127.0.0.1:4222"
# HAProxy connects to the servers from this address (`source`), which they trust
# (--trusted-proxies): one no client uses, so an address recorded is never HAProxy's by chance.
HAPROXY_SOURCE = "127.0.0.5"
# The shipped configuration's ports, replaced by free ones.
MQTT_BIND, HTTP_BIND, STATS_BIND = ":8883", ":8080", "127.0.0.1:8404"
_SERVER_LINE = re.compile(r"^(\s*)server ironcore1 10\.0\.0\.11:(\d+)(.*)$", re.MULTILINE)
_OTHER_SERVERS = re.compile(r"^\s*server ironcore[2-9] .*\n", re.MULTILINE)


def shared_tls(directory: Path) -> tuple[Path, Path]:
    """A CA (directory/tls/ca.crt, what devices trust) and a server certificate for localhost
    and 127.0.0.1 that every server of the cluster is given: (chain, key)."""
    tls = directory / "tls"
    tls.mkdir(parents=True)
    ca = make_ca("cluster test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = localhost_certificate(key, ca.cert.subject, ca.key, days=1)
    pem = serialization.Encoding.PEM
    (tls / "ca.crt").write_bytes(ca.cert.public_bytes(pem))
    (tls / "server.crt").write_bytes(cert.public_bytes(pem) + ca.cert.public_bytes(pem))
    (tls / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tls / "server.crt", tls / "server.key"


@dataclass
class Cluster:
    """`count` servers on `database` joined by the bus, each at fixed ports so that one can be
    stopped and started again where HAProxy expects it."""

    root: Path
    database: Database
    count: int
    extra: list[str] = field(default_factory=list)
    servers: list[Server] = field(default_factory=list)

    def __post_init__(self) -> None:
        need_service("NATS", "127.0.0.1", 4222)
        self.cert, self.key = shared_tls(self.root)
        self.ports = [(free_port(), free_port()) for _ in range(self.count)]

    def data_dir(self, index: int) -> Path:
        return self.root / f"server{index + 1}"

    def start(self, index: int) -> Server:
        """Start server `index` (again), on its own ports and data directory."""
        data_dir = self.data_dir(index)
        if index and not (data_dir / "admin-token").exists():
            # Only the first server on an empty database writes the owner token; the others
            # share the database and so the token.
            data_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.data_dir(0) / "admin-token", data_dir / "admin-token")
        args = ["--bus", BUS, "--mqtt-proxy-protocol", "--trusted-proxies", HAPROXY_SOURCE]
        args += ["--tls-cert", str(self.cert)]
        args += ["--tls-key", str(self.key), *self.extra]
        server = start_server(data_dir, self.database, args, self.ports[index])
        if index < len(self.servers):
            self.servers[index] = server
        else:
            self.servers.append(server)
        return server

    def start_all(self) -> None:
        """The first server creates the schema and the owner token; the others then start
        together."""
        self.start(0)
        # Each start fills its own place in `servers`; until then, the first stands in.
        self.servers.extend([self.servers[0]] * (self.count - 1))
        with ThreadPoolExecutor(max(1, self.count - 1)) as pool:
            list(pool.map(self.start, range(1, self.count)))

    def stop_all(self) -> None:
        for server in self.servers:
            if server.process.poll() is None:
                stop_server(server)


@dataclass
class Haproxy:
    process: subprocess.Popen[bytes]
    config: Path
    log: Path
    mqtt_port: int
    http_port: int
    stats_port: int

    def statuses(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> "UP", "DOWN", "UP 1/2"… from HAProxy's own statistics."""
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            (row["pxname"], row["svname"]): row["status"]
            for row in rows
            if row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_status(self, server: str, status: str, timeout: float = 20) -> None:
        """Until `server` (ironcore1…) has `status` in both backends."""
        deadline = time.monotonic() + timeout
        seen: dict[tuple[str, str], str] = {}
        while time.monotonic() < deadline:
            seen = self.statuses()
            if all(seen.get((backend, server)) == status for backend in BACKENDS):
                return
            time.sleep(0.2)
        raise AssertionError(f"{server} never became {status} in HAProxy: {seen}")

    def front(self, cluster: Cluster) -> Server:
        """The cluster as a client sees it: the admin API and MQTT through HAProxy, the
        cluster's CA (data_dir/tls/ca.crt) and owner token."""
        first = cluster.servers[0]
        return Server(
            url=f"http://127.0.0.1:{self.http_port}",
            port=self.http_port,
            token=first.token,
            data_dir=cluster.root,
            process=self.process,
            log=self.log,
            mqtt_port=self.mqtt_port,
        )

    def stop(self) -> None:
        stop_haproxy(self.process)


BACKENDS = ("ironcore_mqtt", "ironcore_http")


def render(cluster: Cluster, mqtt_port: int, http_port: int, stats_port: int) -> str:
    """deploy/haproxy/haproxy.cfg for the cluster's servers and these front ports."""
    text = CONFIG.read_text()
    for shipped, port in ((MQTT_BIND, mqtt_port), (HTTP_BIND, http_port)):
        text = text.replace(f"    bind {shipped}\n", f"    bind 127.0.0.1:{port}\n")
    text = text.replace(f"    bind {STATS_BIND}\n", f"    bind 127.0.0.1:{stats_port}\n")
    text = _OTHER_SERVERS.sub("", text)
    # HAProxy refuses to start when it cannot raise its file limit to fit maxconn, and test
    # machines hold it low.
    text, maxconn = re.subn(r"^    maxconn \d+$", "    maxconn 2000", text, flags=re.MULTILINE)
    # Health checks four times as often as shipped, so that a restart test takes seconds.
    text, checks = re.subn(r"\binter 2s\b", "inter 500ms", text)
    text, sources = re.subn(
        r"^defaults\n", f"defaults\n    source {HAPROXY_SOURCE}\n", text, flags=re.MULTILINE
    )
    assert maxconn == checks == sources == 1

    def servers(match: re.Match[str]) -> str:
        indent, port, options = match.group(1), int(match.group(2)), match.group(3)
        lines = []
        for index, (api_port, mqtt) in enumerate(cluster.ports):
            target = mqtt if port == 8883 else api_port
            line_options = options.replace("check port 8080", f"check port {api_port}")
            lines.append(f"{indent}server ironcore{index + 1} 127.0.0.1:{target}{line_options}")
        return "\n".join(lines)

    rendered, count = _SERVER_LINE.subn(servers, text)
    assert count == len(BACKENDS), f"expected a server line per backend in {CONFIG}"
    return rendered


def start_haproxy(cluster: Cluster) -> Haproxy:
    """HAProxy in front of the cluster, once every server is up in both backends."""
    mqtt_port, http_port, stats_port = free_port(), free_port(), free_port()
    config = cluster.root / "haproxy.cfg"
    log = cluster.root / "haproxy.log"
    process = launch_haproxy(render(cluster, mqtt_port, http_port, stats_port), config, log)
    haproxy = Haproxy(process, config, log, mqtt_port, http_port, stats_port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"haproxy exited: {log.read_text()}")
        try:
            haproxy.statuses()
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    for index in range(cluster.count):
        haproxy.wait_status(f"ironcore{index + 1}", "UP")
    return haproxy


def launch_haproxy(text: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """HAProxy running the configuration `text` (written to `config`, checked first), logging
    to `log`; stop it with `stop_haproxy`."""
    config.write_text(text)
    checked = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with log.open("wb") as out:
        return subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT
        )


def stop_haproxy(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
