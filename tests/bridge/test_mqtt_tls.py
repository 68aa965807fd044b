"""The MQTT bridge's own TLS layer (`bridge/mqtt/tls.py`) over real loopback sockets, against
Python's client-side TLS: what the application sees, and what happens to clients that never
finish a handshake or speak something else."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ironcore.bridge import certificates
from ironcore.bridge.mqtt import tls
from ironcore.bridge.mqtt.tls import TlsConnection

TIMEOUT = 10.0


class Echo(asyncio.Protocol):
    """An application that sends back what it receives, and records its life."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, TlsConnection)
        self.transport = transport  # type: ignore[assignment]
        self.log.append("made")

    def data_received(self, data: bytes) -> None:
        self.received += data
        assert self.transport is not None
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.log.append("eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.log.append("lost")
        if not self.lost.done():
            self.lost.set_result(None)


@dataclass
class Server:
    port: int
    ca_file: Path
    apps: list[Echo] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    cert, key = certificates.local_certificates(tmp_path / "tls", [])
    context = certificates.server_context(cert, key)
    holder = Server(0, tmp_path / "tls" / "ca.crt")

    def app() -> Echo:
        echo = Echo(holder.log)
        holder.apps.append(echo)
        return echo

    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: TlsConnection(context, app), "127.0.0.1", 0)
    holder.port = listener.sockets[0].getsockname()[1]
    try:
        yield holder
    finally:
        listener.close()
        await listener.wait_closed()


async def open_tls(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", server.port, ssl=server.client_context(), server_hostname="localhost"
        ),
        TIMEOUT,
    )


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), TIMEOUT)


async def test_data_both_ways_including_records_larger_than_one(server: Server) -> None:
    reader, writer = await open_tls(server)
    # 300 KB crosses many TLS records and more than the shared read buffer in one go.
    payload = bytes(range(256)) * 1200
    writer.write(payload)
    await writer.drain()
    echoed = await asyncio.wait_for(reader.readexactly(len(payload)), TIMEOUT)
    assert echoed == payload
    assert len(server.apps) == 1 and bytes(server.apps[0].received) == payload
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(server.apps[0].lost, TIMEOUT)
    assert server.log[0] == "made" and server.log[-1] == "lost"


async def test_two_connections_never_see_each_others_bytes(server: Server) -> None:
    first, second = await open_tls(server), await open_tls(server)
    for round_ in range(20):
        first[1].write(b"A" * (1000 + round_))
        second[1].write(b"B" * (2000 + round_))
    await first[1].drain()
    await second[1].drain()
    got_a = await asyncio.wait_for(first[0].readexactly(sum(1000 + r for r in range(20))), TIMEOUT)
    got_b = await asyncio.wait_for(second[0].readexactly(sum(2000 + r for r in range(20))), TIMEOUT)
    assert set(got_a) == {ord("A")} and set(got_b) == {ord("B")}
    for _, writer in (first, second):
        writer.close()


async def test_the_server_closing_sends_close_notify(server: Server) -> None:
    reader, writer = await open_tls(server)
    writer.write(b"hello")
    assert await asyncio.wait_for(reader.readexactly(5), TIMEOUT) == b"hello"
    app = server.apps[0]
    assert app.transport is not None
    app.transport.close()
    assert app.transport.is_closing()
    # A clean TLS end: the client reads EOF, not a truncation error.
    assert await read_until_closed(reader) == b""
    writer.close()


async def test_plain_mqtt_to_the_tls_port_is_dropped_without_an_application(
    server: Server,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
    answer = await read_until_closed(reader)
    # At most a TLS alert record (content type 21), never an MQTT answer.
    assert answer == b"" or answer[0] == 21
    assert server.apps == []
    writer.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_an_old_protocol_version_is_refused(server: Server) -> None:
    context = server.client_context()
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    # OpenSSL's default security level may refuse TLS 1.1 on the client side already; either
    # way no connection is made.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", server.port, ssl=context, server_hostname="localhost"
            ),
            TIMEOUT,
        )
    assert server.apps == []


async def test_a_stalled_handshake_is_cut_off(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls, "HANDSHAKE_SECONDS", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    # Half a ClientHello, then nothing.
    writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert await read_until_closed(reader) == b""
    assert server.apps == []
    writer.close()


async def test_a_client_that_hangs_up_mid_handshake_costs_nothing(server: Server) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"\x16\x03\x01")
    writer.close()
    await writer.wait_closed()
    reader, writer = await open_tls(server)
    writer.write(b"still here")
    assert await asyncio.wait_for(reader.readexactly(10), TIMEOUT) == b"still here"
    assert len(server.apps) == 1
    writer.close()
