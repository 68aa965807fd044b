"""Shared fixtures: a store on each database, a device manager, the API in process and as a
real server process.

The server fixtures, for every test module (define no other unless the server needs flags of
its own):
- `server` (alias `bridge`): a real `ironcore serve` per test, on each database; a module marked
  `pytest.mark.databases("sqlite")` runs it (and every `database` fixture) on SQLite only;
- `module_server`: one real `ironcore serve` on SQLite for a whole module, for tests that keep
  out of each other's way (registries and devices of their own);
- `grpc_server`: as `server`, with its gRPC API (`Server.grpc_port`) over TLS from the session's
  `local_ca`, which Google's client libraries trust through GRPC_DEFAULT_SSL_ROOTS_FILE_PATH.
- `module_grpc_server`: as `grpc_server`, one on each database (`module_database`) for a whole
  module, for tests that keep out of each other's way.

Fault tests that stop, restart or freeze PostgreSQL use `private_postgres`, a server of the
test's own (tests/private_pg.py), never the shared one.

PostgreSQL tests use the server at IRONCORE_TEST_DATABASE_URL (default 127.0.0.1:5432, database
`test`), each test in a schema of its own. When the server is down they skip on a laptop and
fail when IRONCORE_REQUIRE_SERVICES=1 (as CI sets).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from ironcore.access.tokens import AdminTokens
from ironcore.bridge.certificates import local_certificates
from ironcore.registry.service import DeviceManager
from ironcore.registry.store import Store
from ironcore.registry.store.pubsub import PubSubStore
from ironcore.routing.pubsub import PubSub
from ironcore.runtime.inprocess import admin_api
from tests import private_pg
from tests.private_pg import PrivatePostgres

T = TypeVar("T")
PG_URL = os.environ.get("IRONCORE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_SERVICES = os.environ.get("IRONCORE_REQUIRE_SERVICES") == "1"


def service_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need_service(name: str, host: str, port: int) -> None:
    if service_up(host, port):
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{name} is not reachable at {host}:{port} and IRONCORE_REQUIRE_SERVICES=1")
    pytest.skip(f"{name} is not reachable at {host}:{port}")


def pg_host_port() -> tuple[str, int]:
    rest = PG_URL.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = rest.partition(":")
    return host or "127.0.0.1", int(port or 5432)


@dataclass
class Database:
    url: str
    schema: str | None

    @property
    def kind(self) -> str:
        return "sqlite" if self.url.startswith("sqlite") else "postgresql"


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`pytest.mark.databases("sqlite")` on a test or module: its `database` (and so its
    `server`) or `module_database` (and so its `module_grpc_server`) only on those kinds.
    Turned into a parametrize mark, which takes precedence over the fixture's own params."""
    marker = metafunc.definition.get_closest_marker("databases")
    if marker is None:
        return
    kinds = list(marker.args)
    assert kinds and set(kinds) <= {"sqlite", "postgresql"}, kinds
    for name in ("database", "module_database"):
        if name in metafunc.fixturenames:
            metafunc.definition.add_marker(pytest.mark.parametrize(name, kinds, indirect=True))


@contextlib.contextmanager
def database_of(kind: str, directory: Path) -> Iterator[Database]:
    """A database of `kind`: SQLite in `directory`, or a schema of its own on the PostgreSQL
    server, dropped afterwards."""
    if kind == "sqlite":
        yield Database(f"sqlite:///{directory / 'ironcore.db'}", None)
        return
    need_service("PostgreSQL", *pg_host_port())
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        yield Database(PG_URL, schema)
    finally:
        drop_schema(schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with database_of(request.param, tmp_path) as database:
        yield database


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    """As `database`, one of each kind for a whole module (for `module_grpc_server`)."""
    with database_of(request.param, tmp_path_factory.mktemp("database")) as database:
        yield database


def drop_schema(schema: str) -> None:
    async def drop() -> None:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        from ironcore.registry.store.database import database_url

        engine = create_async_engine(database_url(PG_URL))
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()

    asyncio.run(drop())


class Clock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(database: Database) -> AsyncIterator[Store]:
    store = await Store.open(database.url, database.schema)
    yield store
    await store.close()


@pytest.fixture
async def manager(store: Store, clock: Clock) -> DeviceManager:
    return DeviceManager(store, clock=clock, topics=PubSub(PubSubStore(store)))


@dataclass
class Api:
    client: httpx.AsyncClient
    token: str
    manager: DeviceManager

    @property
    def tokens(self) -> AdminTokens:
        return AdminTokens(self.manager.store, self.manager.clock)

    async def as_role(self, role: str) -> httpx.AsyncClient:
        token = await self.tokens.create(role, f"test {role}")
        return httpx.AsyncClient(
            transport=self.client._transport,
            base_url="http://ironcore",
            headers={"Authorization": f"Bearer {token}"},
        )


@pytest.fixture
async def api(manager: DeviceManager) -> AsyncIterator[Api]:
    """The API in process (ASGI), with an owner token."""
    token = await AdminTokens(manager.store, manager.clock).create("owner", "test owner")
    transport = httpx.ASGITransport(app=admin_api(manager))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://ironcore",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield Api(client, token, manager)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the test's own, started (tests/private_pg.py): stop, freeze and
    restart it at will; removed afterwards."""
    if not private_pg.available():
        message = f"no PostgreSQL binaries in {private_pg.BIN}"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message} and IRONCORE_REQUIRE_SERVICES=1")
        pytest.skip(message)
    server = PrivatePostgres(free_port())
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: each socket stays bound until all are chosen, or the
    kernel may hand the same port out twice."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


@dataclass
class Server:
    url: str
    port: int
    token: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path
    mqtt_port: int
    # The gRPC API's port (TLS); 0 when it is off.
    grpc_port: int = 0

    @property
    def ca_file(self) -> Path:
        """What devices trust: the local CA ironcore generated for its bridges."""
        return self.data_dir / "tls" / "ca.crt"


def cluster_secret() -> Path:
    """The secret key file every test server is given (unless its test names another), as
    every server of a real cluster is given the same one (docs/configuration.md)."""
    path = Path(tempfile.gettempdir()) / f"ironcore-test-secret-{os.getpid()}"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(uuid.uuid4().hex + uuid.uuid4().hex)
    return path


def start_server(
    data_dir: Path,
    database: Database | None = None,
    extra: list[str] | None = None,
    ports: tuple[int, int] | None = None,
    open_files: tuple[int, int] | None = None,
    grpc: bool = False,
) -> Server:
    """Run `ironcore serve` as a real process and wait until it is ready. `ports`: its API and
    MQTT ports (default: free ones), for a server started again where a balancer expects it;
    `open_files`: the process's RLIMIT_NOFILE (soft, hard); with `grpc`, its gRPC API on a free
    port too."""
    chosen = free_ports(3)
    port, mqtt_port = ports or (chosen[0], chosen[1])
    grpc_port = chosen[2] if grpc else 0
    log = data_dir.parent / f"{data_dir.name}-server.log"
    args = [sys.executable, "-m", "ironcore", "serve", "--data-dir", str(data_dir)]
    args += ["--api-host", "127.0.0.1", "--api-port", str(port)]
    args += ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(mqtt_port)]
    args += ["--grpc-port", str(grpc_port), *(extra or [])]
    if "--device-http-port" not in args:
        # Device paths on the API's port, where the tests that speak HTTP for devices send them.
        args += ["--device-http-port", "0"]
    if "--secret-key-file" not in args:
        args += ["--secret-key-file", str(cluster_secret())]
    if database and database.kind == "postgresql":
        args += ["--database-url", database.url, "--database-schema", database.schema or ""]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONCORE_")}
    limit = None
    if open_files is not None:
        limit = partial(resource.setrlimit, resource.RLIMIT_NOFILE, open_files)
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=limit
        )
    https = "--api-tls" in args or "--api-cert" in args
    url = f"{'https' if https else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ironcore serve exited: {log.read_text()}")
        try:
            # Whether it is up, not whom it is: the tests check its certificate themselves.
            if httpx.get(f"{url}/readyz", timeout=1, verify=False).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError(f"ironcore serve did not become ready: {log.read_text()}")
    token = (data_dir / "admin-token").read_text().strip()
    return Server(url, port, token, data_dir, process, log, mqtt_port, grpc_port)


def start_peer(first: Server, data_dir: Path, database: Database, extra: list[str]) -> Server:
    """Another server on `first`'s database: only the first server on an empty database writes
    the owner token, so this one is given the same."""
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(first.data_dir / "admin-token", data_dir / "admin-token")
    return start_server(data_dir, database, extra)


def stop_server(server: Server) -> int:
    """Stop the server; then check its log holds no secret (`assert_no_secrets_logged`)."""
    server.process.terminate()
    try:
        code = server.process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        server.process.kill()
        code = -9
    assert_no_secrets_logged(server)
    return code


# Admin tokens (`access.tokens`: ic_<id>_<secret>) and JWTs (a JSON header and payload begin
# `eyJ`), whoever made them: none may be in any server's log.
_LOGGED_SECRET = re.compile(r"ic_[0-9a-f]{12}_[\w-]{43}|eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")


def assert_no_secrets_logged(server: Server) -> None:
    """No token, JWT, private key or secret key in the server's log: tokens and JWTs by their
    form, whichever test made them; keys by the files the server was given or made."""
    text = server.log.read_text(errors="replace")
    found = _LOGGED_SECRET.search(text)
    assert found is None, f"{server.log} logs a token or JWT: {found[0][:16]}..."
    keys = [server.data_dir / "tls" / "ca.key", server.data_dir / "tls" / "server.key"]
    for path in (*keys, server.data_dir / "secret-key", cluster_secret()):
        try:
            lines = path.read_text().splitlines()
        except (FileNotFoundError, UnicodeDecodeError):
            continue
        for line in lines:
            # A PEM's armour lines are the same in every key; its body is the secret.
            if len(line) >= 16 and not line.startswith("-----"):
                assert line not in text, f"{server.log} logs {path}: {line[:8]}..."


@dataclass
class PrivateNats:
    """A nats-server of the test's own on a free port, to cut and bring back on the same port;
    never the machine's shared one on 4222."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js"]
        args += ["-sd", str(self.directory / "store")]
        with (self.directory / "nats-server.log").open("ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: service_up("127.0.0.1", self.port), 10, "the private nats-server")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[PrivateNats]:
    """A nats-server of this test's own, killed at the end."""
    if shutil.which("nats-server") is None:
        if REQUIRE_SERVICES:
            pytest.fail("nats-server is not installed and IRONCORE_REQUIRE_SERVICES=1")
        pytest.skip("nats-server is not installed")
    (tmp_path / "nats").mkdir()
    nats = PrivateNats(tmp_path / "nats", free_port())
    nats.start()
    try:
        yield nats
    finally:
        nats.kill()


@pytest.fixture
def server(tmp_path: Path, database: Database) -> Iterator[Server]:
    """A real `ironcore serve` process on the parametrized database."""
    running = start_server(tmp_path / "data", database)
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def local_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One local CA (`<dir>/ca.crt`, `ca.key`) for every gRPC server of the session, trusted
    as Google's client libraries are told to trust one: GRPC_DEFAULT_SSL_ROOTS_FILE_PATH,
    which gRPC reads once per process (hence one CA, not one per server)."""
    tls = tmp_path_factory.mktemp("grpc-ca") / "tls"
    local_certificates(tls, [])
    os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(tls / "ca.crt")
    return tls


def start_grpc_server(
    data: Path, database: Database, local_ca: Path, extra: list[str] | None = None
) -> Server:
    """A real `ironcore serve` with its gRPC API, its TLS certificate issued by `local_ca`."""
    (data / "tls").mkdir(parents=True)
    for name in ("ca.crt", "ca.key"):
        shutil.copy(local_ca / name, data / "tls" / name)
    return start_server(data, database, extra, grpc=True)


@pytest.fixture
def grpc_server(tmp_path: Path, database: Database, local_ca: Path) -> Iterator[Server]:
    """A real `ironcore serve` with its gRPC API, its TLS certificate issued by `local_ca`."""
    running = start_grpc_server(tmp_path / "data", database, local_ca)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def module_grpc_server(
    tmp_path_factory: pytest.TempPathFactory, module_database: Database, local_ca: Path
) -> Iterator[Server]:
    """As `grpc_server`, one on each database for a whole module, for tests that keep out of
    each other's way (a project of their own: tests/interop/iot_clients.py `own_parent`)."""
    running = start_grpc_server(
        tmp_path_factory.mktemp("module") / "data", module_database, local_ca
    )
    yield running
    stop_server(running)


@pytest.fixture
def bridge(server: Server) -> Server:
    """The same server, named for the tests that talk to its device bridges."""
    return server


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real `ironcore serve` process on SQLite, shared by the tests of a module."""
    running = start_server(tmp_path_factory.mktemp("module") / "data")
    yield running
    stop_server(running)


def wait_for(predicate: Callable[[], T | None], timeout: float = 5.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns something true; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def events_in_log(server: Server, database: Database) -> list[tuple[str, bytes, dict[str, str]]]:
    """Every event a server appended to its embedded log: (topic, data, attributes)."""
    from sqlalchemy import select

    from ironcore.registry.store.schema import events

    async def read() -> list[tuple[str, bytes, dict[str, str]]]:
        url = (
            database.url
            if database.kind == "postgresql"
            else f"sqlite:///{server.data_dir / 'ironcore.db'}"
        )
        store = await Store.open(url, database.schema)
        async with store.engine.connect() as conn:
            rows = (await conn.execute(select(events).order_by(events.c.pk))).all()
        await store.close()
        return [(r.topic, bytes(r.data), dict(r.attributes)) for r in rows]

    return asyncio.run(read())
