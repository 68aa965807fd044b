"""The issue's "done when": a contractor's service account given
roles/cloudiot.deviceController on one registry, with the CLI, pushes configs and commands
there with Google's client and its key file, and can do nothing else; taking the binding away
takes the access away. Against a real server over gRPC. The same for a person: admin tokens
created for `user:EMAIL` with no role of their own, bound on one registry, over the CLI."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.api_core import exceptions
from google.cloud import iot_v1
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

from ironcore.access.roles import GOOGLE_ROLES, PERMISSIONS
from ironcore.registry.iam import APPLICABLE
from tests.cli.test_cli import Cli, Result
from tests.conftest import Server
from tests.interop.test_service_accounts import (
    PARENT,
    PROJECT,
    credentials,
    iot_client,
    new_account,
    new_key,
    server,
)

__all__ = ["server"]
CONTROLLER = "roles/cloudiot.deviceController"


def cli(server: Server, tmp_path: Path, *args: str, token: str = "") -> Result:
    """The CLI against `server`, with the owner's token or `token`."""
    return Cli(server, tmp_path).run("--project", PROJECT, *args, token=token)


def owner(server: Server, path: str, body: object) -> None:
    response = httpx.post(
        f"{server.url}/v1/{path}", json=body, headers={"Authorization": f"Bearer {server.token}"}
    )
    assert response.status_code == 200, response.text


def test_contractor_with_device_controller_on_one_registry(server: Server, tmp_path: Path) -> None:
    for registry in ("contract-a", "contract-b"):
        owner(server, f"{PARENT}/registries", {"id": registry})
        owner(server, f"{PARENT}/registries/{registry}/devices", {"id": "dev-1"})
    mine, other = f"{PARENT}/registries/contract-a", f"{PARENT}/registries/contract-b"
    email = new_account(server, [])
    member = f"serviceAccount:{email}"
    granted = cli(
        server, tmp_path, "iam", "add-binding", "--registry", "contract-a",
        "--role", CONTROLLER, "--member", member,
    )  # fmt: skip
    assert granted.code == 0, granted.err
    shown = cli(server, tmp_path, "--json", "iam", "get-policy", "--registry", "contract-a")
    assert json.loads(shown.out)["bindings"] == [{"role": CONTROLLER, "members": [member]}]

    client = iot_client(server, credentials(new_key(server, email)))
    try:
        device = f"{mine}/devices/dev-1"
        client.modify_cloud_to_device_config(name=device, binary_data=b"v2")
        assert client.get_device(name=device).config.binary_data == b"v2"
        # Allowed, and refused only because the device is not connected.
        with pytest.raises(exceptions.FailedPrecondition):
            client.send_command_to_device(name=device, binary_data=b"reboot")
        held = client.test_iam_permissions(
            resource=mine,
            permissions=[
                "cloudiot.devices.updateConfig",
                "cloudiot.devices.sendCommand",
                "cloudiot.devices.create",
                "cloudiot.devices.delete",
                "cloudiot.registries.setIamPolicy",
            ],
        )
        assert list(held.permissions) == [
            "cloudiot.devices.updateConfig",
            "cloudiot.devices.sendCommand",
        ]
        assert not client.test_iam_permissions(
            resource=other, permissions=["cloudiot.devices.updateConfig"]
        ).permissions
        refused: list[tuple[Callable[[], object], str]] = [
            (
                lambda: client.create_device(parent=mine, device=iot_v1.Device(id="dev-2")),
                "devices.create",
            ),
            (lambda: client.delete_device(name=device), "devices.delete"),
            (lambda: client.delete_device_registry(name=mine), "registries.delete"),
            (lambda: client.get_iam_policy(resource=mine), "registries.getIamPolicy"),
            (lambda: client.list_device_registries(parent=PARENT), "registries.list"),
            (
                lambda: client.modify_cloud_to_device_config(
                    name=f"{other}/devices/dev-1", binary_data=b"x"
                ),
                "devices.updateConfig",
            ),
            (lambda: client.get_device(name=f"{other}/devices/dev-1"), "devices.get"),
        ]
        for call, permission in refused:
            with pytest.raises(exceptions.PermissionDenied) as denied:
                call()
            assert f"cloudiot.{permission}" in str(denied.value.message)

        taken = cli(
            server, tmp_path, "iam", "remove-binding", "--registry", "contract-a",
            "--role", CONTROLLER, "--member", member,
        )  # fmt: skip
        assert taken.code == 0, taken.err
        with pytest.raises(exceptions.PermissionDenied):
            client.modify_cloud_to_device_config(name=device, binary_data=b"v3")
    finally:
        client.transport.close()


def test_a_person_with_device_controller_on_one_registry(server: Server, tmp_path: Path) -> None:
    """Alice's laptop and CI tokens, with no role of their own, given deviceController on one
    registry through `user:alice@example.com`: configs and commands there, and nothing else;
    the audit log names her; taking the binding away takes it from both tokens."""
    for registry in ("person-a", "person-b"):
        owner(server, f"{PARENT}/registries", {"id": registry})
        owner(server, f"{PARENT}/registries/{registry}/devices", {"id": "dev-1"})
    owner(server, f"{PARENT}/registries/person-a/devices", {"id": "dev-2"})
    member = "user:alice@example.com"
    tokens = {}
    for name in ("laptop", "ci"):
        made = cli(
            server, tmp_path, "--json", "tokens", "create", "--role", "none",
            "--user", "alice@example.com", "--name", name,
        )  # fmt: skip
        assert made.code == 0, made.err
        assert json.loads(made.out)["principal"] == member
        tokens[name] = json.loads(made.out)["token"]
    listed = cli(server, tmp_path, "tokens", "list")
    assert listed.code == 0, listed.err
    assert "principal" in listed.out and listed.out.count(member) >= 2
    for bad in ("alice", "alice@example", "alice@@example.com"):
        refused = cli(server, tmp_path, "tokens", "create", "--role", "none", "--user", bad)
        assert refused.code == 1 and "not an email address" in refused.err, bad

    def alice(*args: str, token: str = tokens["laptop"]) -> Result:
        return cli(server, tmp_path, *args, token=token)

    push = ("devices", "config", "set", "--registry", "person-a", "dev-1", "--data")
    before = alice(*push, "v1")
    assert before.code == 1 and "PERMISSION_DENIED" in before.err
    assert member in before.err
    granted = cli(
        server, tmp_path, "iam", "add-binding", "--registry", "person-a",
        "--role", CONTROLLER, "--member", member,
    )  # fmt: skip
    assert granted.code == 0, granted.err
    pushed = alice(*push, "v2")
    assert pushed.code == 0, pushed.err
    shown = alice("--json", "devices", "get", "dev-1", "--registry", "person-a")
    assert shown.code == 0, shown.err
    assert base64.b64decode(json.loads(shown.out)["config"]["binaryData"]) == b"v2"
    # Allowed, and refused only because the device is not connected.
    command = alice("devices", "command", "dev-1", "--registry", "person-a", "--data", "reboot")
    assert command.code == 1 and "FAILED_PRECONDITION" in command.err
    held = alice(
        "--json", "iam", "test-permissions", "--registry", "person-a",
        "cloudiot.devices.updateConfig", "cloudiot.devices.create",
        "cloudiot.devices.sendCommand", "pubsub.topics.publish",
    )  # fmt: skip
    assert held.code == 0, held.err
    assert json.loads(held.out) == {
        "permissions": ["cloudiot.devices.updateConfig", "cloudiot.devices.sendCommand"]
    }
    for args in [
        ("devices", "create", "dev-3", "--registry", "person-a"),
        ("devices", "delete", "dev-1", "--registry", "person-a"),
        ("devices", "config", "set", "--registry", "person-b", "dev-1", "--data", "x"),
        ("devices", "get", "dev-1", "--registry", "person-b"),
        ("registries", "list"),
        ("iam", "get-policy", "--registry", "person-a"),
        ("tokens", "list"),
    ]:
        refused = alice(*args)
        assert refused.code == 1 and "PERMISSION_DENIED" in refused.err, args
    # The CI token is the same person: granted the same.
    ci = alice(
        "devices", "config", "set", "--registry", "person-a", "dev-2", "--data", "v1",
        token=tokens["ci"],
    )  # fmt: skip
    assert ci.code == 0, ci.err

    # The audit log names the person, whichever token acted.
    logged = cli(server, tmp_path, "--json", "audit", "list", "--project", PROJECT)
    assert logged.code == 0, logged.err
    hers = [e for e in json.loads(logged.out)["auditLogs"] if e["principal"] == member]
    assert {
        ("ModifyCloudToDeviceConfig", "PERMISSION_DENIED", "person-a/devices/dev-1"),
        ("ModifyCloudToDeviceConfig", "OK", "person-a/devices/dev-1"),
        ("ModifyCloudToDeviceConfig", "OK", "person-a/devices/dev-2"),
        ("DeleteDevice", "PERMISSION_DENIED", "person-a/devices/dev-1"),
    } <= {(e["method"], e["status"], e["resource"].rpartition("registries/")[2]) for e in hers}

    taken = cli(
        server, tmp_path, "iam", "remove-binding", "--registry", "person-a",
        "--role", CONTROLLER, "--member", member,
    )  # fmt: skip
    assert taken.code == 0, taken.err
    for token in tokens.values():
        after = alice(*push, "v4", token=token)
        assert after.code == 1 and "PERMISSION_DENIED" in after.err


def test_project_binding_grants_in_the_project_only(server: Server, tmp_path: Path) -> None:
    email = new_account(server, [])
    granted = cli(
        server, tmp_path, "iam", "add-binding", "--role", "roles/cloudiot.viewer",
        "--member", f"serviceAccount:{email}",
    )  # fmt: skip
    assert granted.code == 0, granted.err
    client = iot_client(server, credentials(new_key(server, email)))
    try:
        client.list_device_registries(parent=PARENT)
        with pytest.raises(exceptions.PermissionDenied):
            client.list_device_registries(parent="projects/elsewhere/locations/us-central1")
        with pytest.raises(exceptions.PermissionDenied):
            client.create_device_registry(
                parent=PARENT, device_registry=iot_v1.DeviceRegistry(id="nope-nope")
            )
    finally:
        client.transport.close()
    bad = cli(server, tmp_path, "iam", "add-binding", "--role", "roles/nonesuch", "--member", "x")
    assert bad.code == 1 and "INVALID_ARGUMENT" in bad.err
    held = cli(
        server, tmp_path, "--json", "iam", "test-permissions",
        "cloudiot.devices.get", "made.up",
    )  # fmt: skip
    assert held.code == 0, held.err
    assert json.loads(held.out) == {"permissions": ["cloudiot.devices.get"]}
    # set-policy from a file: the etag read makes a stale write fail.
    policy = json.loads(cli(server, tmp_path, "--json", "iam", "get-policy").out)
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({**policy, "bindings": []}))
    assert cli(server, tmp_path, "iam", "set-policy", str(path)).code == 0
    stale = cli(server, tmp_path, "iam", "set-policy", str(path))
    assert stale.code == 1 and "ABORTED" in stale.err
    assert (
        json.loads(cli(server, tmp_path, "--json", "iam", "get-policy").out).get("bindings", [])
        == []
    )


def test_every_role_on_every_grpc_method(server: Server) -> None:
    """Each predefined role, bound on the project to an account with no roles of its own,
    against each DeviceManager and Pub/Sub gRPC method: allowed or PERMISSION_DENIED exactly as
    `access.roles.PERMISSIONS` says (tests/api/test_policy_matrix.py is the same over REST);
    each allowed change and each refusal leaves its audit entry, and no entry holds a secret."""
    base = f"{PARENT}/registries/grpc-m"
    owner(server, f"{PARENT}/registries", {"id": "grpc-m"})
    owner(server, f"{base}/devices", {"id": "dev-1"})
    owner(server, f"{base}/devices", {"id": "gw-1", "gatewayConfig": {"gatewayType": "GATEWAY"}})
    topic = f"projects/{PROJECT}/topics/grpc-topic"
    subscription = f"projects/{PROJECT}/subscriptions/grpc-sub"
    for path, body in [(topic, {}), (subscription, {"topic": topic})]:
        response = httpx.put(
            f"{server.url}/v1/{path}",
            json=body,
            headers={"Authorization": f"Bearer {server.token}"},
        )
        assert response.status_code == 200, response.text
    endpoint = {"api_endpoint": f"127.0.0.1:{server.grpc_port}"}
    secrets = [server.token]
    for role in GOOGLE_ROLES:
        slug = role.removeprefix("roles/").replace(".", "-").lower()
        for kind, name in [("registries", f"g-{slug}"), ("devices", f"g-{slug}")]:
            parent = f"{PARENT}/registries" if kind == "registries" else f"{base}/devices"
            owner(server, parent, {"id": name})
        email = new_account(server, [])
        policy_path = f"/ironcore/v1/projects/{PROJECT}"
        bound = bind(server, policy_path, f"serviceAccount:{email}", role)
        key_file = new_key(server, email)
        secrets.append(key_file["private_key"].splitlines()[1])
        creds = credentials(key_file)
        iot = iot_client(server, creds)
        publisher = PublisherClient(credentials=creds, client_options=endpoint)
        subscriber = SubscriberClient(credentials=creds, client_options=endpoint)
        calls = grpc_calls(iot, publisher, subscriber, slug, base, topic, subscription)
        # What a create's entry names: the resource it created (a refusal's: the parent).
        created = {
            "CreateDeviceRegistry": f"{PARENT}/registries/n-{slug}",
            "CreateDevice": f"{base}/devices/n-{slug}",
        }
        who = f"serviceAccount:{email}"
        expected = []
        try:
            permissions = sorted({c[0] for c in calls})
            granted = iot.test_iam_permissions(resource=base, permissions=permissions)
            # Of the asked, those that apply to a registry: the Pub/Sub ones never do.
            registry_wide = {p for p in permissions if p.startswith(APPLICABLE["registries"])}
            assert set(granted.permissions) == registry_wide & PERMISSIONS[role], role
            for permission, name, resource, call in calls:
                try:
                    call()
                except exceptions.PermissionDenied as denied:
                    assert permission not in PERMISSIONS[role], (role, permission, denied)
                    assert f"Permission '{permission}' denied" in str(denied.message)
                    expected.append((who, name, resource, "PERMISSION_DENIED"))
                except exceptions.GoogleAPICallError as error:
                    # Allowed, and refused for another reason (the device is not connected);
                    # the attempt is recorded.
                    assert permission in PERMISSIONS[role], (role, permission, error)
                    assert permission == "cloudiot.devices.sendCommand", (role, error)
                    expected.append((who, name, resource, "FAILED_PRECONDITION"))
                else:
                    assert permission in PERMISSIONS[role], (role, permission)
                    if name not in GRPC_READS:
                        expected.append((who, name, created.get(name, resource), "OK"))
        finally:
            iot.transport.close()
            publisher.stop()
            subscriber.close()
        assert bound
        assert audit_trail(server, who) == expected, role
    recorded = json.dumps(audit_entries(server, ""))
    for secret in secrets:
        assert secret not in recorded


# gRPC methods that change nothing (reads) or only data (Pull): no entry unless refused.
GRPC_READS = frozenset(
    {
        "GetDeviceRegistry",
        "ListDeviceRegistries",
        "GetIamPolicy",
        "GetDevice",
        "ListDevices",
        "ListDeviceConfigVersions",
        "ListDeviceStates",
        "GetTopic",
        "ListTopics",
        "GetSubscription",
        "ListSubscriptions",
        "Pull",
    }
)


def audit_entries(server: Server, filter_text: str) -> list[dict[str, Any]]:
    """Every audit entry (of every project) the filter picks, newest first, read over REST
    with the owner's token."""
    found: list[dict[str, Any]] = []
    token = ""
    while True:
        page = httpx.get(
            f"{server.url}/ironcore/v1/projects/-/auditLogs",
            params={"filter": filter_text, "pageSize": 1000, "pageToken": token},
            headers={"Authorization": f"Bearer {server.token}"},
        )
        assert page.status_code == 200, page.text
        found += page.json().get("auditLogs", [])
        token = page.json().get("nextPageToken", "")
        if not token:
            return found


def audit_trail(server: Server, principal: str) -> list[tuple[str, str, str, str]]:
    """The audit entries of `principal`, oldest first: (principal, method, resource, status)."""
    return [
        (e["principal"], e["method"], e["resource"], e["status"])
        for e in reversed(audit_entries(server, f"principal={principal}"))
    ]


def bind(server: Server, path: str, member: str, role: str) -> bool:
    """Add a binding to a policy over REST with the owner's token."""
    headers = {"Authorization": f"Bearer {server.token}"}
    policy = httpx.post(f"{server.url}{path}:getIamPolicy", json={}, headers=headers).json()
    policy.setdefault("bindings", []).append({"role": role, "members": [member]})
    written = httpx.post(
        f"{server.url}{path}:setIamPolicy", json={"policy": policy}, headers=headers
    )
    assert written.status_code == 200, written.text
    return True


def grpc_calls(
    iot: Any, publisher: Any, subscriber: Any, slug: str, base: str, topic: str, subscription: str
) -> list[tuple[str, str, str, Callable[[], object]]]:
    """Every DeviceManager method and the Pub/Sub ones a role can tell apart: (the permission
    it checks, the method, the resource its audit entry names, the call). Creations and
    deletions act on names of the role's own (`slug`)."""
    device = f"{base}/devices/dev-1"
    return [
        (
            "cloudiot.registries.create",
            "CreateDeviceRegistry",
            PARENT,
            lambda: iot.create_device_registry(parent=PARENT, device_registry={"id": f"n-{slug}"}),
        ),
        (
            "cloudiot.registries.get",
            "GetDeviceRegistry",
            base,
            lambda: iot.get_device_registry(name=base),
        ),
        (
            "cloudiot.registries.list",
            "ListDeviceRegistries",
            PARENT,
            lambda: list(iot.list_device_registries(parent=PARENT)),
        ),
        (
            "cloudiot.registries.update",
            "UpdateDeviceRegistry",
            base,
            lambda: iot.update_device_registry(
                device_registry={"name": base, "log_level": "INFO"},
                update_mask={"paths": ["log_level"]},
            ),
        ),
        (
            "cloudiot.registries.delete",
            "DeleteDeviceRegistry",
            f"{PARENT}/registries/g-{slug}",
            lambda: iot.delete_device_registry(name=f"{PARENT}/registries/g-{slug}"),
        ),
        (
            "cloudiot.registries.getIamPolicy",
            "GetIamPolicy",
            base,
            lambda: iot.get_iam_policy(resource=base),
        ),
        (
            "cloudiot.registries.setIamPolicy",
            "SetIamPolicy",
            base,
            lambda: iot.set_iam_policy(request={"resource": base, "policy": {}}),
        ),
        (
            "cloudiot.devices.create",
            "CreateDevice",
            base,
            lambda: iot.create_device(parent=base, device={"id": f"n-{slug}"}),
        ),
        ("cloudiot.devices.get", "GetDevice", device, lambda: iot.get_device(name=device)),
        ("cloudiot.devices.list", "ListDevices", base, lambda: list(iot.list_devices(parent=base))),
        (
            "cloudiot.devices.update",
            "UpdateDevice",
            device,
            lambda: iot.update_device(
                device={"name": device, "metadata": {"k": "v"}}, update_mask={"paths": ["metadata"]}
            ),
        ),
        (
            "cloudiot.devices.delete",
            "DeleteDevice",
            f"{base}/devices/g-{slug}",
            lambda: iot.delete_device(name=f"{base}/devices/g-{slug}"),
        ),
        (
            "cloudiot.devices.updateConfig",
            "ModifyCloudToDeviceConfig",
            device,
            lambda: iot.modify_cloud_to_device_config(name=device, binary_data=b"c"),
        ),
        (
            "cloudiot.devices.get",
            "ListDeviceConfigVersions",
            device,
            lambda: iot.list_device_config_versions(name=device),
        ),
        (
            "cloudiot.devices.get",
            "ListDeviceStates",
            device,
            lambda: iot.list_device_states(name=device),
        ),
        (
            "cloudiot.devices.sendCommand",
            "SendCommandToDevice",
            device,
            lambda: iot.send_command_to_device(name=device, binary_data=b"c"),
        ),
        (
            "cloudiot.devices.bindGateway",
            "BindDeviceToGateway",
            base,
            lambda: iot.bind_device_to_gateway(parent=base, gateway_id="gw-1", device_id="dev-1"),
        ),
        (
            "cloudiot.devices.unbindGateway",
            "UnbindDeviceFromGateway",
            base,
            lambda: iot.unbind_device_from_gateway(
                parent=base, gateway_id="gw-1", device_id="dev-1"
            ),
        ),
        (
            "pubsub.topics.create",
            "CreateTopic",
            f"projects/{PROJECT}/topics/n-{slug}",
            lambda: publisher.create_topic(name=f"projects/{PROJECT}/topics/n-{slug}"),
        ),
        ("pubsub.topics.get", "GetTopic", topic, lambda: publisher.get_topic(topic=topic)),
        (
            "pubsub.topics.list",
            "ListTopics",
            f"projects/{PROJECT}",
            lambda: list(publisher.list_topics(project=f"projects/{PROJECT}")),
        ),
        (
            "pubsub.topics.getIamPolicy",
            "GetIamPolicy",
            topic,
            lambda: publisher.get_iam_policy(request={"resource": topic}),
        ),
        (
            "pubsub.subscriptions.create",
            "CreateSubscription",
            f"projects/{PROJECT}/subscriptions/n-{slug}",
            lambda: subscriber.create_subscription(
                name=f"projects/{PROJECT}/subscriptions/n-{slug}", topic=topic
            ),
        ),
        (
            "pubsub.subscriptions.get",
            "GetSubscription",
            subscription,
            lambda: subscriber.get_subscription(subscription=subscription),
        ),
        (
            "pubsub.subscriptions.list",
            "ListSubscriptions",
            f"projects/{PROJECT}",
            lambda: list(subscriber.list_subscriptions(project=f"projects/{PROJECT}")),
        ),
        (
            "pubsub.subscriptions.consume",
            "Pull",
            subscription,
            lambda: subscriber.pull(
                subscription=subscription, max_messages=1, return_immediately=True
            ),
        ),
        (
            "pubsub.subscriptions.getIamPolicy",
            "GetIamPolicy",
            subscription,
            lambda: subscriber.get_iam_policy(request={"resource": subscription}),
        ),
    ]
