"""The gRPC API behind a real HAProxy in HTTP mode (HTTP/2 both ways, TLS to the server,
`option forwardfor`), connecting from HAPROXY_SOURCE, which the server trusts: the back-off
and the audit log see each client's own address, here 127.0.0.1 and ::1 (grpcio binds no
other source address; the two loopbacks are two clients of the same HAProxy)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.cloud import iot_v1

from tests.api.test_auth_backoff import MOST, grpc_code
from tests.conftest import (
    Database,
    Server,
    free_port,
    service_up,
    start_grpc_server,
    stop_server,
    wait_for,
)
from tests.ops.cluster import HAPROXY_SOURCE, launch_haproxy, stop_haproxy
from tests.ops.test_client_addresses import audit_log

CREATE = "/google.cloud.iot.v1.DeviceManager/CreateDeviceRegistry"
PARENT = "projects/p1/locations/us-central1"


def config(port: int, server: Server) -> str:
    """HTTP/2 in clear from the clients (h2c), over TLS verified against the server's CA."""
    tls = f"alpn h2 ssl verify required ca-file {server.ca_file}"
    return f"""
global
    maxconn 200

defaults
    mode http
    source {HAPROXY_SOURCE}
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend grpc
    bind 127.0.0.1:{port} proto h2
    bind [::1]:{port} proto h2
    option forwardfor
    default_backend ironcore_grpc

backend ironcore_grpc
    server ironcore1 127.0.0.1:{server.grpc_port} {tls}
"""


@pytest.fixture
def front_port(tmp_path: Path, database: Database, local_ca: Path) -> Iterator[tuple[Server, int]]:
    """A server trusting HAProxy, and HAProxy's gRPC port in front of it."""
    server = start_grpc_server(
        tmp_path / "data", database, local_ca, ["--trusted-proxies", HAPROXY_SOURCE]
    )
    port = free_port()
    haproxy = launch_haproxy(
        config(port, server), tmp_path / "haproxy.cfg", tmp_path / "haproxy.log"
    )
    try:
        wait_for(lambda: service_up("127.0.0.1", port), 20, "HAProxy's gRPC port")
        yield server, port
    finally:
        stop_haproxy(haproxy)
        stop_server(server)


def create_registry(channel: grpc.Channel, token: str, registry: str) -> None:
    stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(CREATE)
    request = iot_v1.CreateDeviceRegistryRequest(
        parent=PARENT, device_registry=iot_v1.DeviceRegistry(id=registry)
    )
    stub(
        iot_v1.CreateDeviceRegistryRequest.serialize(request),
        metadata=(("authorization", f"Bearer {token}"),),
        timeout=10,
    )


@pytest.mark.databases("sqlite")
def test_grpc_clients_through_haproxy_are_slowed_and_audited_as_themselves(
    front_port: tuple[Server, int],
) -> None:
    server, port = front_port
    with (
        grpc.insecure_channel(f"127.0.0.1:{port}") as storm,
        grpc.insecure_channel(f"[::1]:{port}") as other,
    ):
        codes: list[grpc.StatusCode] = []
        while grpc.StatusCode.RESOURCE_EXHAUSTED not in codes and len(codes) < MOST:
            codes.append(grpc_code(storm, "not-a-token"))
            # Another client of the same HAProxy: never slowed.
            assert grpc_code(other, server.token) == grpc.StatusCode.OK
        assert codes[:6] == [grpc.StatusCode.UNAUTHENTICATED] * 6, codes
        assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED, codes
        # The storming client is refused whatever it sends, a valid token and metadata
        # naming the other client included (HAProxy appends the address it saw).
        assert grpc_code(storm, server.token) == grpc.StatusCode.RESOURCE_EXHAUSTED
        forged = grpc_code(storm, server.token, ("x-forwarded-for", "::1"))
        assert forged == grpc.StatusCode.RESOURCE_EXHAUSTED
        create_registry(other, server.token, "reg-through-haproxy")
    # Read from elsewhere: 127.0.0.1 is backing off on REST too.
    entries = [e for e in audit_log(server, "127.0.0.2") if e["wire"] == "grpc"]
    refusals = {e["clientAddress"] for e in entries if e["status"] != "OK"}
    assert refusals == {"127.0.0.1"}
    [created] = [e for e in entries if e["method"] == "CreateDeviceRegistry"]
    assert created["clientAddress"] == "::1"
