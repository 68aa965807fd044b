"""Admin tokens created for a person (`user:EMAIL`) and tokens with no role of their own: IAM
bindings naming the user grant to every token of theirs, and only there; the token's own
`adminToken:<id>` still works; rotation keeps the principal; the audit log names the person;
bad user names are refused; migration 0015 gives older tokens their `adminToken:<id>`. In
process, on SQLite and PostgreSQL (the same over the CLI and a real server is
tests/interop/test_contractor.py)."""

from __future__ import annotations

import base64
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import inspect

from ironcore.access.tokens import AdminTokens, hash_token
from ironcore.registry.iam import EMAIL_MAX as USER_MAX
from ironcore.registry.store import Store
from tests.api.errors import assert_error
from tests.api.test_auth_api import TOKENS, client
from tests.api.test_policy_matrix import OTHER_REGISTRY, PARENT, PROJECT, REGISTRY, bind, ok, seed
from tests.conftest import Api, Clock, Database
from tests.migrations import downgrade, revision_before

ALICE = "user:alice@example.com"
CONTROLLER = "roles/cloudiot.deviceController"
CONFIG = {"binaryData": base64.b64encode(b"c").decode()}


async def user_token(api: Api, name: str, user: str = "alice@example.com") -> dict[str, str]:
    """A token with no role of its own for `user`, as the API answers its creation."""
    created = await api.client.post(TOKENS, json={"role": "none", "name": name, "user": user})
    assert created.status_code == 200, created.text
    answer: dict[str, str] = created.json()
    return answer


def as_token(api: Api, token: str) -> httpx.AsyncClient:
    return client(api, {"Authorization": f"Bearer {token}"})


async def test_a_person_s_tokens_hold_what_their_bindings_grant(api: Api, clock: Clock) -> None:
    await seed(api)
    laptop = await user_token(api, "laptop", "Alice@Example.COM")
    ci = await user_token(api, "ci")
    assert laptop["principal"] == ci["principal"] == ALICE
    assert laptop["role"] == "none"
    listed = {t["name"]: t for t in (await api.client.get(TOKENS)).json()["tokens"]}
    assert listed["laptop"]["principal"] == listed["ci"]["principal"] == ALICE
    assert listed["laptop"]["id"] != listed["ci"]["id"]

    device = f"/v1/{REGISTRY}/devices/dev-1"
    async with as_token(api, laptop["token"]) as alice, as_token(api, ci["token"]) as alices_ci:
        # No role of its own: nothing at all before a binding.
        refused = assert_error(await alice.get(device), 403, "PERMISSION_DENIED")
        assert ALICE in refused["message"] and "has roles none" in refused["message"]
        # Bound in any case on one registry: deviceController there, for both tokens.
        await bind(api, REGISTRY, "user:ALICE@example.com", CONTROLLER)
        for http in (alice, alices_ci):
            clock.advance(1)  # a device's config changes at most once a second
            await ok(http, "POST", f"{device}:modifyCloudToDeviceConfig", CONFIG)
            await ok(http, "GET", device)
            await ok(http, "GET", f"/v1/{REGISTRY}/devices")
        for method, path, body in [
            ("POST", f"/v1/{REGISTRY}/devices", {"id": "dev-new"}),
            ("DELETE", device, None),
            ("POST", f"/v1/{REGISTRY}:getIamPolicy", {}),
            ("PATCH", f"/v1/{REGISTRY}?updateMask=logLevel", {"logLevel": "INFO"}),
            ("POST", f"/v1/{OTHER_REGISTRY}/devices/dev-1:modifyCloudToDeviceConfig", CONFIG),
            ("GET", f"/v1/{OTHER_REGISTRY}/devices/dev-1", None),
            ("GET", f"/v1/{PARENT}/registries", None),
            ("GET", f"/v1/projects/{PROJECT}/topics", None),
            ("GET", TOKENS, None),
        ]:
            response = await alice.request(method, path, json=body)
            assert response.status_code == 403, (method, path, response.text)
            assert ALICE in response.json()["error"]["message"]
        asked = {"permissions": ["cloudiot.devices.updateConfig", "cloudiot.devices.create"]}
        held = await ok(alice, "POST", f"/v1/{REGISTRY}:testIamPermissions", asked)
        assert held == {"permissions": ["cloudiot.devices.updateConfig"]}
        assert await ok(alice, "POST", f"/v1/{OTHER_REGISTRY}:testIamPermissions", asked) == {}

        # Rotation keeps the person: the new secret is granted the same.
        rotated = await ok(api.client, "POST", f"{TOKENS}/{listed['laptop']['id']}:rotate")
        assert rotated["principal"] == ALICE and rotated["role"] == "none"
    async with as_token(api, rotated["token"]) as alice:
        clock.advance(1)
        await ok(alice, "POST", f"{device}:modifyCloudToDeviceConfig", CONFIG)
        # Taken away from the person, taken from every token of theirs.
        await ok(api.client, "POST", f"/v1/{REGISTRY}:setIamPolicy", {"policy": {}})
        assert (await alice.get(device)).status_code == 403


async def test_a_person_s_token_keeps_its_own_member_and_its_own_role(api: Api) -> None:
    """A binding naming the token (`adminToken:<id>`) still grants to a person's token; a
    token with a role of its own holds it everywhere; a binding to another user, or to a
    group, grants nothing."""
    await seed(api)
    viewer = await api.client.post(TOKENS, json={"role": "viewer", "user": "bob@example.com"})
    assert viewer.status_code == 200, viewer.text
    token_id = viewer.json()["token"].split("_")[1]
    device = f"/v1/{REGISTRY}/devices/dev-1"
    async with as_token(api, viewer.json()["token"]) as bob:
        await ok(bob, "GET", f"/v1/{OTHER_REGISTRY}/devices/dev-1")
        await bind(api, REGISTRY, ALICE, CONTROLLER)
        await bind(api, REGISTRY, "group:bob@example.com", CONTROLLER)
        response = await bob.post(f"{device}:modifyCloudToDeviceConfig", json=CONFIG)
        assert response.status_code == 403, response.text
        await bind(api, REGISTRY, f"adminToken:{token_id}", CONTROLLER)
        await ok(bob, "POST", f"{device}:modifyCloudToDeviceConfig", CONFIG)
        other = f"/v1/{OTHER_REGISTRY}/devices/dev-1:modifyCloudToDeviceConfig"
        refused = assert_error(await bob.post(other, json=CONFIG), 403, "PERMISSION_DENIED")
        assert "user:bob@example.com has roles viewer" in refused["message"]


async def test_the_audit_log_names_the_person(api: Api) -> None:
    await seed(api)
    laptop = await user_token(api, "laptop")
    await bind(api, REGISTRY, ALICE, CONTROLLER)
    device = f"/v1/{REGISTRY}/devices/dev-1"
    async with as_token(api, laptop["token"]) as alice:
        await ok(alice, "POST", f"{device}:modifyCloudToDeviceConfig", CONFIG)
        assert (await alice.delete(device)).status_code == 403
    logged = await ok(api.client, "GET", f"/ironcore/v1/projects/{PROJECT}/auditLogs")
    mine = [e for e in logged["auditLogs"] if e["principal"] == ALICE]
    assert [(e["method"], e["status"]) for e in mine] == [
        ("DeleteDevice", "PERMISSION_DENIED"),
        ("ModifyCloudToDeviceConfig", "OK"),
    ]
    assert {e["authentication"] for e in mine} == {"adminToken"}


@pytest.mark.parametrize(
    "user",
    [
        "alice",
        "alice@",
        "@example.com",
        "alice@example",
        "alice@@example.com",
        "alice..b@example.com",
        "alice@-example.com",
        "alice smith@example.com",
        " alice@example.com",
        "alice@example.com\n",
        "user:alice@example.com",
        "élise@example.com",
        "\u212aate@example.com",  # the Kelvin sign, which lower() makes an ASCII k
        "a" * (USER_MAX - len("@example.com") + 1) + "@example.com",
    ],
)
async def test_a_user_that_is_not_an_email_address_is_refused(api: Api, user: str) -> None:
    before = len((await api.client.get(TOKENS)).json()["tokens"])
    response = await api.client.post(TOKENS, json={"role": "none", "user": user})
    error = assert_error(response, 400, "INVALID_ARGUMENT", "user")
    assert "not an email address" in error["message"]
    assert len((await api.client.get(TOKENS)).json()["tokens"]) == before


async def test_the_longest_user_is_taken(api: Api) -> None:
    user = "a" * (USER_MAX - len("@example.com")) + "@example.com"
    created = await api.client.post(TOKENS, json={"role": "none", "user": user})
    assert created.status_code == 200, created.text
    assert created.json()["principal"] == f"user:{user}"


async def test_an_unknown_role_names_the_roles(api: Api) -> None:
    response = await api.client.post(TOKENS, json={"role": "nobody", "user": "a@example.com"})
    error = assert_error(response, 400, "INVALID_ARGUMENT", "role")
    assert "viewer, editor, owner, none" in error["message"]


# Migration 0015


async def test_migration_0015_gives_older_tokens_their_own_principal(
    database: Database, clock: Clock
) -> None:
    store = await Store.open(database.url, database.schema)
    tokens = AdminTokens(store, clock)
    plain = await tokens.create("editor", "plain", clock.now + timedelta(days=1))
    person = await tokens.create("none", "a person's", user="carol@example.com")
    found = await tokens.find(hash_token(person))
    assert found is not None and found.principal == "user:carol@example.com"
    async with store.engine.begin() as conn:
        await conn.run_sync(downgrade, revision_before("0015"))
        columns = await conn.run_sync(
            lambda c: {col["name"] for col in inspect(c).get_columns("admin_tokens")}
        )
    assert "principal" not in columns and "expires_at" in columns
    await store.close()
    # Opening it again upgrades it: every token is valid and acts as adminToken:<id> (the
    # downgrade forgot the person, as revision 0014 had no place for one).
    store = await Store.open(database.url, database.schema)
    try:
        tokens = AdminTokens(store, clock)
        for token, role in [(plain, "editor"), (person, "none")]:
            record = await tokens.find(hash_token(token))
            assert record is not None and record.role == role
            assert record.principal == f"adminToken:{token.split('_')[1]}"
        # New tokens are written with their principal, as before the downgrade.
        again = await tokens.create("none", "again", user="carol@example.com")
        record = await tokens.find(hash_token(again))
        assert record is not None and record.principal == "user:carol@example.com"
    finally:
        await store.close()
