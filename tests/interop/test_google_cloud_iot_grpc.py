"""What only gRPC has, with the official `google-cloud-iot==2.9.2` client on its default
transport against a real ironcore process over TLS (`--grpc-port`): answers and refusals the
same as REST's to the byte, requests no client library sends (undecodable bytes, unknown
methods), the port's start, stop and certificate reload. Every method of the v1 device manager
on both transports is in test_google_cloud_iot.py."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from google.api_core import exceptions
from google.cloud import iot_v1
from google.cloud.iot_v1.services.device_manager.transports.grpc import DeviceManagerGrpcTransport
from google.protobuf import field_mask_pb2, json_format
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ironcore.registry.store import Store
from tests.conftest import Database, Server, free_port, stop_server, wait_for
from tests.full_device import fill_in, full_device, unset_fields
from tests.interop.iot_clients import PARENT, client_for, own_parent, registry_with_topic

SERVICE = "/google.cloud.iot.v1.DeviceManager"


@pytest.fixture
def client(module_grpc_server: Server) -> Iterator[iot_v1.DeviceManagerClient]:
    """An owner's client on gRPC, to the module's server (each test in a project of its own)."""
    manager = client_for(module_grpc_server, module_grpc_server.token)
    assert isinstance(manager.transport, DeviceManagerGrpcTransport)
    yield manager
    manager.transport.close()


def test_get_device_answers_what_rest_answers(
    client: iot_v1.DeviceManagerClient, module_grpc_server: Server, module_database: Database
) -> None:
    """GetDevice over gRPC and over REST, for a device with every field set: the same message,
    byte for byte, whole and through a field mask, by string and by numeric id."""
    grpc_server, database = module_grpc_server, module_database
    registry = registry_with_topic(client, own_parent(), "reg-same")
    rest = httpx.Client(
        base_url=f"{grpc_server.url}/v1/",
        headers={"Authorization": f"Bearer {grpc_server.token}"},
    )
    created = rest.post(f"{registry}/devices", json=full_device("dev-full"))
    assert created.status_code == 200, created.text
    num_id = int(created.json()["numId"])

    async def bridges_write() -> None:
        url = (
            database.url
            if database.kind == "postgresql"
            else f"sqlite:///{grpc_server.data_dir / 'ironcore.db'}"
        )
        store = await Store.open(url, database.schema)
        await fill_in(store, num_id)
        await store.close()

    asyncio.run(bridges_write())
    paths = ["credentials", "last_heartbeat_time", "gateway_config.last_accessed_gateway_id"]
    for name in (f"{registry}/devices/dev-full", f"{registry}/devices/{num_id}"):
        for mask in ([], paths):
            query = {"fieldMask": ",".join(mask)} if mask else {}
            answer = rest.get(name, params=query)
            assert answer.status_code == 200, answer.text
            expected = json_format.ParseDict(answer.json(), iot_v1.Device.pb(iot_v1.Device()))
            got = iot_v1.Device.pb(
                client.get_device(
                    request={"name": name, "field_mask": field_mask_pb2.FieldMask(paths=mask)}
                )
            )
            assert got == expected
            assert got.SerializeToString(deterministic=True) == expected.SerializeToString(
                deterministic=True
            )
            if not mask:
                assert unset_fields(got) == ["last_error_status.details"]
    rest.close()


def test_refusals_say_what_rest_says(
    client: iot_v1.DeviceManagerClient, module_grpc_server: Server
) -> None:
    """The same refusal over gRPC and REST: the same message, the same field violations."""
    grpc_server = module_grpc_server
    parent = own_parent()
    registry = registry_with_topic(client, parent, "reg-same")
    with pytest.raises(exceptions.InvalidArgument) as over_grpc:
        client.create_device(parent=registry, device={"id": "-bad", "metadata": {"k": "v"}})
    rest = httpx.post(
        f"{grpc_server.url}/v1/{registry}/devices",
        json={"id": "-bad", "metadata": {"k": "v"}},
        headers={"Authorization": f"Bearer {grpc_server.token}"},
    ).json()["error"]
    assert over_grpc.value.message == rest["message"]
    [detail] = over_grpc.value.details
    assert isinstance(detail, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in detail.field_violations] == [
        (v["field"], v["description"]) for v in rest["details"][0]["fieldViolations"]
    ]

    # A value the proto carries but the rules refuse: a NUL in a string field.
    with pytest.raises(exceptions.InvalidArgument) as nul:
        client.create_device(parent=registry, device={"id": "nul", "metadata": {"k": "a\x00b"}})
    assert "metadata" in nul.value.message

    for bad_name in ("registries/x", f"{parent}/registries/reg-same/devices/", "projects/p"):
        with pytest.raises(exceptions.InvalidArgument) as named:
            client.get_device(name=bad_name)
        assert "is not of the form projects/P/locations/L/registries/R/devices/D" in str(
            named.value.message
        )
    with pytest.raises(exceptions.NotFound) as missing:
        client.get_device(name=f"{registry}/devices/nobody")
    rest_missing = httpx.get(
        f"{grpc_server.url}/v1/{registry}/devices/nobody",
        headers={"Authorization": f"Bearer {grpc_server.token}"},
    ).json()["error"]
    assert missing.value.message == rest_missing["message"]


def plain_channel(server: Server) -> grpc.Channel:
    """A plain gRPC channel to the server, for what no client library sends."""
    root = server.data_dir.joinpath("tls", "ca.crt").read_bytes()
    return grpc.secure_channel(f"127.0.0.1:{server.grpc_port}", grpc.ssl_channel_credentials(root))


@pytest.fixture
def channel(module_grpc_server: Server) -> Iterator[grpc.Channel]:
    """`plain_channel` to the module's server."""
    with plain_channel(module_grpc_server) as opened:
        yield opened


def call(channel: grpc.Channel, server: Server, method: str, body: bytes) -> bytes:
    stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
    return stub(body, metadata=(("authorization", f"Bearer {server.token}"),), timeout=10)


@pytest.mark.databases("sqlite")
def test_unknown_methods_are_unimplemented(
    channel: grpc.Channel, module_grpc_server: Server
) -> None:
    for method in (f"{SERVICE}/NoSuchMethod", "/google.pubsub.v9.Nothing/Get"):
        with pytest.raises(grpc.RpcError) as caught:
            call(channel, module_grpc_server, method, b"")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.databases("sqlite")
def test_undecodable_requests_are_invalid_argument(
    channel: grpc.Channel, module_grpc_server: Server
) -> None:
    # A truncated length-delimited field, a string that is not UTF-8, an invalid wire type.
    for body in (b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\x0f"):
        with pytest.raises(grpc.RpcError) as caught:
            call(channel, module_grpc_server, f"{SERVICE}/GetDevice", body)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a valid google.cloud.iot.v1.GetDeviceRequest" in str(caught.value.details())


@pytest.mark.databases("sqlite")
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(
        ["CreateDeviceRegistry", "UpdateDevice", "ListDevices", "SetIamPolicy", "GetDevice"]
    ),
    body=st.binary(max_size=200),
)
def test_any_request_bytes_get_an_answer_not_a_crash(
    channel: grpc.Channel, module_grpc_server: Server, method: str, body: bytes
) -> None:
    try:
        call(channel, module_grpc_server, f"{SERVICE}/{method}", body)
    except grpc.RpcError as error:
        assert error.code() in {
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.FAILED_PRECONDITION,
        }, (error.code(), error.details())


@pytest.mark.databases("sqlite")
def test_a_taken_grpc_port_stops_the_server_at_start(
    module_grpc_server: Server, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONCORE_")}
    command = [sys.executable, "-m", "ironcore", "serve", "--data-dir", str(tmp_path / "second")]
    command += ["--api-host", "127.0.0.1", "--api-port", str(free_port())]
    command += ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(free_port())]
    command += ["--grpc-port", str(module_grpc_server.grpc_port), "--device-http-port", "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert (
        f"ironcore cannot start: cannot listen for gRPC on 127.0.0.1:{module_grpc_server.grpc_port}"
        in (result.stderr)
    )
    assert "Traceback" not in result.stderr


@pytest.mark.databases("sqlite")
def test_sigterm_stops_the_grpc_port(grpc_server: Server) -> None:
    request = iot_v1.ListDeviceRegistriesRequest.serialize({"parent": PARENT})
    with plain_channel(grpc_server) as channel:
        answer = call(channel, grpc_server, f"{SERVICE}/ListDeviceRegistries", request)
        assert iot_v1.ListDeviceRegistriesResponse.deserialize(answer).device_registries == []
        assert stop_server(grpc_server) == 0
        with pytest.raises(grpc.RpcError) as caught:
            call(channel, grpc_server, f"{SERVICE}/ListDeviceRegistries", request)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def served_certificate(server: Server) -> bytes:
    return ssl.get_server_certificate(("127.0.0.1", server.grpc_port)).encode()


@pytest.mark.databases("sqlite")
def test_sighup_reloads_the_grpc_certificate(grpc_server: Server) -> None:
    tls = grpc_server.data_dir / "tls"
    before = served_certificate(grpc_server)
    # Gone, the local server certificate is issued again (same CA) when SIGHUP asks for it.
    (tls / "server.crt").unlink()
    (tls / "server.key").unlink()
    os.kill(grpc_server.process.pid, signal.SIGHUP)
    wait_for(lambda: (tls / "server.crt").exists(), what="a new server certificate")
    after = wait_for(
        lambda: (found := served_certificate(grpc_server)) != before and found,
        what="the new certificate being served",
    )
    assert x509.load_pem_x509_certificate(after) == x509.load_pem_x509_certificate(
        (tls / "server.crt").read_bytes()
    )
    manager = client_for(grpc_server, grpc_server.token)
    assert list(manager.list_device_registries(parent=PARENT)) == []
    manager.transport.close()
