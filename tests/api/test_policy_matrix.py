"""Policies that decide: every predefined role, bound on the project to a principal with no
roles of its own, against every REST method, allowed or PERMISSION_DENIED exactly as
`access.roles.PERMISSIONS` (and the table in docs/access.md) says; a registry binding that
grants only inside its registry; a project binding only in its project; testIamPermissions
agreeing with what the calls do. In process, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from ironcore.access.roles import ALL_PERMISSIONS, GOOGLE_ROLES, NO_ROLE, PERMISSIONS, ROLES
from ironcore.access.service_accounts import ServiceAccounts
from ironcore.registry.iam import APPLICABLE
from ironcore.registry.service import DeviceManager
from ironcore.registry.store import Store
from ironcore.registry.store.pubsub import PubSubStore
from ironcore.routing.pubsub import PubSub
from ironcore.runtime.inprocess import admin_api
from tests.conftest import Api, Database

PROJECT = "p1"
PARENT = f"projects/{PROJECT}/locations/us-central1"
REGISTRY = f"{PARENT}/registries/reg-m"
OTHER_REGISTRY = f"{PARENT}/registries/reg-o"
TOPIC = f"projects/{PROJECT}/topics/topic-0"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/sub-0"
GLOBAL = {"/ironcore/v1/revocations", "/ironcore/v1/tokens"}
# Calls that change nothing (reads) or only data (Pub/Sub message traffic): no audit entry
# unless refused.
READS = frozenset(
    {
        "ListDeviceRegistries",
        "GetDeviceRegistry",
        "GetIamPolicy",
        "ListDevices",
        "GetDevice",
        "ListDeviceConfigVersions",
        "ListDeviceStates",
        "GetKeyRotation",
        "GetCredentialProvenance",
        "ListRevocations",
        "ListFirmware",
        "ListRollouts",
        "ListTokens",
        "ListServiceAccounts",
        "GetProjectIamPolicy",
        "ListTopics",
        "GetTopic",
        "Publish",
        "GetPubSubIamPolicy",
        "ListSubscriptions",
        "GetSubscription",
        "Pull",
        "Acknowledge",
    }
)


async def ok(client: httpx.AsyncClient, method: str, path: str, body: Any = None) -> Any:
    response = await client.request(method, path, json=body)
    assert response.status_code == 200, (path, response.text)
    return response.json() if response.content else None


async def seed(api: Api) -> None:
    """Registries reg-m and reg-o, each with a device dev-1 and a gateway gw; a topic and a
    subscription."""
    c = api.client
    await ok(c, "PUT", f"/v1/{TOPIC}", {})
    await ok(c, "PUT", f"/v1/{SUBSCRIPTION}", {"topic": TOPIC})
    for registry in (REGISTRY, OTHER_REGISTRY):
        await ok(c, "POST", f"/v1/{PARENT}/registries", {"id": registry.rsplit("/", 1)[1]})
        await ok(c, "POST", f"/v1/{registry}/devices", {"id": "dev-1"})
        await ok(
            c,
            "POST",
            f"/v1/{registry}/devices",
            {"id": "gw-1", "gatewayConfig": {"gatewayType": "GATEWAY"}},
        )


async def principal(api: Api, account_id: str) -> tuple[str, httpx.AsyncClient, list[str]]:
    """A service account with no roles of its own, a client with its access token, and the
    secrets made for it (the token, the key's private key)."""
    accounts = ServiceAccounts(api.manager.store, api.manager.clock)
    account = await accounts.create(PROJECT, account_id, [])
    key = await accounts.create_key(PROJECT, account.email, "http://ironcore/token")
    token, _ = await accounts.issue_access_token(key.key.key_id)
    client = httpx.AsyncClient(
        transport=api.client._transport,
        base_url="http://ironcore",
        headers={"Authorization": f"Bearer {token}"},
    )
    private_key = str(key.key_file["private_key"])
    return f"serviceAccount:{account.email}", client, [token, private_key.splitlines()[1]]


async def bind(api: Api, resource: str, member: str, role: str) -> None:
    """Add a binding to the policy of `resource` (a project, registry, topic...)."""
    if resource.startswith("projects/") and resource.count("/") == 1:
        path = f"/ironcore/v1/{resource}"
    else:
        path = f"/v1/{resource}"
    policy = await ok(api.client, "POST", f"{path}:getIamPolicy", {})
    policy.setdefault("bindings", []).append({"role": role, "members": [member]})
    await ok(api.client, "POST", f"{path}:setIamPolicy", {"policy": policy})


def calls(slug: str) -> list[tuple[str, str, str, Any, str]]:
    """Every REST method: (the permission it checks, HTTP method, path, body, the method's
    name in the audit log). Creations and
    deletions act on names of this role's own (`slug`), so that every call of the matrix
    leaves the others' resources as they were."""
    dev = f"/v1/{REGISTRY}/devices/dev-1"
    ic_dev = f"/ironcore/v1/{REGISTRY}/devices/dev-1"
    config = {"binaryData": base64.b64encode(b"c").decode()}
    gateway = {"gatewayId": "gw-1", "deviceId": "dev-1"}
    return [
        (
            "cloudiot.registries.create",
            "POST",
            f"/v1/{PARENT}/registries",
            {"id": f"n-{slug}"},
            "CreateDeviceRegistry",
        ),
        (
            "cloudiot.registries.list",
            "GET",
            f"/v1/{PARENT}/registries",
            None,
            "ListDeviceRegistries",
        ),
        ("cloudiot.registries.get", "GET", f"/v1/{REGISTRY}", None, "GetDeviceRegistry"),
        (
            "cloudiot.registries.update",
            "PATCH",
            f"/v1/{REGISTRY}?updateMask=logLevel",
            {"logLevel": "INFO"},
            "UpdateDeviceRegistry",
        ),
        (
            "cloudiot.registries.getIamPolicy",
            "POST",
            f"/v1/{REGISTRY}:getIamPolicy",
            {},
            "GetIamPolicy",
        ),
        (
            "cloudiot.registries.setIamPolicy",
            "POST",
            f"/v1/{REGISTRY}:setIamPolicy",
            {"policy": {}},
            "SetIamPolicy",
        ),
        (
            "cloudiot.devices.bindGateway",
            "POST",
            f"/v1/{REGISTRY}:bindDeviceToGateway",
            gateway,
            "BindDeviceToGateway",
        ),
        (
            "cloudiot.devices.unbindGateway",
            "POST",
            f"/v1/{REGISTRY}:unbindDeviceFromGateway",
            gateway,
            "UnbindDeviceFromGateway",
        ),
        (
            "cloudiot.devices.create",
            "POST",
            f"/v1/{REGISTRY}/devices",
            {"id": f"n-{slug}"},
            "CreateDevice",
        ),
        ("cloudiot.devices.list", "GET", f"/v1/{REGISTRY}/devices", None, "ListDevices"),
        ("cloudiot.devices.get", "GET", dev, None, "GetDevice"),
        ("cloudiot.devices.get", "GET", f"{dev}/configVersions", None, "ListDeviceConfigVersions"),
        ("cloudiot.devices.get", "GET", f"{dev}/states", None, "ListDeviceStates"),
        (
            "cloudiot.devices.update",
            "PATCH",
            f"{dev}?updateMask=metadata",
            {"metadata": {"k": "v"}},
            "UpdateDevice",
        ),
        (
            "cloudiot.devices.updateConfig",
            "POST",
            f"{dev}:modifyCloudToDeviceConfig",
            config,
            "ModifyCloudToDeviceConfig",
        ),
        (
            "cloudiot.devices.sendCommand",
            "POST",
            f"{dev}:sendCommandToDevice",
            config,
            "SendCommandToDevice",
        ),
        (
            "cloudiot.devices.delete",
            "DELETE",
            f"/v1/{REGISTRY}/devices/d-{slug}",
            None,
            "DeleteDevice",
        ),
        (
            "cloudiot.registries.delete",
            "DELETE",
            f"/v1/{PARENT}/registries/d-{slug}",
            None,
            "DeleteDeviceRegistry",
        ),
        (
            "ironcore.manifests.import",
            "POST",
            f"/ironcore/v1/{REGISTRY}:importManifest",
            {"manifest": "{}", "dryRun": True},
            "ImportManifest",
        ),
        (
            "ironcore.devices.rotateCredentials",
            "POST",
            f"{ic_dev}:rotateKey",
            {},
            "StartKeyRotation",
        ),
        ("cloudiot.devices.get", "GET", f"{ic_dev}/keyRotation", None, "GetKeyRotation"),
        (
            "ironcore.devices.rotateCredentials",
            "POST",
            f"{ic_dev}:rollbackKeyRotation",
            {},
            "RollbackKeyRotation",
        ),
        (
            "cloudiot.devices.get",
            "GET",
            f"{ic_dev}/credentialProvenance",
            None,
            "GetCredentialProvenance",
        ),
        ("ironcore.revocations.manage", "POST", f"{ic_dev}:reattest", {}, "ReattestDevice"),
        ("ironcore.revocations.list", "GET", "/ironcore/v1/revocations", None, "ListRevocations"),
        (
            "ironcore.revocations.manage",
            "POST",
            "/ironcore/v1/revocations",
            {"certificate": "x"},
            "RevokeSigner",
        ),
        (
            "ironcore.firmware.upload",
            "POST",
            f"/ironcore/v1/projects/{PROJECT}/firmware",
            {"image": "eA==", "manifest": "x"},
            "UploadFirmware",
        ),
        (
            "ironcore.firmware.get",
            "GET",
            f"/ironcore/v1/projects/{PROJECT}/firmware",
            None,
            "ListFirmware",
        ),
        (
            "ironcore.firmware.rollout",
            "POST",
            f"/ironcore/v1/{REGISTRY}/rollouts",
            {"sha256": "x"},
            "StartRollout",
        ),
        ("ironcore.firmware.get", "GET", f"/ironcore/v1/{REGISTRY}/rollouts", None, "ListRollouts"),
        ("ironcore.tokens.manage", "GET", "/ironcore/v1/tokens", None, "ListTokens"),
        (
            "ironcore.serviceAccounts.manage",
            "GET",
            f"/ironcore/v1/projects/{PROJECT}/serviceAccounts",
            None,
            "ListServiceAccounts",
        ),
        (
            "resourcemanager.projects.getIamPolicy",
            "POST",
            f"/ironcore/v1/projects/{PROJECT}:getIamPolicy",
            {},
            "GetProjectIamPolicy",
        ),
        (
            "pubsub.topics.create",
            "PUT",
            f"/v1/projects/{PROJECT}/topics/n-{slug}",
            {},
            "CreateTopic",
        ),
        ("pubsub.topics.list", "GET", f"/v1/projects/{PROJECT}/topics", None, "ListTopics"),
        ("pubsub.topics.get", "GET", f"/v1/{TOPIC}", None, "GetTopic"),
        (
            "pubsub.topics.publish",
            "POST",
            f"/v1/{TOPIC}:publish",
            {"messages": [{"data": "eA=="}]},
            "Publish",
        ),
        (
            "pubsub.topics.getIamPolicy",
            "POST",
            f"/v1/{TOPIC}:getIamPolicy",
            {},
            "GetPubSubIamPolicy",
        ),
        (
            "pubsub.topics.setIamPolicy",
            "POST",
            f"/v1/{TOPIC}:setIamPolicy",
            {"policy": {}},
            "SetPubSubIamPolicy",
        ),
        (
            "pubsub.topics.delete",
            "DELETE",
            f"/v1/projects/{PROJECT}/topics/d-{slug}",
            None,
            "DeleteTopic",
        ),
        (
            "pubsub.subscriptions.create",
            "PUT",
            f"/v1/projects/{PROJECT}/subscriptions/n-{slug}",
            {"topic": TOPIC},
            "CreateSubscription",
        ),
        (
            "pubsub.subscriptions.list",
            "GET",
            f"/v1/projects/{PROJECT}/subscriptions",
            None,
            "ListSubscriptions",
        ),
        ("pubsub.subscriptions.get", "GET", f"/v1/{SUBSCRIPTION}", None, "GetSubscription"),
        (
            "pubsub.subscriptions.consume",
            "POST",
            f"/v1/{SUBSCRIPTION}:pull",
            {"maxMessages": 1, "returnImmediately": True},
            "Pull",
        ),
        (
            "pubsub.subscriptions.consume",
            "POST",
            f"/v1/{SUBSCRIPTION}:acknowledge",
            {"ackIds": []},
            "Acknowledge",
        ),
        (
            "pubsub.subscriptions.getIamPolicy",
            "POST",
            f"/v1/{SUBSCRIPTION}:getIamPolicy",
            {},
            "GetPubSubIamPolicy",
        ),
        (
            "pubsub.subscriptions.setIamPolicy",
            "POST",
            f"/v1/{SUBSCRIPTION}:setIamPolicy",
            {"policy": {}},
            "SetPubSubIamPolicy",
        ),
        (
            "pubsub.subscriptions.delete",
            "DELETE",
            f"/v1/projects/{PROJECT}/subscriptions/d-{slug}",
            None,
            "DeleteSubscription",
        ),
        # Last: an owner's empty project policy would take the binding away.
        (
            "resourcemanager.projects.setIamPolicy",
            "POST",
            f"/ironcore/v1/projects/{PROJECT}:setIamPolicy",
            {"policy": {}},
            "SetProjectIamPolicy",
        ),
    ]


@pytest.fixture
async def seeded(api: Api) -> AsyncIterator[Api]:
    await seed(api)
    yield api


def slug_of(role: str) -> str:
    return role.removeprefix("roles/").replace(".", "-").lower()


def resource_of(path: str) -> str:
    """The resource a REST path names, as the audit log records it."""
    path = urlsplit(path).path
    for prefix in ("/ironcore/v1/", "/v1/"):
        path = path.removeprefix(prefix)
    return path.partition(":")[0]


async def audit_trail(api: Api, principal: str) -> list[tuple[str, str, str, str]]:
    """The audit entries of `principal`, oldest first: (principal, method, resource, status)."""
    listed = await ok(
        api.client,
        "GET",
        f"/ironcore/v1/projects/-/auditLogs?pageSize=1000&filter={quote(f'principal={principal}')}",
    )
    assert "nextPageToken" not in listed
    return [
        (e["principal"], e["method"], e["resource"], e["status"])
        for e in reversed(listed.get("auditLogs", []))
    ]


async def every_entry(api: Api) -> str:
    """Every audit entry, as one JSON text."""
    found: list[Any] = []
    token = ""
    while True:
        page = await ok(
            api.client, "GET", f"/ironcore/v1/projects/-/auditLogs?pageSize=1000&pageToken={token}"
        )
        found += page.get("auditLogs", [])
        token = page.get("nextPageToken", "")
        if not token:
            return json.dumps(found)


def expected_entry(
    who: str, name: str, path: str, body: Any, response: httpx.Response
) -> tuple[str, str, str, str] | None:
    """The audit entry a call of the matrix leaves: its refusal, its change, or a command's
    attempt; None for a read, Pub/Sub message traffic, or a change refused for its request."""
    if response.status_code == 403:
        return (who, name, resource_of(path), "PERMISSION_DENIED")
    if name in READS:
        return None
    if name == "SendCommandToDevice":
        # Allowed, and refused because the device is not connected: the attempt is recorded.
        assert response.json()["error"]["status"] == "FAILED_PRECONDITION", response.text
        return (who, name, resource_of(path), "FAILED_PRECONDITION")
    if response.status_code != 200:
        return None  # a change refused for its request changes nothing
    if name.startswith("Create") and "id" in body:
        # A create posted to a collection names what it created.
        return (who, name, f"{resource_of(path)}/{body['id']}", "OK")
    return (who, name, resource_of(path), "OK")


async def test_every_role_on_every_method(seeded: Api) -> None:
    """...and every call's audit entry: each allowed change's, each refusal's, no secret in
    any."""
    api = seeded
    # Every refusal of the matrix is recorded: they all come from one client address.
    api.manager.store.audit.limit_denials(10_000)
    checked = set()
    secrets = [api.token]
    # Each predefined role bound on the project to an account with no roles of its own; then
    # each admin token role, held of its own (`none`: nothing).
    for role in (*GOOGLE_ROLES, *ROLES):
        token = role in ROLES
        held = frozenset() if role == NO_ROLE else PERMISSIONS[role]
        slug = f"token-{role}" if token else slug_of(role)
        if token:
            client = await api.as_role(role)
            bearer = client.headers["Authorization"].removeprefix("Bearer ")
            secrets.append(bearer)
            who = f"adminToken:{bearer.removeprefix('ic_').partition('_')[0]}"
        else:
            member, client, made = await principal(api, f"acct-{slug}"[:30].rstrip("-"))
            secrets += made
            who = member
        # The resources this role's deletions act on.
        await ok(api.client, "POST", f"/v1/{REGISTRY}/devices", {"id": f"d-{slug}"})
        await ok(api.client, "POST", f"/v1/{PARENT}/registries", {"id": f"d-{slug}"})
        await ok(api.client, "PUT", f"/v1/projects/{PROJECT}/topics/d-{slug}", {})
        await ok(
            api.client, "PUT", f"/v1/projects/{PROJECT}/subscriptions/d-{slug}", {"topic": TOPIC}
        )
        if not token:
            await bind(api, f"projects/{PROJECT}", member, role)
        async with client:
            # testIamPermissions answers what the calls below do, on every kind of resource,
            # about the permissions that apply to it.
            for kind, resource in [
                ("projects", f"ironcore/v1/projects/{PROJECT}"),
                ("registries", f"v1/{REGISTRY}"),
                ("topics", f"v1/{TOPIC}"),
                ("subscriptions", f"v1/{SUBSCRIPTION}"),
            ]:
                asked = sorted(ALL_PERMISSIONS)
                answer = await ok(
                    client, "POST", f"/{resource}:testIamPermissions", {"permissions": asked}
                )
                applies = [p for p in sorted(held) if p.startswith(APPLICABLE[kind])]
                assert answer.get("permissions", []) == applies, resource
            expected = []
            for permission, method, path, body, name in calls(slug):
                checked.add(permission)
                response = await client.request(method, path, json=body)
                entry = expected_entry(who, name, path, body, response)
                if entry is not None:
                    expected.append(entry)
                denied = response.status_code == 403
                # ironcore's global resources (admin tokens, revocations) lie in no project:
                # only an admin token's own role reaches them.
                if permission in held and (token or path not in GLOBAL):
                    assert not denied, (role, permission, path, response.text)
                else:
                    assert denied, (role, permission, path, response.status_code, response.text)
                    error = response.json()["error"]
                    assert error["status"] == "PERMISSION_DENIED"
                    assert f"Permission '{permission}' denied" in error["message"]
        assert await audit_trail(api, who) == expected, role
        # The owner's token sets the project's policy back to none for the next role.
        await ok(
            api.client, "POST", f"/ironcore/v1/projects/{PROJECT}:setIamPolicy", {"policy": {}}
        )
    recorded = await every_entry(api)
    for secret in secrets:
        assert secret not in recorded
    # Every permission a role can hold is checked by some call above (ironcore.auditLogs.list
    # is the audit log's, which has no route yet).
    bindable = frozenset().union(*(PERMISSIONS[r] for r in GOOGLE_ROLES))
    assert bindable - checked <= {"ironcore.auditLogs.list"}, bindable - checked


async def test_test_iam_permissions_answers_about_what_applies_to_the_resource(
    seeded: Api,
) -> None:
    """The owner holds all of these everywhere; each resource answers only those that act on
    it or what lies in it, in the order asked; a wildcard is INVALID_ARGUMENT."""
    api = seeded
    asked = [
        "pubsub.topics.publish",
        "cloudiot.devices.updateConfig",
        "ironcore.firmware.upload",
        "pubsub.subscriptions.consume",
        "resourcemanager.projects.getIamPolicy",
        "ironcore.devices.rotateCredentials",
        "cloudiot.registries.get",
        "ironcore.tokens.manage",
        "made.up",
    ]
    answers = {
        f"/v1/{REGISTRY}": [
            "cloudiot.devices.updateConfig",
            "ironcore.devices.rotateCredentials",
            "cloudiot.registries.get",
        ],
        f"/v1/{TOPIC}": ["pubsub.topics.publish"],
        f"/v1/{SUBSCRIPTION}": ["pubsub.subscriptions.consume"],
        f"/ironcore/v1/projects/{PROJECT}": [p for p in asked if p != "made.up"],
    }
    for resource, answer in answers.items():
        held = await ok(
            api.client, "POST", f"{resource}:testIamPermissions", {"permissions": asked}
        )
        assert held == {"permissions": answer}, resource
        for wildcard in ("*", "cloudiot.*", "cloudiot.devices.*"):
            response = await api.client.post(
                f"{resource}:testIamPermissions",
                json={"permissions": ["cloudiot.devices.get", wildcard]},
            )
            assert response.status_code == 400, (resource, response.text)
            error = response.json()["error"]
            assert error["status"] == "INVALID_ARGUMENT" and "wildcard" in error["message"]
            [violation] = error["details"][0]["fieldViolations"]
            assert violation["field"] == "permissions[1]"
    # A wildcard is refused before the resource is looked up.
    missing = await api.client.post(
        f"/v1/{PARENT}/registries/none:testIamPermissions", json={"permissions": ["*"]}
    )
    assert missing.status_code == 400, missing.text


async def test_registry_binding_grants_only_inside_its_registry(seeded: Api) -> None:
    api = seeded
    member, client, _ = await principal(api, "registry-editor")
    await bind(api, REGISTRY, member, "roles/cloudiot.editor")
    config = {"binaryData": base64.b64encode(b"c").decode()}
    async with client:
        await ok(client, "POST", f"/v1/{REGISTRY}/devices/dev-1:modifyCloudToDeviceConfig", config)
        await ok(client, "POST", f"/v1/{REGISTRY}/devices", {"id": "dev-new"})
        await ok(client, "GET", f"/v1/{REGISTRY}")
        for method, path, body in [
            ("POST", f"/v1/{OTHER_REGISTRY}/devices/dev-1:modifyCloudToDeviceConfig", config),
            ("GET", f"/v1/{OTHER_REGISTRY}/devices", None),
            ("GET", f"/v1/{PARENT}/registries", None),
            ("POST", f"/v1/{PARENT}/registries", {"id": "reg-new"}),
            ("GET", f"/v1/{TOPIC}", None),
            ("POST", f"/v1/{REGISTRY}:getIamPolicy", {}),
        ]:
            response = await client.request(method, path, json=body)
            assert response.status_code == 403, (path, response.text)
        asked = {"permissions": ["cloudiot.devices.updateConfig", "cloudiot.devices.get"]}
        mine = await ok(client, "POST", f"/v1/{REGISTRY}:testIamPermissions", asked)
        assert mine == {"permissions": ["cloudiot.devices.updateConfig", "cloudiot.devices.get"]}
        assert await ok(client, "POST", f"/v1/{OTHER_REGISTRY}:testIamPermissions", asked) == {}
        project = f"/ironcore/v1/projects/{PROJECT}:testIamPermissions"
        assert await ok(client, "POST", project, asked) == {}
        # Taken away, at once on this server.
        await ok(api.client, "POST", f"/v1/{REGISTRY}:setIamPolicy", {"policy": {}})
        response = await client.get(f"/v1/{REGISTRY}")
        assert response.status_code == 403, response.text


async def test_project_binding_grants_in_its_project_only(seeded: Api) -> None:
    api = seeded
    member, client, _ = await principal(api, "project-viewer")
    await bind(api, f"projects/{PROJECT}", member, "roles/viewer")
    async with client:
        await ok(client, "GET", f"/v1/{REGISTRY}/devices/dev-1")
        await ok(client, "GET", f"/v1/{TOPIC}")
        for path in [
            "/v1/projects/p2/locations/us-central1/registries",
            "/v1/projects/p2/topics",
            "/ironcore/v1/tokens",
        ]:
            response = await client.get(path)
            assert response.status_code == 403, (path, response.text)


async def test_admin_token_members_and_inert_members(seeded: Api) -> None:
    """An admin token is bound as `adminToken:<id>`; a `user:` binding grants only to that
    user's tokens (tests/api/test_user_tokens.py), a `group:` binding to no one."""
    api = seeded
    viewer = await api.as_role("viewer")
    token_id = viewer.headers["Authorization"].removeprefix("Bearer ic_").partition("_")[0]
    config = {"binaryData": base64.b64encode(b"c").decode()}
    path = f"/v1/{REGISTRY}/devices/dev-1:modifyCloudToDeviceConfig"
    async with viewer:
        assert (await viewer.post(path, json=config)).status_code == 403
        await bind(api, REGISTRY, "user:someone@example.com", "roles/cloudiot.editor")
        await bind(api, REGISTRY, "group:ops@example.com", "roles/cloudiot.editor")
        assert (await viewer.post(path, json=config)).status_code == 403
        await bind(api, REGISTRY, f"adminToken:{token_id}", "roles/cloudiot.deviceController")
        await ok(viewer, "POST", path, config)
        other = f"/v1/{OTHER_REGISTRY}/devices/dev-1:modifyCloudToDeviceConfig"
        assert (await viewer.post(other, json=config)).status_code == 403


async def test_a_policy_written_on_one_server_decides_on_another(
    seeded: Api, database: Database
) -> None:
    """Two servers of a cluster, sharing the database: a binding written through one takes
    effect on the other at its next read of the policies (`access.policies.POLL_SECONDS`)."""
    api = seeded
    store = await Store.open(database.url, database.schema)
    try:
        other = DeviceManager(store, clock=api.manager.clock, topics=PubSub(PubSubStore(store)))
        member, client, _ = await principal(api, "cluster-reader")
        token = client.headers["Authorization"]
        async with (
            client,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=admin_api(other)),
                base_url="http://ironcore",
                headers={"Authorization": token},
            ) as elsewhere,
        ):
            path = f"/v1/{REGISTRY}/devices/dev-1"
            assert (await elsewhere.get(path)).status_code == 403
            await bind(api, REGISTRY, member, "roles/cloudiot.viewer")
            assert (await client.get(path)).status_code == 200
            for _ in range(50):
                if (await elsewhere.get(path)).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the other server never took the binding")
            await ok(api.client, "POST", f"/v1/{REGISTRY}:setIamPolicy", {"policy": {}})
            for _ in range(50):
                if (await elsewhere.get(path)).status_code == 403:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the other server kept the binding")
    finally:
        await store.close()
