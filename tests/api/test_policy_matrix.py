"""Policies that decide: every predefined role, bound on the project to a principal with no
roles of its own, against every REST method, allowed or PERMISSION_DENIED exactly as
`access.roles.PERMISSIONS` (and the table in docs/access.md) says; a registry binding that
grants only inside its registry; a project binding only in its project; testIamPermissions
agreeing with what the calls do. In process, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

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


async def principal(api: Api, account_id: str) -> tuple[str, httpx.AsyncClient]:
    """A service account with no roles of its own, and a client with its access token."""
    accounts = ServiceAccounts(api.manager.store, api.manager.clock)
    account = await accounts.create(PROJECT, account_id, [])
    key = await accounts.create_key(PROJECT, account.email, "http://ironcore/token")
    token, _ = await accounts.issue_access_token(key.key.key_id)
    client = httpx.AsyncClient(
        transport=api.client._transport,
        base_url="http://ironcore",
        headers={"Authorization": f"Bearer {token}"},
    )
    return f"serviceAccount:{account.email}", client


async def bind(api: Api, resource: str, member: str, role: str) -> None:
    """Add a binding to the policy of `resource` (a project, registry, topic...)."""
    if resource.startswith("projects/") and resource.count("/") == 1:
        path = f"/ironcore/v1/{resource}"
    else:
        path = f"/v1/{resource}"
    policy = await ok(api.client, "POST", f"{path}:getIamPolicy", {})
    policy.setdefault("bindings", []).append({"role": role, "members": [member]})
    await ok(api.client, "POST", f"{path}:setIamPolicy", {"policy": policy})


def calls(slug: str) -> list[tuple[str, str, str, Any]]:
    """Every REST method: (the permission it checks, HTTP method, path, body). Creations and
    deletions act on names of this role's own (`slug`), so that every call of the matrix
    leaves the others' resources as they were."""
    dev = f"/v1/{REGISTRY}/devices/dev-1"
    ic_dev = f"/ironcore/v1/{REGISTRY}/devices/dev-1"
    config = {"binaryData": base64.b64encode(b"c").decode()}
    gateway = {"gatewayId": "gw-1", "deviceId": "dev-1"}
    return [
        ("cloudiot.registries.create", "POST", f"/v1/{PARENT}/registries", {"id": f"n-{slug}"}),
        ("cloudiot.registries.list", "GET", f"/v1/{PARENT}/registries", None),
        ("cloudiot.registries.get", "GET", f"/v1/{REGISTRY}", None),
        (
            "cloudiot.registries.update",
            "PATCH",
            f"/v1/{REGISTRY}?updateMask=logLevel",
            {"logLevel": "INFO"},
        ),
        ("cloudiot.registries.getIamPolicy", "POST", f"/v1/{REGISTRY}:getIamPolicy", {}),
        (
            "cloudiot.registries.setIamPolicy",
            "POST",
            f"/v1/{REGISTRY}:setIamPolicy",
            {"policy": {}},
        ),
        ("cloudiot.devices.bindGateway", "POST", f"/v1/{REGISTRY}:bindDeviceToGateway", gateway),
        (
            "cloudiot.devices.unbindGateway",
            "POST",
            f"/v1/{REGISTRY}:unbindDeviceFromGateway",
            gateway,
        ),
        ("cloudiot.devices.create", "POST", f"/v1/{REGISTRY}/devices", {"id": f"n-{slug}"}),
        ("cloudiot.devices.list", "GET", f"/v1/{REGISTRY}/devices", None),
        ("cloudiot.devices.get", "GET", dev, None),
        ("cloudiot.devices.get", "GET", f"{dev}/configVersions", None),
        ("cloudiot.devices.get", "GET", f"{dev}/states", None),
        (
            "cloudiot.devices.update",
            "PATCH",
            f"{dev}?updateMask=metadata",
            {"metadata": {"k": "v"}},
        ),
        ("cloudiot.devices.updateConfig", "POST", f"{dev}:modifyCloudToDeviceConfig", config),
        ("cloudiot.devices.sendCommand", "POST", f"{dev}:sendCommandToDevice", config),
        ("cloudiot.devices.delete", "DELETE", f"/v1/{REGISTRY}/devices/d-{slug}", None),
        ("cloudiot.registries.delete", "DELETE", f"/v1/{PARENT}/registries/d-{slug}", None),
        (
            "ironcore.manifests.import",
            "POST",
            f"/ironcore/v1/{REGISTRY}:importManifest",
            {"manifest": "{}", "dryRun": True},
        ),
        ("ironcore.devices.rotateCredentials", "POST", f"{ic_dev}:rotateKey", {}),
        ("cloudiot.devices.get", "GET", f"{ic_dev}/keyRotation", None),
        ("ironcore.devices.rotateCredentials", "POST", f"{ic_dev}:rollbackKeyRotation", {}),
        ("cloudiot.devices.get", "GET", f"{ic_dev}/credentialProvenance", None),
        ("ironcore.revocations.manage", "POST", f"{ic_dev}:reattest", {}),
        ("ironcore.revocations.list", "GET", "/ironcore/v1/revocations", None),
        ("ironcore.revocations.manage", "POST", "/ironcore/v1/revocations", {"certificate": "x"}),
        (
            "ironcore.firmware.upload",
            "POST",
            f"/ironcore/v1/projects/{PROJECT}/firmware",
            {"image": "eA==", "manifest": "x"},
        ),
        ("ironcore.firmware.get", "GET", f"/ironcore/v1/projects/{PROJECT}/firmware", None),
        ("ironcore.firmware.rollout", "POST", f"/ironcore/v1/{REGISTRY}/rollouts", {"sha256": "x"}),
        ("ironcore.firmware.get", "GET", f"/ironcore/v1/{REGISTRY}/rollouts", None),
        ("ironcore.tokens.manage", "GET", "/ironcore/v1/tokens", None),
        (
            "ironcore.serviceAccounts.manage",
            "GET",
            f"/ironcore/v1/projects/{PROJECT}/serviceAccounts",
            None,
        ),
        (
            "resourcemanager.projects.getIamPolicy",
            "POST",
            f"/ironcore/v1/projects/{PROJECT}:getIamPolicy",
            {},
        ),
        ("pubsub.topics.create", "PUT", f"/v1/projects/{PROJECT}/topics/n-{slug}", {}),
        ("pubsub.topics.list", "GET", f"/v1/projects/{PROJECT}/topics", None),
        ("pubsub.topics.get", "GET", f"/v1/{TOPIC}", None),
        ("pubsub.topics.publish", "POST", f"/v1/{TOPIC}:publish", {"messages": [{"data": "eA=="}]}),
        ("pubsub.topics.getIamPolicy", "POST", f"/v1/{TOPIC}:getIamPolicy", {}),
        ("pubsub.topics.setIamPolicy", "POST", f"/v1/{TOPIC}:setIamPolicy", {"policy": {}}),
        ("pubsub.topics.delete", "DELETE", f"/v1/projects/{PROJECT}/topics/d-{slug}", None),
        (
            "pubsub.subscriptions.create",
            "PUT",
            f"/v1/projects/{PROJECT}/subscriptions/n-{slug}",
            {"topic": TOPIC},
        ),
        ("pubsub.subscriptions.list", "GET", f"/v1/projects/{PROJECT}/subscriptions", None),
        ("pubsub.subscriptions.get", "GET", f"/v1/{SUBSCRIPTION}", None),
        (
            "pubsub.subscriptions.consume",
            "POST",
            f"/v1/{SUBSCRIPTION}:pull",
            {"maxMessages": 1, "returnImmediately": True},
        ),
        ("pubsub.subscriptions.consume", "POST", f"/v1/{SUBSCRIPTION}:acknowledge", {"ackIds": []}),
        ("pubsub.subscriptions.getIamPolicy", "POST", f"/v1/{SUBSCRIPTION}:getIamPolicy", {}),
        (
            "pubsub.subscriptions.setIamPolicy",
            "POST",
            f"/v1/{SUBSCRIPTION}:setIamPolicy",
            {"policy": {}},
        ),
        (
            "pubsub.subscriptions.delete",
            "DELETE",
            f"/v1/projects/{PROJECT}/subscriptions/d-{slug}",
            None,
        ),
        # Last: an owner's empty project policy would take the binding away.
        (
            "resourcemanager.projects.setIamPolicy",
            "POST",
            f"/ironcore/v1/projects/{PROJECT}:setIamPolicy",
            {"policy": {}},
        ),
    ]


@pytest.fixture
async def seeded(api: Api) -> AsyncIterator[Api]:
    await seed(api)
    yield api


def slug_of(role: str) -> str:
    return role.removeprefix("roles/").replace(".", "-").lower()


async def test_every_role_on_every_method(seeded: Api) -> None:
    api = seeded
    checked = set()
    # Each predefined role bound on the project to an account with no roles of its own; then
    # each admin token role, held of its own (`none`: nothing).
    for role in (*GOOGLE_ROLES, *ROLES):
        token = role in ROLES
        held = frozenset() if role == NO_ROLE else PERMISSIONS[role]
        slug = f"token-{role}" if token else slug_of(role)
        if token:
            client = await api.as_role(role)
        else:
            member, client = await principal(api, f"acct-{slug}"[:30].rstrip("-"))
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
                expected = [p for p in sorted(held) if p.startswith(APPLICABLE[kind])]
                assert answer.get("permissions", []) == expected, resource
            for permission, method, path, body in calls(slug):
                checked.add(permission)
                response = await client.request(method, path, json=body)
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
        # The owner's token sets the project's policy back to none for the next role.
        await ok(
            api.client, "POST", f"/ironcore/v1/projects/{PROJECT}:setIamPolicy", {"policy": {}}
        )
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
    member, client = await principal(api, "registry-editor")
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
    member, client = await principal(api, "project-viewer")
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
        member, client = await principal(api, "cluster-reader")
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
