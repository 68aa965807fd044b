"""The official `google-cloud-iot==2.9.2` client on its default transport, gRPC, against a real
ironcore process over TLS (`--grpc-port`), on SQLite and PostgreSQL: every method of the v1
device manager, every refusal as the exception class Google's service raised, and requests no
client library sends (undecodable bytes, unknown methods)."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import iot_v1
from google.cloud.iot_v1.services.device_manager.transports.grpc import DeviceManagerGrpcTransport
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.oauth2.credentials import Credentials
from google.protobuf import field_mask_pb2, json_format
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ironcore.registry.store import Store
from tests.conftest import Database, Server, free_port, stop_server, wait_for
from tests.full_device import fill_in, full_device, unset_fields
from tests.keys import es256_key, public_pem, rsa_key, self_signed_pem

PROJECT, LOCATION = "interop-project", "us-central1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
SERVICE = "/google.cloud.iot.v1.DeviceManager"


class StaticToken(Credentials):
    """A token that never refreshes (a refused one would otherwise be refreshed, then fail)."""

    def refresh(self, request: object) -> None:
        pass


def client_for(server: Server, token: str | None) -> iot_v1.DeviceManagerClient:
    """The client exactly as docs/migrating.md sets it up: an endpoint, and credentials."""
    return iot_v1.DeviceManagerClient(
        credentials=StaticToken(token=token) if token else AnonymousCredentials(),
        client_options={"api_endpoint": f"127.0.0.1:{server.grpc_port}"},
    )


@pytest.fixture
def client(grpc_server: Server) -> Iterator[iot_v1.DeviceManagerClient]:
    manager = client_for(grpc_server, grpc_server.token)
    assert isinstance(manager.transport, DeviceManagerGrpcTransport)
    yield manager
    manager.transport.close()


def registry_with_topic(client: iot_v1.DeviceManagerClient, registry_id: str) -> str:
    registry = client.create_device_registry(
        parent=PARENT,
        device_registry={
            "id": registry_id,
            "event_notification_configs": [
                {"pubsub_topic_name": f"projects/{PROJECT}/topics/telemetry"}
            ],
            "state_notification_config": {"pubsub_topic_name": f"projects/{PROJECT}/topics/states"},
            "mqtt_config": {"mqtt_enabled_state": iot_v1.MqttState.MQTT_ENABLED},
            "http_config": {"http_enabled_state": iot_v1.HttpState.HTTP_DISABLED},
        },
    )
    return registry.name


def test_registry_lifecycle(client: iot_v1.DeviceManagerClient) -> None:
    name = registry_with_topic(client, "reg-life")
    assert name == f"{PARENT}/registries/reg-life"
    got = client.get_device_registry(name=name)
    assert got.id == "reg-life"
    assert (
        got.event_notification_configs[0].pubsub_topic_name
        == f"projects/{PROJECT}/topics/telemetry"
    )
    assert got.mqtt_config.mqtt_enabled_state == iot_v1.MqttState.MQTT_ENABLED
    assert got.http_config.http_enabled_state == iot_v1.HttpState.HTTP_DISABLED

    with pytest.raises(exceptions.AlreadyExists):
        registry_with_topic(client, "reg-life")

    updated = client.update_device_registry(
        device_registry={"name": name, "mqtt_config": {"mqtt_enabled_state": 2}},
        update_mask=field_mask_pb2.FieldMask(paths=["mqtt_config"]),
    )
    assert updated.mqtt_config.mqtt_enabled_state == iot_v1.MqttState.MQTT_DISABLED
    assert updated.http_config.http_enabled_state == iot_v1.HttpState.HTTP_DISABLED

    for i in range(4):
        registry_with_topic(client, f"page-{i}")
    pager = client.list_device_registries(request={"parent": PARENT, "page_size": 2})
    assert [r.id for r in pager] == ["reg-life", "page-0", "page-1", "page-2", "page-3"]

    client.delete_device_registry(name=name)
    with pytest.raises(exceptions.NotFound):
        client.get_device_registry(name=name)
    with pytest.raises(exceptions.NotFound):
        client.delete_device_registry(name=name)


def test_device_lifecycle(client: iot_v1.DeviceManagerClient) -> None:
    registry = registry_with_topic(client, "reg-dev")
    device = client.create_device(
        parent=registry,
        device={
            "id": "dev1",
            "credentials": [
                {
                    "public_key": {
                        "format": iot_v1.PublicKeyFormat.ES256_PEM,
                        "key": public_pem(es256_key()),
                    }
                },
                {
                    "public_key": {
                        "format": iot_v1.PublicKeyFormat.RSA_X509_PEM,
                        "key": self_signed_pem(rsa_key()),
                    }
                },
            ],
            "metadata": {"k": "v"},
            "gateway_config": {"gateway_type": iot_v1.GatewayType.NON_GATEWAY},
        },
    )
    assert device.num_id > 10**15
    assert device.name == f"{registry}/devices/{device.num_id}"
    assert device.config.version == 1
    assert len(device.credentials) == 2
    assert device.metadata["k"] == "v"

    with pytest.raises(exceptions.AlreadyExists):
        client.create_device(parent=registry, device={"id": "dev1"})

    by_id = client.get_device(name=f"{registry}/devices/dev1")
    by_num = client.get_device(name=f"{registry}/devices/{device.num_id}")
    assert by_id.num_id == by_num.num_id == device.num_id
    assert by_id.credentials[0].public_key.format == iot_v1.PublicKeyFormat.ES256_PEM
    assert by_id.credentials[1].public_key.format == iot_v1.PublicKeyFormat.RSA_X509_PEM

    masked = client.get_device(
        request={
            "name": f"{registry}/devices/dev1",
            "field_mask": field_mask_pb2.FieldMask(paths=["id", "num_id", "gateway_config"]),
        }
    )
    assert masked.id == "dev1" and masked.num_id == device.num_id
    assert masked.gateway_config.gateway_type == iot_v1.GatewayType.NON_GATEWAY
    assert len(masked.credentials) == 0 and not masked.metadata

    patched = client.update_device(
        device={"name": f"{registry}/devices/dev1", "blocked": True, "metadata": {"x": "y"}},
        update_mask=field_mask_pb2.FieldMask(paths=["blocked", "metadata"]),
    )
    assert patched.blocked and dict(patched.metadata) == {"x": "y"}
    assert len(patched.credentials) == 2

    cleared = client.update_device(
        device={"name": f"{registry}/devices/dev1"},
        update_mask=field_mask_pb2.FieldMask(paths=["credentials"]),
    )
    assert len(cleared.credentials) == 0

    with pytest.raises(exceptions.InvalidArgument):
        client.update_device(device={"name": f"{registry}/devices/dev1"})

    client.delete_device(name=f"{registry}/devices/dev1")
    with pytest.raises(exceptions.NotFound):
        client.get_device(name=f"{registry}/devices/dev1")


def test_get_device_answers_what_rest_answers(
    client: iot_v1.DeviceManagerClient, grpc_server: Server, database: Database
) -> None:
    """GetDevice over gRPC and over REST, for a device with every field set: the same message,
    byte for byte, whole and through a field mask, by string and by numeric id."""
    registry = registry_with_topic(client, "reg-same")
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


def test_list_devices_gateways_and_bindings(client: iot_v1.DeviceManagerClient) -> None:
    registry = registry_with_topic(client, "reg-list")
    created = [client.create_device(parent=registry, device={"id": f"dev-{i}"}) for i in range(5)]
    client.create_device(
        parent=registry,
        device={
            "id": "gw-1",
            "gateway_config": {
                "gateway_type": iot_v1.GatewayType.GATEWAY,
                "gateway_auth_method": iot_v1.GatewayAuthMethod.ASSOCIATION_ONLY,
            },
        },
    )

    plain = list(client.list_devices(parent=registry))
    assert len(plain) == 6
    # Without a field mask the real service returned only id and numId.
    assert all(d.id and d.num_id and not d.name for d in plain)
    paged = list(client.list_devices(request={"parent": registry, "page_size": 4}))
    assert sorted(d.id for d in paged) == sorted(d.id for d in plain)

    masked = list(
        client.list_devices(
            request={
                "parent": registry,
                "field_mask": field_mask_pb2.FieldMask(paths=["config", "gateway_config"]),
                "device_ids": ["dev-1", "gw-1"],
                "device_num_ids": [created[2].num_id],
            }
        )
    )
    assert sorted(d.id for d in masked) == ["dev-1", "dev-2", "gw-1"]
    assert all(d.config.version == 1 for d in masked)

    gateways = list(
        client.list_devices(
            request={"parent": registry, "gateway_list_options": {"gateway_type": 1}}
        )
    )
    assert [d.id for d in gateways] == ["gw-1"]
    with pytest.raises(exceptions.InvalidArgument):
        list(
            client.list_devices(
                request={"parent": registry, "gateway_list_options": {"gateway_type": 7}}
            )
        )

    client.bind_device_to_gateway(parent=registry, gateway_id="gw-1", device_id="dev-2")
    client.bind_device_to_gateway(parent=registry, gateway_id="gw-1", device_id="dev-3")
    bound = client.list_devices(
        request={"parent": registry, "gateway_list_options": {"associations_gateway_id": "gw-1"}}
    )
    assert sorted(d.id for d in bound) == ["dev-2", "dev-3"]
    of_device = client.list_devices(
        request={"parent": registry, "gateway_list_options": {"associations_device_id": "dev-2"}}
    )
    assert [d.id for d in of_device] == ["gw-1"]
    with pytest.raises(exceptions.InvalidArgument):
        client.bind_device_to_gateway(parent=registry, gateway_id="dev-4", device_id="dev-2")

    with pytest.raises(exceptions.FailedPrecondition):
        client.delete_device(name=f"{registry}/devices/dev-2")
    client.unbind_device_from_gateway(parent=registry, gateway_id="gw-1", device_id="dev-2")
    client.unbind_device_from_gateway(parent=registry, gateway_id="gw-1", device_id="dev-3")
    with pytest.raises(exceptions.NotFound):
        client.unbind_device_from_gateway(parent=registry, gateway_id="gw-1", device_id="dev-3")
    client.delete_device(name=f"{registry}/devices/dev-2")

    with pytest.raises(exceptions.FailedPrecondition):
        client.delete_device_registry(name=registry)


def test_configs_states_and_commands(client: iot_v1.DeviceManagerClient) -> None:
    registry = registry_with_topic(client, "reg-cfg")
    name = f"{registry}/devices/cfg"
    client.create_device(parent=registry, device={"id": "cfg"})

    config = client.modify_cloud_to_device_config(name=name, binary_data=b"test\xff")
    assert config.version == 2 and config.binary_data == b"test\xff"

    # A second update within a second is RESOURCE_EXHAUSTED, which the client would retry.
    with pytest.raises(exceptions.ResourceExhausted):
        client.modify_cloud_to_device_config(name=name, binary_data=b"again", retry=None)
    time.sleep(1.1)
    with pytest.raises(exceptions.FailedPrecondition):
        client.modify_cloud_to_device_config(
            request={"name": name, "binary_data": b"stale", "version_to_update": 1}, retry=None
        )
    config = client.modify_cloud_to_device_config(
        request={"name": name, "binary_data": b"v3", "version_to_update": 2}
    )
    assert config.version == 3

    versions = client.list_device_config_versions(name=name)
    assert [c.version for c in versions.device_configs] == [3, 2, 1]
    assert versions.device_configs[0].binary_data == b"v3"
    one = client.list_device_config_versions(request={"name": name, "num_versions": 1})
    assert len(one.device_configs) == 1

    assert list(client.list_device_states(name=name).device_states) == []

    # No device is connected: the command cannot be delivered.
    with pytest.raises(exceptions.FailedPrecondition):
        client.send_command_to_device(name=name, binary_data=b"cmd", subfolder="a/b", retry=None)
    with pytest.raises(exceptions.NotFound):
        client.send_command_to_device(name=f"{registry}/devices/nope", binary_data=b"x", retry=None)


def test_iam_policies(client: iot_v1.DeviceManagerClient) -> None:
    registry = registry_with_topic(client, "reg-iam")
    empty = client.get_iam_policy(request=iam_policy_pb2.GetIamPolicyRequest(resource=registry))
    assert empty.etag and not empty.bindings

    policy = policy_pb2.Policy(
        bindings=[policy_pb2.Binding(role="roles/viewer", members=["group:ops@example.com"])]
    )
    stored = client.set_iam_policy(
        request=iam_policy_pb2.SetIamPolicyRequest(resource=registry, policy=policy)
    )
    assert stored.etag and stored.etag != empty.etag
    read = client.get_iam_policy(request=iam_policy_pb2.GetIamPolicyRequest(resource=registry))
    assert read.etag == stored.etag
    assert list(read.bindings[0].members) == ["group:ops@example.com"]

    stale = policy_pb2.Policy(
        etag=empty.etag, bindings=[policy_pb2.Binding(role="roles/owner", members=["user:x"])]
    )
    with pytest.raises(exceptions.Aborted):
        client.set_iam_policy(
            request=iam_policy_pb2.SetIamPolicyRequest(resource=registry, policy=stale),
            retry=None,
        )

    granted = client.test_iam_permissions(
        request=iam_policy_pb2.TestIamPermissionsRequest(
            resource=registry,
            permissions=[
                "cloudiot.devices.sendCommand",
                "pubsub.topics.publish",
                "cloudiot.registries.get",
                "made.up",
            ],
        )
    )
    # The owner holds pubsub.topics.publish, which does not apply to a registry.
    assert list(granted.permissions) == [
        "cloudiot.devices.sendCommand",
        "cloudiot.registries.get",
    ]
    with pytest.raises(exceptions.InvalidArgument) as wildcard:
        client.test_iam_permissions(
            request=iam_policy_pb2.TestIamPermissionsRequest(
                resource=registry, permissions=["cloudiot.registries.get", "cloudiot.*"]
            )
        )
    assert "permissions[1]" in str(wildcard.value.message)
    missing = client.test_iam_permissions(
        request=iam_policy_pb2.TestIamPermissionsRequest(
            resource=f"{PARENT}/registries/none", permissions=["cloudiot.registries.get"]
        )
    )
    assert list(missing.permissions) == []


def test_refusals_say_what_rest_says(
    client: iot_v1.DeviceManagerClient, grpc_server: Server
) -> None:
    """The same refusal over gRPC and REST: the same message, the same field violations."""
    registry = registry_with_topic(client, "reg-same")
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

    for bad_name in ("registries/x", f"{PARENT}/registries/reg-same/devices/", "projects/p"):
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


def test_callers_are_authenticated_and_authorized(grpc_server: Server) -> None:
    name = f"{PARENT}/registries/any"
    for token in (None, "ic_not_a_token"):
        anonymous = client_for(grpc_server, token)
        with pytest.raises(exceptions.Unauthenticated):
            anonymous.get_device_registry(name=name)
        anonymous.transport.close()

    created = httpx.post(
        f"{grpc_server.url}/ironcore/v1/tokens",
        json={"role": "viewer", "name": "grpc viewer"},
        headers={"Authorization": f"Bearer {grpc_server.token}"},
    )
    assert created.status_code == 200, created.text
    viewer = client_for(grpc_server, created.json()["token"])
    with pytest.raises(exceptions.PermissionDenied) as denied:
        viewer.create_device_registry(parent=PARENT, device_registry={"id": "nope"})
    assert "cloudiot.registries.create" in str(denied.value.message)
    with pytest.raises(exceptions.NotFound):
        viewer.get_device_registry(name=name)
    assert list(viewer.list_device_registries(parent=PARENT)) == []
    viewer.transport.close()


@pytest.fixture
def channel(grpc_server: Server) -> Iterator[grpc.Channel]:
    """A plain gRPC channel to the server, for what no client library sends."""
    root = grpc_server.data_dir.joinpath("tls", "ca.crt").read_bytes()
    with grpc.secure_channel(
        f"127.0.0.1:{grpc_server.grpc_port}", grpc.ssl_channel_credentials(root)
    ) as opened:
        yield opened


def call(channel: grpc.Channel, server: Server, method: str, body: bytes) -> bytes:
    stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
    return stub(body, metadata=(("authorization", f"Bearer {server.token}"),), timeout=10)


@pytest.mark.databases("sqlite")
def test_unknown_methods_are_unimplemented(channel: grpc.Channel, grpc_server: Server) -> None:
    for method in (f"{SERVICE}/NoSuchMethod", "/google.pubsub.v9.Nothing/Get"):
        with pytest.raises(grpc.RpcError) as caught:
            call(channel, grpc_server, method, b"")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.databases("sqlite")
def test_undecodable_requests_are_invalid_argument(
    channel: grpc.Channel, grpc_server: Server
) -> None:
    # A truncated length-delimited field, a string that is not UTF-8, an invalid wire type.
    for body in (b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\x0f"):
        with pytest.raises(grpc.RpcError) as caught:
            call(channel, grpc_server, f"{SERVICE}/GetDevice", body)
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
    channel: grpc.Channel, grpc_server: Server, method: str, body: bytes
) -> None:
    try:
        call(channel, grpc_server, f"{SERVICE}/{method}", body)
    except grpc.RpcError as error:
        assert error.code() in {
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.FAILED_PRECONDITION,
        }, (error.code(), error.details())


@pytest.mark.databases("sqlite")
def test_a_taken_grpc_port_stops_the_server_at_start(grpc_server: Server, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONCORE_")}
    command = [sys.executable, "-m", "ironcore", "serve", "--data-dir", str(tmp_path / "second")]
    command += ["--api-host", "127.0.0.1", "--api-port", str(free_port())]
    command += ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(free_port())]
    command += ["--grpc-port", str(grpc_server.grpc_port), "--device-http-port", "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert (
        f"ironcore cannot start: cannot listen for gRPC on 127.0.0.1:{grpc_server.grpc_port}"
        in (result.stderr)
    )
    assert "Traceback" not in result.stderr


@pytest.mark.databases("sqlite")
def test_sigterm_stops_the_grpc_port(grpc_server: Server, channel: grpc.Channel) -> None:
    request = iot_v1.ListDeviceRegistriesRequest.serialize({"parent": PARENT})
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
