"""--trusted-proxies (`access.forwarded`): the setting's parsing, the rightmost-untrusted-hop
rule (the same as uvicorn's for REST), and real servers: X-Forwarded-For is believed from the
trusted proxies only, on REST and in gRPC metadata, for the back-off and the audit log alike;
the MQTT bridge reads PROXY headers only from them. Behind a real HAProxy:
tests/ops/test_client_addresses.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from uvicorn.middleware.proxy_headers import _TrustedHosts

from ironcore.access.forwarded import TrustedProxies, parse_trusted_proxies
from ironcore.bridge.proxy_protocol import Address
from tests.api.test_auth_backoff import MOST, REGISTRIES, from_address, grpc_code, secure_channel
from tests.bridge.test_proxy_protocol import header, logged
from tests.conftest import (
    Database,
    Server,
    start_grpc_server,
    start_server,
    stop_server,
    wait_for,
)
from tests.ops.test_client_addresses import audit_log
from tests.test_listeners import is_closed
from tests.test_ops import serve_with_bad_flag

PROXIES = ("10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32")


def test_the_setting_is_normalized() -> None:
    assert parse_trusted_proxies("") == ()
    assert parse_trusted_proxies(" 10.0.0.0/8, 2001:DB8::/32 ,192.0.2.7,,10.0.0.0/8") == PROXIES


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("10.0.0.300", "'10.0.0.300' is not an IP address or a CIDR network"),
        ("10.0.0.1/8", "'10.0.0.1/8' is not an IP address or a CIDR network (10.0.0.1/8 has"),
        ("*", "'*' is not"),
        ("10.0.0.1, proxy.example", "'proxy.example' is not"),
    ],
)
def test_a_bad_entry_is_named(text: str, named: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_trusted_proxies(text)
    assert str(caught.value).startswith(named)
    assert "separated by commas" in str(caught.value)


def test_serve_refuses_a_bad_entry(tmp_path: Path) -> None:
    done = serve_with_bad_flag(tmp_path, "--trusted-proxies", "10.0.0.1,nowhere")
    assert done.returncode != 0
    said = " ".join(done.stderr.split())
    assert "--trusted-proxies" in said and "'nowhere' is not an IP address" in said
    assert "Traceback" not in done.stderr


def test_a_proxy_protocol_listener_without_trusted_proxies_does_not_start(
    tmp_path: Path,
) -> None:
    done = serve_with_bad_flag(tmp_path, "--mqtt-proxy-protocol")
    assert done.returncode != 0
    assert "--mqtt-proxy-protocol needs --trusted-proxies" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        # Not a proxy: its own address, whatever it says.
        ("198.51.100.1", ["203.0.113.9"], "198.51.100.1"),
        # A proxy without a header: itself (its health check, a call of its own).
        ("10.0.0.5", [], "10.0.0.5"),
        # What the client sent comes first; the proxy appends the client it saw.
        ("10.0.0.5", ["203.0.113.9, 198.51.100.1"], "198.51.100.1"),
        ("10.0.0.5", ["203.0.113.9", "198.51.100.1"], "198.51.100.1"),
        # Through two proxies: the hop before them.
        ("10.0.0.5", ["203.0.113.9, 198.51.100.1, 2001:db8::7"], "198.51.100.1"),
        # Ports some proxies add.
        ("10.0.0.5", ["[2001:db9::1]:4431"], "2001:db9::1"),
        ("10.0.0.5", ["198.51.100.1:5000"], "198.51.100.1"),
        # Every hop a proxy: the first, a proxy's own call.
        ("10.0.0.5", ["10.0.0.6, 192.0.2.7"], "10.0.0.6"),
        # A proxy that names no one: itself.
        ("10.0.0.5", ["198.51.100.1, "], "10.0.0.5"),
        ("10.0.0.5", ["unknown"], "unknown"),
    ],
)
def test_the_client_is_the_rightmost_hop_not_a_proxy(
    peer: str, forwarded: list[str], client: str
) -> None:
    assert TrustedProxies(PROXIES).client(peer, forwarded) == client


def test_nobody_is_trusted_by_default() -> None:
    nobody = TrustedProxies()
    assert not nobody
    assert "127.0.0.1" not in nobody
    assert nobody.client("127.0.0.1", ["203.0.113.9"]) == "127.0.0.1"


proxies = st.sampled_from(["10.1.2.3", "10.200.0.1", "2001:db8::5", "192.0.2.7"])
clients = st.one_of(st.ip_addresses().map(str), st.sampled_from(["unknown", "", "x:y:z"]))
hops = st.one_of(
    clients,
    proxies,
    st.tuples(st.ip_addresses(v=4), st.integers(1, 65535)).map(lambda a: f"{a[0]}:{a[1]}"),
    st.tuples(st.ip_addresses(v=6), st.integers(1, 65535)).map(lambda a: f"[{a[0]}]:{a[1]}"),
)


@given(st.lists(clients | proxies, max_size=5), st.ip_addresses(v=4).map(str), proxies)
def test_what_a_client_sends_cannot_change_its_address(
    sent: list[str], client: str, proxy: str
) -> None:
    """Whatever list the client sends, the proxy it reached appends the client's address."""
    trusted = TrustedProxies(PROXIES)
    if client in trusted:
        return  # a proxy's own call: the rule for it is the case above
    assert trusted.client(proxy, [", ".join(sent), client]) == client


@given(st.one_of(proxies, st.ip_addresses().map(str)), st.lists(hops, max_size=6))
def test_the_grpc_rule_is_uvicorns_rest_rule(peer: str, forwarded: list[str]) -> None:
    trusted = TrustedProxies(PROXIES)
    uvicorn = _TrustedHosts(list(PROXIES))
    if peer not in uvicorn or not forwarded:
        expected = peer
    else:
        host, _ = uvicorn.get_trusted_client_address(", ".join(forwarded))
        expected = host or peer  # uvicorn keeps the peer for an empty host
    assert trusted.client(peer, [", ".join(forwarded)] if forwarded else []) == expected


# Real servers.


@pytest.fixture
def behind_loopback(tmp_path: Path, database: Database, local_ca: Path) -> Iterator[Server]:
    """A server whose proxy is 127.0.0.1 (its REST and gRPC clients, here, say what they are
    forwarding for); every other loopback address is a client of its own."""
    running = start_grpc_server(
        tmp_path / "data",
        database,
        local_ca,
        ["--trusted-proxies", "127.0.0.1", "--mqtt-proxy-protocol"],
    )
    yield running
    stop_server(running)


def refusals(server: Server, wire: str) -> set[str]:
    """The addresses of the refused calls on `wire` in the audit log."""
    return {
        e["clientAddress"]
        for e in audit_log(server)
        if e["wire"] == wire and e["status"] in ("UNAUTHENTICATED", "RESOURCE_EXHAUSTED")
    }


def created_from(server: Server, registry: str) -> str:
    [entry] = [e for e in audit_log(server) if e["request"].get("body", {}).get("id") == registry]
    address: str = entry["clientAddress"]
    return address


@pytest.mark.databases("sqlite")
def test_rest_believes_the_trusted_proxy_only(behind_loopback: Server) -> None:
    valid = {"Authorization": f"Bearer {behind_loopback.token}"}

    def create(address: str, registry: str, forwarded: str) -> None:
        with from_address(behind_loopback, address) as client:
            answer = client.post(
                REGISTRIES,
                json={"id": registry},
                headers={**valid, "X-Forwarded-For": forwarded},
            )
        assert answer.status_code == 200, answer.text

    create("127.0.0.1", "reg-proxied", "203.0.113.9, 198.51.100.4")
    create("127.0.0.2", "reg-direct", "198.51.100.4")
    assert created_from(behind_loopback, "reg-proxied") == "198.51.100.4"
    assert created_from(behind_loopback, "reg-direct") == "127.0.0.2"


@pytest.mark.databases("sqlite")
def test_grpc_backs_off_and_audits_the_forwarded_client(behind_loopback: Server) -> None:
    storm = ("x-forwarded-for", "198.51.100.7")
    other = ("x-forwarded-for", "203.0.113.9, 198.51.100.8")
    with secure_channel(behind_loopback) as channel:
        codes: list[grpc.StatusCode] = []
        while grpc.StatusCode.RESOURCE_EXHAUSTED not in codes and len(codes) < MOST:
            codes.append(grpc_code(channel, "not-a-token", storm))
            # Through the same proxy for another client, and the proxy's own calls: served.
            assert grpc_code(channel, behind_loopback.token, other) == grpc.StatusCode.OK
            assert grpc_code(channel, behind_loopback.token) == grpc.StatusCode.OK
        assert codes[:6] == [grpc.StatusCode.UNAUTHENTICATED] * 6, codes
        assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The storming client, whatever token it now brings.
        assert grpc_code(channel, behind_loopback.token, storm) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    assert refusals(behind_loopback, "grpc") == {"198.51.100.7"}
    # Not the proxy's address (REST shares the back-off): it is still served.
    valid = {"Authorization": f"Bearer {behind_loopback.token}"}
    with from_address(behind_loopback, "127.0.0.1") as proxy:
        assert proxy.get(REGISTRIES, headers=valid).status_code == 200


@pytest.mark.databases("sqlite")
def test_mqtt_reads_a_proxy_header_from_a_trusted_proxy_only(behind_loopback: Server) -> None:
    """A peer that is not a trusted proxy is closed before its header is read; the proxy's
    own connections are not (tests/bridge/test_proxy_protocol.py serves them)."""
    forged = header(Address("203.0.113.7", 4242), Address("198.51.100.2", 8883))
    with socket.create_connection(
        ("127.0.0.1", behind_loopback.mqtt_port), timeout=10, source_address=("127.0.0.2", 0)
    ) as raw:
        port = raw.getsockname()[1]
        raw.sendall(forged)
        wait_for(lambda: is_closed(raw), what="the connection closed by the server")
    with socket.create_connection(("127.0.0.1", behind_loopback.mqtt_port), timeout=10) as ok:
        ok.sendall(forged)  # then the TLS handshake the server now waits for
        assert not is_closed(ok)
    logged(
        behind_loopback,
        f"closed the MQTT connection from 127.0.0.2:{port}: "
        "a PROXY protocol header is read only from --trusted-proxies",
    )
    assert "203.0.113.7" not in behind_loopback.log.read_text()


@pytest.mark.databases("sqlite")
def test_uvicorns_own_variable_trusts_nobody(
    tmp_path: Path, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FORWARDED_ALLOW_IPS, the workaround of earlier versions, is ignored and said to be."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "127.0.0.1")
    server = start_server(tmp_path / "data", database)
    try:
        answer = httpx.post(
            f"{server.url}{REGISTRIES}",
            json={"id": "reg-claimed"},
            headers={"Authorization": f"Bearer {server.token}", "X-Forwarded-For": "1.2.3.4"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert created_from(server, "reg-claimed") == "127.0.0.1"
    finally:
        stop_server(server)
    assert "FORWARDED_ALLOW_IPS is ignored" in server.log.read_text()
