"""The official `google-cloud-iot==2.9.2` client against a real ironcore process, on SQLite
and PostgreSQL, on both its transports: REST (`transport="rest"`, the admin API) and gRPC (its
default, `--grpc-port` over TLS). Every method of the v1 device manager and every refusal as the
exception class client code relies on, over each; then what only REST has (plain HTTP, HTTPS).
What only gRPC has is in test_google_cloud_iot_grpc.py."""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import requests
from google.api_core import exceptions
from google.cloud import iot_v1
from google.cloud.iot_v1.services.device_manager.transports.grpc import DeviceManagerGrpcTransport
from google.cloud.iot_v1.services.device_manager.transports.rest import DeviceManagerRestTransport
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import field_mask_pb2

from tests.conftest import Server, start_server, stop_server
from tests.interop.iot_clients import (
    PARENT,
    PROJECT,
    WIRES,
    client_for,
    own_parent,
    registry_with_topic,
)
from tests.keys import es256_key, public_pem, rsa_key, self_signed_pem

# Over REST, google-api-core picks the exception class from the HTTP status alone: 409 is
# Conflict (not its subclass AlreadyExists), 400 is BadRequest, 429 TooManyRequests, 401
# Unauthorized, 403 Forbidden. The google.rpc status the server sent is in the envelope; these
# map each expected status to the class the REST transport raises and check both.
REST_CLASS: dict[str, type[exceptions.GoogleAPICallError]] = {
    "ALREADY_EXISTS": exceptions.Conflict,
    "ABORTED": exceptions.Conflict,
    "FAILED_PRECONDITION": exceptions.BadRequest,
    "INVALID_ARGUMENT": exceptions.BadRequest,
    "RESOURCE_EXHAUSTED": exceptions.TooManyRequests,
    "NOT_FOUND": exceptions.NotFound,
    "UNAUTHENTICATED": exceptions.Unauthorized,
    "PERMISSION_DENIED": exceptions.Forbidden,
}


@contextlib.contextmanager
def raises_status(
    client: iot_v1.DeviceManagerClient, status: str
) -> Iterator[pytest.ExceptionInfo[exceptions.GoogleAPICallError]]:
    """The refusal `status` as the client's transport raises it: over gRPC exactly the class
    of that status (as Google's service raised it), over REST the class of its HTTP status
    with `status` in the envelope."""
    if isinstance(client.transport, DeviceManagerGrpcTransport):
        with pytest.raises(exceptions.GoogleAPICallError) as caught:
            yield caught
        expected = exceptions.exception_class_for_grpc_status(grpc.StatusCode[status])
        assert type(caught.value) is expected, caught.value
        return
    assert isinstance(client.transport, DeviceManagerRestTransport)
    with pytest.raises(REST_CLASS[status]) as caught:
        yield caught
    assert caught.value.response.json()["error"]["status"] == status


@pytest.fixture(params=WIRES)
def client(
    request: pytest.FixtureRequest, module_grpc_server: Server
) -> Iterator[iot_v1.DeviceManagerClient]:
    """An owner's client on each transport, to the module's server (each test in a project
    of its own)."""
    manager = client_for(module_grpc_server, module_grpc_server.token, request.param)
    yield manager
    manager.transport.close()


def test_registry_lifecycle(client: iot_v1.DeviceManagerClient) -> None:
    parent = own_parent()
    name = registry_with_topic(client, parent, "reg-life")
    assert name == f"{parent}/registries/reg-life"
    got = client.get_device_registry(name=name)
    assert got.id == "reg-life"
    assert (
        got.event_notification_configs[0].pubsub_topic_name
        == f"projects/{PROJECT}/topics/telemetry"
    )
    assert got.mqtt_config.mqtt_enabled_state == iot_v1.MqttState.MQTT_ENABLED
    assert got.http_config.http_enabled_state == iot_v1.HttpState.HTTP_DISABLED

    with raises_status(client, "ALREADY_EXISTS"):
        registry_with_topic(client, parent, "reg-life")

    updated = client.update_device_registry(
        device_registry={"name": name, "mqtt_config": {"mqtt_enabled_state": 2}},
        update_mask=field_mask_pb2.FieldMask(paths=["mqtt_config"]),
    )
    assert updated.mqtt_config.mqtt_enabled_state == iot_v1.MqttState.MQTT_DISABLED
    assert updated.http_config.http_enabled_state == iot_v1.HttpState.HTTP_DISABLED

    # Five registries in pages of two: three pages, in the order they were made.
    for i in range(4):
        registry_with_topic(client, parent, f"page-{i}")
    pager = client.list_device_registries(request={"parent": parent, "page_size": 2})
    assert [r.id for r in pager] == ["reg-life", "page-0", "page-1", "page-2", "page-3"]

    client.delete_device_registry(name=name)
    with raises_status(client, "NOT_FOUND"):
        client.get_device_registry(name=name)
    with raises_status(client, "NOT_FOUND"):
        client.delete_device_registry(name=name)


def test_device_lifecycle(client: iot_v1.DeviceManagerClient) -> None:
    registry = registry_with_topic(client, own_parent(), "reg-dev")
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

    with raises_status(client, "ALREADY_EXISTS"):
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

    with raises_status(client, "INVALID_ARGUMENT"):
        client.update_device(device={"name": f"{registry}/devices/dev1"})

    client.delete_device(name=f"{registry}/devices/dev1")
    with raises_status(client, "NOT_FOUND"):
        client.get_device(name=f"{registry}/devices/dev1")


def test_list_devices_masks_filters_gateways_and_bindings(
    client: iot_v1.DeviceManagerClient,
) -> None:
    registry = registry_with_topic(client, own_parent(), "reg-list")
    created = [client.create_device(parent=registry, device={"id": f"dev-{i}"}) for i in range(7)]
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
    assert len(plain) == 8
    # Without a field mask the real service returned only id and numId.
    assert all(d.id and d.num_id and not d.name for d in plain)
    paged = list(client.list_devices(request={"parent": registry, "page_size": 3}))
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
    gw = next(d for d in masked if d.id == "gw-1")
    assert gw.gateway_config.gateway_type == iot_v1.GatewayType.GATEWAY
    assert all(d.config.version == 1 for d in masked)

    gateways = list(
        client.list_devices(
            request={"parent": registry, "gateway_list_options": {"gateway_type": 1}}
        )
    )
    assert [d.id for d in gateways] == ["gw-1"]
    with raises_status(client, "INVALID_ARGUMENT"):
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
    with raises_status(client, "INVALID_ARGUMENT"):
        client.bind_device_to_gateway(parent=registry, gateway_id="dev-4", device_id="dev-2")

    with raises_status(client, "FAILED_PRECONDITION"):
        client.delete_device(name=f"{registry}/devices/dev-2")
    client.unbind_device_from_gateway(parent=registry, gateway_id="gw-1", device_id="dev-2")
    client.unbind_device_from_gateway(parent=registry, gateway_id="gw-1", device_id="dev-3")
    with raises_status(client, "NOT_FOUND"):
        client.unbind_device_from_gateway(parent=registry, gateway_id="gw-1", device_id="dev-3")
    client.delete_device(name=f"{registry}/devices/dev-2")

    with raises_status(client, "FAILED_PRECONDITION"):
        client.delete_device_registry(name=registry)


def test_configs_states_and_commands(client: iot_v1.DeviceManagerClient) -> None:
    registry = registry_with_topic(client, own_parent(), "reg-cfg")
    name = f"{registry}/devices/cfg"
    client.create_device(parent=registry, device={"id": "cfg"})

    config = client.modify_cloud_to_device_config(name=name, binary_data=b"test\xff")
    assert config.version == 2 and config.binary_data == b"test\xff"

    # A second update within a second is refused with RESOURCE_EXHAUSTED; the client retries
    # that on its own, so call with no retry to see the error.
    with raises_status(client, "RESOURCE_EXHAUSTED"):
        client.modify_cloud_to_device_config(name=name, binary_data=b"again", retry=None)
    time.sleep(1.1)
    with raises_status(client, "FAILED_PRECONDITION"):
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
    with raises_status(client, "FAILED_PRECONDITION"):
        client.send_command_to_device(name=name, binary_data=b"cmd", subfolder="a/b", retry=None)
    with raises_status(client, "NOT_FOUND"):
        client.send_command_to_device(name=f"{registry}/devices/nope", binary_data=b"x", retry=None)


def test_iam_policies(client: iot_v1.DeviceManagerClient) -> None:
    parent = own_parent()
    registry = registry_with_topic(client, parent, "reg-iam")
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
        etag=empty.etag,
        bindings=[policy_pb2.Binding(role="roles/owner", members=["user:x@example.com"])],
    )
    with raises_status(client, "ABORTED"):
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
    with raises_status(client, "INVALID_ARGUMENT") as wildcard:
        client.test_iam_permissions(
            request=iam_policy_pb2.TestIamPermissionsRequest(
                resource=registry, permissions=["cloudiot.registries.get", "cloudiot.*"]
            )
        )
    assert "permissions[1]" in str(wildcard.value.message)
    missing = client.test_iam_permissions(
        request=iam_policy_pb2.TestIamPermissionsRequest(
            resource=f"{parent}/registries/none", permissions=["cloudiot.registries.get"]
        )
    )
    assert list(missing.permissions) == []


# A server of its own: the refused tokens slow its caller's address (`access.backoff`).
@pytest.mark.parametrize("wire", WIRES)
def test_callers_are_authenticated_and_authorized(grpc_server: Server, wire: str) -> None:
    parent = own_parent()
    name = f"{parent}/registries/any"
    for token in (None, "ic_not_a_token"):
        anonymous = client_for(grpc_server, token, wire)
        with raises_status(anonymous, "UNAUTHENTICATED"):
            anonymous.get_device_registry(name=name)
        anonymous.transport.close()

    created = httpx.post(
        f"{grpc_server.url}/ironcore/v1/tokens",
        json={"role": "viewer", "name": f"{wire} viewer"},
        headers={"Authorization": f"Bearer {grpc_server.token}"},
    )
    assert created.status_code == 200, created.text
    viewer = client_for(grpc_server, created.json()["token"], wire)
    with raises_status(viewer, "PERMISSION_DENIED") as denied:
        viewer.create_device_registry(parent=parent, device_registry={"id": "nope"})
    assert "cloudiot.registries.create" in str(denied.value.message)
    with raises_status(viewer, "NOT_FOUND"):
        viewer.get_device_registry(name=name)
    assert list(viewer.list_device_registries(parent=parent)) == []
    viewer.transport.close()


def test_raw_http_snake_case_and_url_safe(module_grpc_server: Server) -> None:
    """What device-side and script code sent with plain HTTP: snake_case, URL-safe base64."""
    server = module_grpc_server
    headers = {"Authorization": f"Bearer {server.token}"}
    base = f"{server.url}/v1/{own_parent()}/registries"
    r = httpx.post(
        base,
        json={
            "id": "raw",
            "event_notification_configs": [{"pubsub_topic_name": "projects/p/topics/telemetry"}],
        },
        headers=headers,
    )
    assert r.status_code == 200, r.text
    assert (
        r.json()["eventNotificationConfigs"][0]["pubsubTopicName"] == "projects/p/topics/telemetry"
    )
    r = httpx.post(
        f"{base}/raw/devices",
        json={"id": "dev", "gateway_config": {"gateway_type": "GATEWAY"}},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    payload = b"\xfb\xff\xfe config"
    r = httpx.post(
        f"{base}/raw/devices/dev:modifyCloudToDeviceConfig",
        json={
            "binary_data": base64.urlsafe_b64encode(payload).decode().rstrip("="),
            "version_to_update": "1",
        },
        headers=headers,
    )
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["binaryData"]) == payload
    assert r.json()["version"] == "2"
    r = httpx.get(
        f"{base}/raw/devices",
        params={
            "field_mask": "gateway_config",
            "gateway_list_options.gateway_type": "GATEWAY",
            "$alt": "json;enum-encoding=int",
        },
        headers=headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["devices"][0]["gatewayConfig"]["gatewayType"] == "GATEWAY"


@pytest.mark.databases("sqlite")
def test_google_cloud_iot_over_https(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin API served over TLS (`--api-tls`) with the local CA's certificate, which the
    client is told to trust as requests is (under google-auth's AuthorizedSession)."""
    server = start_server(tmp_path / "data", extra=["--api-tls"])
    try:
        assert server.url.startswith("https://")
        client = client_for(server, server.token, "rest")
        with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            client.list_device_registries(parent=PARENT)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_file))
        created = client.create_device_registry(
            parent=PARENT, device_registry=iot_v1.DeviceRegistry(id="reg-google")
        )
        assert created.name == f"{PARENT}/registries/reg-google"
        assert [r.id for r in client.list_device_registries(parent=PARENT)] == ["reg-google"]
    finally:
        stop_server(server)
    # The client's idle kept-alive TLS connection was cut at SIGTERM, not left to hold the
    # drain until the head timeout closed it.
    assert "(header_timeout)" not in server.log.read_text()
