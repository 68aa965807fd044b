"""IAM policies of Pub/Sub topics and subscriptions with the official `google-cloud-pubsub`
clients over the TLS gRPC port (`google.iam.v1.IAMPolicy`), as Google's Cloud IoT Core
`manager.py` sample uses them, and the same policies over REST; every refusal as its exception
class or status."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.api_core import exceptions
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from google.iam.v1 import policy_pb2

from tests.conftest import Database, Server, stop_server
from tests.interop.iot_clients import StaticToken
from tests.interop.test_google_cloud_pubsub_emulator import emulator_server
from tests.interop.test_google_cloud_pubsub_grpc import publisher_for

pytestmark = pytest.mark.databases("sqlite", "postgresql")
PROJECT = "iam-project"
TOPIC = f"projects/{PROJECT}/topics/telemetry"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/backend"
IOT_PUBLISHER = "serviceAccount:cloud-iot@system.gserviceaccount.com"


@pytest.fixture
def publisher(grpc_server: Server) -> Iterator[PublisherClient]:
    client = publisher_for(grpc_server, grpc_server.token)
    yield client
    client.stop()


@pytest.fixture
def subscriber(grpc_server: Server) -> Iterator[SubscriberClient]:
    client = SubscriberClient(
        credentials=StaticToken(token=grpc_server.token),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": f"127.0.0.1:{grpc_server.grpc_port}"},
    )
    yield client
    client.close()


def token(server: Server, role: str) -> str:
    created = httpx.post(
        f"{server.url}/ironcore/v1/tokens",
        json={"role": role, "name": f"iam {role}"},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert created.status_code == 200, created.text
    value: str = created.json()["token"]
    return value


def test_manager_py_grants_cloud_iot_publish_on_its_topic(
    publisher: PublisherClient, subscriber: SubscriberClient
) -> None:
    # Google's iot/api-client/manager/manager.py, create_iot_topic, unmodified.
    topic_path = publisher.topic_path(PROJECT, "telemetry")
    publisher.create_topic(request={"name": topic_path})
    policy = publisher.get_iam_policy(request={"resource": topic_path})
    assert base64.b64encode(policy.etag) == b"ACAB" and not policy.bindings
    policy.bindings.add(role="roles/pubsub.publisher", members=[IOT_PUBLISHER])
    stored = publisher.set_iam_policy(request={"resource": topic_path, "policy": policy})
    assert [(b.role, list(b.members)) for b in stored.bindings] == [
        ("roles/pubsub.publisher", [IOT_PUBLISHER])
    ]
    assert stored.etag and stored.etag != policy.etag
    assert publisher.get_iam_policy(request={"resource": topic_path}) == stored

    # A read-modify-write from the earlier read is stale now.
    with pytest.raises(exceptions.Aborted) as aborted:
        publisher.set_iam_policy(request={"resource": topic_path, "policy": policy}, retry=None)
    assert "etag" in str(aborted.value.message)
    assert publisher.get_iam_policy(request={"resource": topic_path}) == stored

    # Subscriptions have policies of their own.
    subscriber.create_subscription(name=SUBSCRIPTION, topic=topic_path)
    own = subscriber.get_iam_policy(request={"resource": SUBSCRIPTION})
    assert not own.bindings
    own.bindings.add(role="roles/pubsub.subscriber", members=["user:ops@example.com"])
    subscriber.set_iam_policy(request={"resource": SUBSCRIPTION, "policy": own})
    [binding] = subscriber.get_iam_policy(request={"resource": SUBSCRIPTION}).bindings
    assert binding.role == "roles/pubsub.subscriber"

    held = publisher.test_iam_permissions(
        request={
            "resource": topic_path,
            "permissions": [
                "pubsub.topics.publish",
                "pubsub.subscriptions.consume",
                "cloudiot.devices.get",
                "pubsub.topics.setIamPolicy",
                "made.up",
            ],
        }
    )
    # The owner holds all but made.up; a topic answers about topics only.
    assert list(held.permissions) == ["pubsub.topics.publish", "pubsub.topics.setIamPolicy"]
    held = subscriber.test_iam_permissions(
        request={
            "resource": SUBSCRIPTION,
            "permissions": ["pubsub.topics.publish", "pubsub.subscriptions.consume"],
        }
    )
    assert list(held.permissions) == ["pubsub.subscriptions.consume"]
    with pytest.raises(exceptions.InvalidArgument) as wildcard:
        publisher.test_iam_permissions(request={"resource": topic_path, "permissions": ["*"]})
    assert "permissions[0]" in str(wildcard.value.message)

    # Deleting a resource deletes its policy: the same name made again starts empty.
    publisher.delete_topic(request={"topic": topic_path})
    subscriber.delete_subscription(request={"subscription": SUBSCRIPTION})
    with pytest.raises(exceptions.NotFound):
        publisher.get_iam_policy(request={"resource": topic_path})
    publisher.create_topic(request={"name": topic_path})
    subscriber.create_subscription(name=SUBSCRIPTION, topic=topic_path)
    assert not publisher.get_iam_policy(request={"resource": topic_path}).bindings
    assert not subscriber.get_iam_policy(request={"resource": SUBSCRIPTION}).bindings


def test_refusals(publisher: PublisherClient, grpc_server: Server) -> None:
    publisher.create_topic(request={"name": TOPIC})
    missing = f"projects/{PROJECT}/topics/none"
    role = policy_pb2.Binding(role="roles/pubsub.publisher", members=[IOT_PUBLISHER])
    for call in (
        lambda: publisher.get_iam_policy(request={"resource": missing}),
        lambda: publisher.set_iam_policy(
            request={"resource": missing, "policy": policy_pb2.Policy(bindings=[role])}
        ),
        lambda: publisher.get_iam_policy(
            request={"resource": f"projects/{PROJECT}/subscriptions/nope"}
        ),
    ):
        with pytest.raises(exceptions.NotFound):
            call()  # type: ignore[no-untyped-call]
    # Google answers an empty set for a resource that does not exist.
    none = publisher.test_iam_permissions(
        request={"resource": missing, "permissions": ["pubsub.topics.get"]}
    )
    assert list(none.permissions) == []

    def invalid(request: dict[str, object], names: str) -> None:
        with pytest.raises(exceptions.InvalidArgument) as refused:
            publisher.set_iam_policy(request=request, retry=None)
        assert names in str(refused.value.message), refused.value.message

    no_role = policy_pb2.Policy(bindings=[policy_pb2.Binding(members=["user:a@example.com"])])
    invalid({"resource": TOPIC, "policy": no_role}, "policy.bindings[0].role")
    conditional = policy_pb2.Policy(
        version=3,
        bindings=[
            policy_pb2.Binding(
                role="roles/pubsub.publisher",
                members=[IOT_PUBLISHER],
                condition={"expression": "request.time < timestamp('2030-01-01T00:00:00Z')"},
            )
        ],
    )
    invalid({"resource": TOPIC, "policy": conditional}, "conditional bindings are not supported")
    plain = policy_pb2.Policy(bindings=[role])
    invalid({"resource": "topics/telemetry", "policy": plain}, "resource")
    invalid(
        {"resource": TOPIC, "policy": plain, "update_mask": {"paths": ["audit_configs"]}},
        "update_mask",
    )
    with pytest.raises(exceptions.InvalidArgument):
        publisher.get_iam_policy(request={"resource": f"projects/{PROJECT}/schemas/s"})
    # Nothing refused was stored.
    assert not publisher.get_iam_policy(request={"resource": TOPIC}).bindings

    viewer = publisher_for(grpc_server, token(grpc_server, "viewer"))
    try:
        assert not viewer.get_iam_policy(request={"resource": TOPIC}).bindings
        with pytest.raises(exceptions.PermissionDenied) as denied:
            viewer.set_iam_policy(request={"resource": TOPIC, "policy": plain})
        assert "pubsub.topics.setIamPolicy" in str(denied.value.message)
        held = viewer.test_iam_permissions(
            request={
                "resource": TOPIC,
                "permissions": ["pubsub.topics.getIamPolicy", "pubsub.topics.setIamPolicy"],
            }
        )
        assert list(held.permissions) == ["pubsub.topics.getIamPolicy"]
    finally:
        viewer.stop()


def test_update_mask_sets_only_the_fields_named(publisher: PublisherClient) -> None:
    publisher.create_topic(request={"name": TOPIC})
    first = policy_pb2.Policy(
        version=1, bindings=[policy_pb2.Binding(role="roles/viewer", members=["user:a@x.com"])]
    )
    publisher.set_iam_policy(request={"resource": TOPIC, "policy": first})
    second = policy_pb2.Policy(
        version=0, bindings=[policy_pb2.Binding(role="roles/editor", members=["user:b@x.com"])]
    )
    stored = publisher.set_iam_policy(
        request={"resource": TOPIC, "policy": second, "update_mask": {"paths": ["bindings"]}}
    )
    assert stored.version == 1 and stored.bindings[0].role == "roles/editor"


def rest(
    server: Server, method: str, path: str, body: object = None, tok: str = ""
) -> httpx.Response:
    return httpx.request(
        method,
        f"{server.url}/v1/projects/{PROJECT}/{path}",
        json=body,
        headers={"Authorization": f"Bearer {tok or server.token}"},
    )


@pytest.mark.parametrize("kind", ["topics", "subscriptions"])
def test_rest_forms(grpc_server: Server, kind: str) -> None:
    assert rest(grpc_server, "PUT", "topics/telemetry", {}).status_code == 200
    created = rest(grpc_server, "PUT", "subscriptions/backend", {"topic": TOPIC})
    assert created.status_code == 200, created.text
    resource = f"{kind}/{'telemetry' if kind == 'topics' else 'backend'}"

    # Pub/Sub reads with GET (gcloud does); Cloud IoT Core's POST form works too.
    for read in (
        rest(grpc_server, "GET", f"{resource}:getIamPolicy"),
        rest(grpc_server, "POST", f"{resource}:getIamPolicy", {}),
    ):
        assert read.status_code == 200, read.text
        assert read.json() == {"etag": "ACAB"}
    policy = {"bindings": [{"role": "roles/pubsub.viewer", "members": ["user:a@example.com"]}]}
    written = rest(
        grpc_server, "POST", f"{resource}:setIamPolicy", {"policy": {**policy, "etag": "ACAB"}}
    )
    assert written.status_code == 200, written.text
    assert written.json()["bindings"] == policy["bindings"] and written.json()["etag"] != "ACAB"
    assert rest(grpc_server, "GET", f"{resource}:getIamPolicy").json() == written.json()
    stale = rest(
        grpc_server, "POST", f"{resource}:setIamPolicy", {"policy": {**policy, "etag": "ACAB"}}
    )
    assert stale.status_code == 409 and stale.json()["error"]["status"] == "ABORTED"

    held = rest(
        grpc_server,
        "POST",
        f"{resource}:testIamPermissions",
        {"permissions": [f"pubsub.{kind}.getIamPolicy", f"pubsub.{kind}.setIamPolicy"]},
        token(grpc_server, "editor"),
    )
    assert held.json() == {"permissions": [f"pubsub.{kind}.getIamPolicy"]}

    refused = rest(
        grpc_server,
        "POST",
        f"{resource}:setIamPolicy",
        {"policy": {"bindings": [{"members": ["user:a@example.com"]}]}},
    )
    assert refused.status_code == 400 and "policy.bindings[0].role" in refused.text
    missing = rest(grpc_server, "GET", f"{kind}/none:getIamPolicy")
    assert missing.status_code == 404, missing.text
    assert rest(grpc_server, "POST", f"{kind}/none:testIamPermissions", {}).json() == {}
    denied = rest(
        grpc_server,
        "POST",
        f"{resource}:setIamPolicy",
        {"policy": policy},
        token(grpc_server, "editor"),
    )
    assert denied.status_code == 403


@pytest.mark.databases("sqlite")
def test_the_emulator_port_serves_no_iam(
    tmp_path: Path, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, port = emulator_server(tmp_path, database)
    try:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")
        publisher = PublisherClient()
        try:
            with pytest.raises(exceptions.MethodNotImplemented):
                publisher.get_iam_policy(request={"resource": TOPIC}, retry=None)
        finally:
            publisher.stop()
    finally:
        stop_server(server)
