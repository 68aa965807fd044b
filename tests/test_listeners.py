"""A flood of sockets on one port cannot take the process down: the open-file limit is raised
at start, HTTP clients that do not finish their request are closed, every listener holds a
bounded number of connections, and what is refused is counted and logged (a few lines, not one
per connection).

The server runs with a lowered RLIMIT_NOFILE (soft 256, hard 512), so a few hundred sockets
make the flood: raised to 512, the budget is 64 files in reserve, 44 connections for the admin
port and 404 for MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from ironcore.bridge.proxy_protocol import Address
from ironcore.runtime.http import Limits, http_server
from ironcore.runtime.process import Budget
from ironcore.settings import Settings
from tests.bridge.devices import admin, create_device, create_registry, new_key, online
from tests.bridge.test_proxy_protocol import header as proxy_header
from tests.conftest import Server, free_port, start_server, stop_server, wait_for

OPEN_FILES = (256, 512)
HTTP_CAP = 44
# More sockets than the server may open files: without caps, the process would have none left.
FLOOD = 600
REG = "reg-flood"


@pytest.fixture
def flooded(tmp_path: Path) -> Iterator[Server]:
    timeouts = ["--http-header-timeout", "2", "--http-body-timeout", "2"]
    server = start_server(tmp_path / "data", None, timeouts, open_files=OPEN_FILES)
    yield server
    stop_server(server)


def refused(server: Server, listener: str, reason: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    pattern = (
        rf'^ironcore_connections_refused_total\{{listener="{listener}",reason="{reason}"\}} (\S+)$'
    )
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def is_closed(sock: socket.socket) -> bool:
    """Whether the server closed (or reset) `sock`; False while it is still open."""
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_a_flood_on_the_admin_port_is_shed_and_the_rest_keeps_serving(flooded: Server) -> None:
    server = flooded
    log = server.log.read_text()
    assert "raised the open-file limit from 256 to 512" in log
    assert f"at most {HTTP_CAP} per HTTP listener and 404 for MQTT, 64 files kept" in log
    create_registry(server, REG)
    key = new_key()
    create_device(server, REG, "dev", key)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * FLOOD:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * FLOOD), hard))
    address = ("127.0.0.1", server.port)
    flood: list[socket.socket] = []
    with contextlib.ExitStack() as stack:
        # Idle sockets, half a request head, and a head whose body stops after 10 bytes, held
        # open by the client.
        for n in range(FLOOD):
            sock = stack.enter_context(socket.create_connection(address, timeout=5))
            if n % 3 == 1:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            elif n % 3 == 2:
                sock.sendall(
                    b"POST /v1/projects/p/locations/l/registries HTTP/1.1\r\nHost: x\r\n"
                    b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"id": "x'
                )
            flood.append(sock)

        # While the flood is held: an API call and an MQTT CONNECT on fresh connections.
        with admin(server) as api:
            response = api.get(f"/registries/{REG}/devices/dev")
            assert response.status_code == 200, response.text
        device = online(server, REG, "dev", key)
        device.close()

        # The oldest connections waiting on their clients made room for the new ones; the
        # rest are closed once their head or body is overdue.
        wait_for(lambda: all(is_closed(sock) for sock in flood), timeout=20, what="flood closed")

    evicted = refused(server, "api", "evicted")
    assert evicted >= FLOOD - HTTP_CAP
    assert refused(server, "api", "header_timeout") >= 1
    assert refused(server, "api", "body_timeout") >= 1
    lines = [
        line for line in server.log.read_text().splitlines() if "api: closed or refused" in line
    ]
    assert any("(evicted)" in line for line in lines)
    assert len([line for line in lines if "(evicted)" in line]) <= 3 < evicted
    assert server.process.poll() is None


def test_mqtt_connections_past_the_cap_are_refused_and_counted(tmp_path: Path) -> None:
    plain = free_port()
    server = start_server(
        tmp_path / "data",
        None,
        ["--insecure-mqtt-port", str(plain), "--mqtt-max-connections", "5"],
        open_files=OPEN_FILES,
    )
    try:
        assert "at most 44 per HTTP listener and 5 for MQTT" in server.log.read_text()
        with contextlib.ExitStack() as stack:
            held = [
                stack.enter_context(socket.create_connection(("127.0.0.1", plain), timeout=5))
                for _ in range(5)
            ]
            extra = stack.enter_context(socket.create_connection(("127.0.0.1", plain), timeout=5))
            wait_for(lambda: is_closed(extra), what="the connection past the cap reset")
            assert not any(is_closed(sock) for sock in held)
        assert wait_for(lambda: refused(server, "mqtt", "full"), what="refusal counted") == 1
        assert "MQTT: refused a connection" in server.log.read_text()
    finally:
        stop_server(server)


@given(open_files=st.integers(128, 10_000_000), http_listeners=st.integers(0, 4))
def test_derived_caps_leave_the_reserve(open_files: int, http_listeners: int) -> None:
    budget = Budget.of(Settings(data_dir=Path("unused")), open_files, http_listeners)
    assert budget.reserve >= 64
    assert budget.http >= 1 and budget.mqtt >= 1
    assert budget.http * http_listeners + budget.mqtt <= open_files - budget.reserve
    assert not budget.overcommitted


def test_caps_set_beyond_the_limit_are_flagged() -> None:
    settings = Settings(data_dir=Path("unused"), http_max_connections=600, mqtt_max_connections=1)
    assert Budget.of(settings, 1024, 2).overcommitted
    assert not Budget.of(settings, 1024, 1).overcommitted


class SlowApp:
    """Reads the whole body and answers its size; on `/slow`, says it has the request (on
    `arrived`) and waits a moment first."""

    def __init__(self) -> None:
        self.arrived: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        if scope["path"] == "/slow":
            self.arrived.put_nowait(None)
            await asyncio.sleep(3)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})


@contextlib.asynccontextmanager
async def guarded(app: SlowApp, name: str, limits: Limits) -> AsyncIterator[int]:
    """A guarded HTTP server over `app`, in this process, on a socket already listening;
    yields its port."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = http_server(app, "127.0.0.1", port, name, limits, idle_timeout=5, drain=1)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield port
    finally:
        server.stop()
        await serving
        sock.close()


def counted(listener: str, reason: str) -> float:
    labels = {"listener": listener, "reason": reason}
    return REGISTRY.get_sample_value("ironcore_connections_refused_total", labels) or 0.0


async def test_a_port_whose_connections_all_await_answers_refuses_with_503() -> None:
    app = SlowApp()
    async with guarded(app, "full-test", Limits(2, 10, 10, 1024)) as port:
        busy = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _, writer in busy:
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
        for _ in busy:
            await asyncio.wait_for(app.arrived.get(), 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 1" in answer
        writer.close()
        for reader, writer in busy:
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).startswith(
                b"HTTP/1.1 200"
            )
            writer.close()
    assert counted("full-test", "full") == 1


async def test_a_body_that_trickles_below_the_floor_is_cut_and_a_slow_one_above_it_is_not() -> None:
    limits = Limits(10, 10, 2, 1000)
    async with guarded(SlowApp(), "rate-test", limits) as port:
        # 100 bytes every 0.2 s (500 B/s, never pausing 2 s): under the floor, cut.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        closed = False
        for _ in range(100):
            writer.write(b"x" * 100)
            try:
                await writer.drain()
                closed = await asyncio.wait_for(reader.read(1), 0.2) == b""
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
            if closed:
                break
        assert closed
        writer.close()
        assert counted("rate-test", "body_timeout") == 1

        # 1,000 bytes every 0.2 s (5,000 B/s): served.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        for _ in range(5):
            writer.write(b"y" * 1000)
            await writer.drain()
            await asyncio.sleep(0.2)
        answer = await asyncio.wait_for(reader.readuntil(b"5000"), 10)
        assert answer.startswith(b"HTTP/1.1 200")
        writer.close()
    assert counted("rate-test", "body_timeout") == 1


def test_the_mqtt_cap_counts_connections_behind_a_proxy_header_until_they_end(
    tmp_path: Path,
) -> None:
    """A connection refused for its PROXY header and one handed on to MQTT both give their
    place back when they end: otherwise a balancer's bad or short-lived connections would use up
    the cap for good."""
    proxied = ["--mqtt-proxy-protocol", "--trusted-proxies", "127.0.0.1"]
    server = start_server(tmp_path / "data", None, [*proxied, "--mqtt-max-connections", "2"])
    good = proxy_header(Address("203.0.113.7", 4242), Address("198.51.100.2", 8883))
    try:
        for _ in range(3):  # 6 connections through a cap of 2, each ending before the next
            with socket.create_connection(("127.0.0.1", server.mqtt_port), timeout=5) as bad:
                bad.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not a PROXY header: closed by ironcore
                wait_for(lambda: is_closed(bad), what="the headerless connection closed")
            with socket.create_connection(("127.0.0.1", server.mqtt_port), timeout=5) as handed:
                handed.sendall(good + b"\x00" * 64)  # handed on, then not TLS: closed by ironcore
                wait_for(lambda: is_closed(handed), what="the handed-on connection closed")
        with contextlib.ExitStack() as stack:
            held = [
                stack.enter_context(socket.create_connection(("127.0.0.1", server.mqtt_port)))
                for _ in range(2)
            ]
            for sock in held:
                sock.sendall(good)
            extra = stack.enter_context(socket.create_connection(("127.0.0.1", server.mqtt_port)))
            wait_for(lambda: is_closed(extra), what="the connection past the cap reset")
            assert not any(is_closed(sock) for sock in held)
        assert wait_for(lambda: refused(server, "mqtt", "full"), what="refusal counted") == 1
    finally:
        stop_server(server)
