"""The sans-IO PROXY protocol v2 parser: round trips, a clear error for each malformed field,
and any bytes at all give a header, None or `ProxyHeaderError`."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ironcore.access.forwarded import TrustedProxies
from ironcore.bridge.mqtt import proxied as proxied_module
from ironcore.bridge.mqtt.codec import Connect, encode
from ironcore.bridge.mqtt.proxied import ProxiedConnection
from ironcore.bridge.proxy_protocol import (
    MAX_LENGTH,
    SIGNATURE,
    Address,
    ProxyHeader,
    ProxyHeaderError,
    parse,
)
from tests.conftest import Server, start_server, stop_server, wait_for


def header(
    source: Address | None = None,
    destination: Address | None = None,
    *,
    version_command: int = 0x21,
    family_transport: int | None = None,
    tlvs: bytes = b"",
    length: int | None = None,
) -> bytes:
    """A v2 header as HAProxy's send-proxy-v2 writes it (LOCAL when no source is given)."""
    if source is None:
        body = b""
        family_transport = 0x00 if family_transport is None else family_transport
        version_command = 0x20 if version_command == 0x21 else version_command
    else:
        assert destination is not None
        ip = ipaddress.ip_address(source.host)
        six = ip.version == 6
        body = struct.pack(
            "!16s16sHH" if six else "!4s4sHH",
            ip.packed,
            ipaddress.ip_address(destination.host).packed,
            source.port,
            destination.port,
        )
        if family_transport is None:
            family_transport = 0x21 if six else 0x11
    body += tlvs
    size = len(body) if length is None else length
    return SIGNATURE + struct.pack("!BBH", version_command, family_transport, size) + body


ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)),
    ports,
    ports,
    st.binary(max_size=200),
    st.binary(max_size=64),
)
def test_proxy_headers_round_trip(
    hosts: tuple[str, str], source_port: int, dest_port: int, tlvs: bytes, after: bytes
) -> None:
    source, destination = Address(hosts[0], source_port), Address(hosts[1], dest_port)
    wire = header(source, destination, tlvs=tlvs)
    assert parse(wire + after) == ProxyHeader(source, destination, len(wire))
    # Every shorter prefix is a valid beginning: more bytes are needed, nothing is wrong yet.
    for cut in range(len(wire)):
        assert parse(wire[:cut]) is None


@given(st.binary(max_size=300))
def test_any_bytes_give_a_header_none_or_the_typed_error(data: bytes) -> None:
    try:
        result = parse(data)
    except ProxyHeaderError as error:
        assert str(error)
        return
    assert result is None or 16 <= result.length <= len(data)


@given(st.binary(min_size=4, max_size=300))
def test_any_bytes_after_the_signature_give_a_header_none_or_the_typed_error(data: bytes) -> None:
    try:
        result = parse(SIGNATURE + data)
    except ProxyHeaderError as error:
        assert str(error)
        return
    assert result is None or result.length <= len(SIGNATURE) + len(data)


def test_a_local_header_keeps_the_sockets_own_address() -> None:
    wire = header()
    assert parse(wire + b"\x16\x03\x01") == ProxyHeader(None, None, 16)


def test_an_unspecified_family_keeps_the_sockets_own_address() -> None:
    wire = SIGNATURE + bytes([0x21, 0x00, 0, 4]) + b"abcd"
    assert parse(wire) == ProxyHeader(None, None, 20)


def test_haproxys_bytes() -> None:
    # What HAProxy 2.6 sent for a client at 127.0.0.1:51000 connecting to 127.0.0.1:8883.
    wire = bytes.fromhex("0d0a0d0a000d0a515549540a 2111000c 7f000001 7f000001 c738 22b3")
    assert parse(wire) == ProxyHeader(
        Address("127.0.0.1", 51000), Address("127.0.0.1", 8883), len(wire)
    )
    assert str(Address("::1", 5)) == "[::1]:5"


IPV4 = Address("192.0.2.1", 40000), Address("198.51.100.2", 8883)
# The balancer of the in-process listeners: the tests' own connections.
LOOPBACK = TrustedProxies(["127.0.0.1"])


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"\x16\x03\x01\x02\x00\x01", "no PROXY protocol v2 signature: the client spoke first"),
        (b"\x10\x2a\x00\x04MQTT", "no PROXY protocol v2 signature"),
        (SIGNATURE[:5] + b"X", "no PROXY protocol v2 signature"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 8883\r\n", "v1 (text) header"),
        (header(*IPV4, version_command=0x11), "PROXY protocol version 1, not 2"),
        (header(*IPV4, version_command=0xF1), "PROXY protocol version 15, not 2"),
        (header(*IPV4, version_command=0x22), "unknown PROXY protocol command 2"),
        (header(*IPV4, family_transport=0x41), "unknown address family 4"),
        (header(*IPV4, family_transport=0x13), "or transport 3"),
        (header(*IPV4, family_transport=0x12), "names not TCP"),
        (header(*IPV4, family_transport=0x31), "names a UNIX socket"),
        (header(*IPV4, length=MAX_LENGTH + 1), f"of {MAX_LENGTH + 1} bytes (at most {MAX_LENGTH})"),
        (header(*IPV4, family_transport=0x21), "cannot hold its 36 bytes of addresses"),
        (SIGNATURE + bytes([0x21, 0x11, 0, 8]) + bytes(8), "cannot hold its 12 bytes"),
    ],
)
def test_malformed_headers_are_named(wire: bytes, message: str) -> None:
    with pytest.raises(ProxyHeaderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(wire)


def test_an_overlong_header_is_refused_before_its_body_arrives() -> None:
    with pytest.raises(ProxyHeaderError, match="at most"):
        parse(SIGNATURE + bytes([0x21, 0x11, 0xFF, 0xFF]))


def test_a_v1_prefix_waits_for_more() -> None:
    assert parse(b"PRO") is None


# The listener, in a real server behind a (hand-written) balancer header.


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server whose MQTT port expects a PROXY protocol header first, in both of its
    processes."""
    data_dir = tmp_path_factory.mktemp("proxied") / "data"
    proxied = ["--mqtt-proxy-protocol", "--trusted-proxies", "127.0.0.1"]
    running = start_server(data_dir, None, [*proxied, "--mqtt-workers", "2"])
    yield running
    stop_server(running)


def refused_connect(server: Server, before: bytes) -> tuple[int, int]:
    """Send `before`, then a TLS handshake and a CONNECT for a registry that does not exist:
    (the CONNACK code, this socket's local port)."""
    context = ssl.create_default_context(cafile=str(server.ca_file))
    context.check_hostname = False
    with socket.create_connection(("127.0.0.1", server.mqtt_port), timeout=10) as raw:
        raw.sendall(before)
        port = raw.getsockname()[1]
        with context.wrap_socket(raw) as tls:
            client = "projects/p/locations/l/registries/nowhere/devices/d"
            tls.sendall(encode(Connect("MQTT", 4, True, 60, client, "unused", b"not a jwt")))
            answer = tls.recv(4)
            return answer[3], port


def test_the_header_names_the_client_in_the_log(proxied: Server) -> None:
    client = Address("203.0.113.7", 4242)
    code, _ = refused_connect(proxied, header(client, Address("198.51.100.2", 8883)))
    assert code in (4, 5)  # bad user name or password / not authorized
    wait_for(
        lambda: (
            "'projects/p/locations/l/registries/nowhere/devices/d' from 203.0.113.7:4242"
            in proxied.log.read_text()
        ),
        what="the refusal logged with the client's address",
    )


def test_a_local_header_keeps_the_balancers_address(proxied: Server) -> None:
    code, port = refused_connect(proxied, header())
    assert code in (4, 5)
    wait_for(
        lambda: f"devices/d' from 127.0.0.1:{port}:" in proxied.log.read_text(),
        what="the refusal logged with the socket's own address",
    )


def logged(server: Server, line: str) -> None:
    wait_for(lambda: line in server.log.read_text(), what=f"the log line {line!r}")


def test_a_connection_without_a_header_is_closed_and_logged(proxied: Server) -> None:
    """By the primary and by the worker: the kernel spreads connections over both, and the
    worker's listeners are the primary's, flag included."""
    context = ssl.create_default_context(cafile=str(proxied.ca_file))
    context.check_hostname = False
    expected = ": no PROXY protocol v2 signature: the client spoke first (first bytes 16 03 01"

    def refused_by() -> set[str]:
        lines = [line for line in proxied.log.read_text().splitlines() if expected in line]
        return {"worker" if "[worker 1]" in line else "primary" for line in lines}

    for _ in range(40):
        with socket.create_connection(("127.0.0.1", proxied.mqtt_port), timeout=10) as raw:
            port = raw.getsockname()[1]
            with pytest.raises((ssl.SSLError, OSError)):
                context.wrap_socket(raw)
        logged(proxied, f"closed the MQTT connection from 127.0.0.1:{port}{expected}")
        if refused_by() == {"worker", "primary"}:
            return
    raise AssertionError(f"only the {refused_by()} process refused connections")


async def test_a_header_that_never_completes_is_dropped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(proxied_module, "HEADER_SECONDS", 0.2)
    handed: list[Address | None] = []
    arrived = asyncio.Event()

    def app(peer: Address | None) -> asyncio.Protocol:
        handed.append(peer)
        arrived.set()
        return asyncio.Protocol()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ProxiedConnection(app, LOOPBACK), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(header(*IPV4)[:10])
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(header(*IPV4) + b"rest")
        await writer.drain()
        await asyncio.wait_for(arrived.wait(), 10)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert "no complete PROXY protocol header within 0.2 s" in caplog.text
    assert handed == [IPV4[0]]


async def test_a_close_before_the_header_is_logged_unless_nothing_was_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ProxiedConnection(lambda _: asyncio.Protocol(), LOOPBACK), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    try:
        for sent in (b"", header(*IPV4)[:20]):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(sent)
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
    closed = [r.getMessage() for r in caplog.records if "closed the MQTT" in r.getMessage()]
    assert len(closed) == 1, closed  # a TCP health check (nothing sent) is not logged
    assert closed[0].endswith("closed before its PROXY protocol header was complete")
