"""Admin authentication and roles: bearer tokens, what each role may do, token management, and
the endpoints that need no token. Against the in-process app on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from ironcore.registry.store.schema import admin_tokens
from tests.api.errors import assert_error, field_violations
from tests.conftest import Api

PARENT = "projects/p1/locations/us-central1"
REGISTRIES = f"/v1/{PARENT}/registries"
REGISTRY = f"{REGISTRIES}/reg-auth"
DEVICES = f"{REGISTRY}/devices"
TOKENS = "/ironcore/v1/tokens"


def client(api: Api, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """A client on the same app with the given headers and no token of its own."""
    return httpx.AsyncClient(
        transport=api.client._transport, base_url="http://ironcore", headers=headers or {}
    )


@pytest.fixture
async def anonymous(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    async with client(api) as anonymous:
        yield anonymous


@pytest.fixture
async def seeded(api: Api) -> dict[str, Any]:
    """A registry with one device (with a config history of two) and a gateway."""
    response = await api.client.post(REGISTRIES, json={"id": "reg-auth"})
    assert response.status_code == 200, response.text
    device = await api.client.post(DEVICES, json={"id": "dev-1", "metadata": {"a": "b"}})
    assert device.status_code == 200, device.text
    gateway = await api.client.post(
        DEVICES, json={"id": "gw-1", "gatewayConfig": {"gatewayType": "GATEWAY"}}
    )
    assert gateway.status_code == 200, gateway.text
    config = await api.client.post(
        f"{DEVICES}/dev-1:modifyCloudToDeviceConfig", json={"binaryData": "AQI="}
    )
    assert config.status_code == 200, config.text
    return {"device": (await api.client.get(f"{DEVICES}/dev-1")).json()}


# Every request that needs some permission; used to check 401 and 403 everywhere.
WRITES: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("POST", REGISTRIES, {"id": "reg-new"}, "cloudiot.registries.create"),
    ("PATCH", f"{REGISTRY}?updateMask=logLevel", {"logLevel": "DEBUG"}, "registries.update"),
    ("DELETE", REGISTRY, None, "cloudiot.registries.delete"),
    ("POST", DEVICES, {"id": "dev-new"}, "cloudiot.devices.create"),
    ("PATCH", f"{DEVICES}/dev-1?updateMask=blocked", {"blocked": True}, "devices.update"),
    ("DELETE", f"{DEVICES}/dev-1", None, "cloudiot.devices.delete"),
    (
        "POST",
        f"{DEVICES}/dev-1:modifyCloudToDeviceConfig",
        {"binaryData": "AA=="},
        "cloudiot.devices.updateConfig",
    ),
    ("POST", f"{DEVICES}/dev-1:sendCommandToDevice", {"binaryData": "AA=="}, "sendCommand"),
    (
        "POST",
        f"/ironcore{REGISTRY}:modifyCloudToDeviceConfigs",
        {"binaryData": "AA==", "allDevices": True},
        "cloudiot.devices.updateConfig",
    ),
    (
        "POST",
        f"{REGISTRY}:bindDeviceToGateway",
        {"gatewayId": "gw-1", "deviceId": "dev-1"},
        "cloudiot.devices.bindGateway",
    ),
    (
        "POST",
        f"{REGISTRY}:unbindDeviceFromGateway",
        {"gatewayId": "gw-1", "deviceId": "dev-1"},
        "cloudiot.devices.unbindGateway",
    ),
    ("POST", f"{REGISTRY}:setIamPolicy", {"policy": {}}, "cloudiot.registries.setIamPolicy"),
    ("POST", TOKENS, {"role": "owner"}, "ironcore.tokens.manage"),
    ("GET", TOKENS, None, "ironcore.tokens.manage"),
    ("DELETE", f"{TOKENS}/abcdef123456", None, "ironcore.tokens.manage"),
]
READS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", REGISTRIES, None),
    ("GET", REGISTRY, None),
    ("GET", DEVICES, None),
    ("GET", f"{DEVICES}/dev-1", None),
    ("GET", f"{DEVICES}/dev-1/configVersions", None),
    ("GET", f"{DEVICES}/dev-1/states", None),
    ("POST", f"{REGISTRY}:getIamPolicy", {}),
    ("POST", f"{REGISTRY}:testIamPermissions", {"permissions": ["cloudiot.devices.get"]}),
]


async def send(
    http: httpx.AsyncClient, method: str, url: str, body: dict[str, Any] | None
) -> httpx.Response:
    return await http.request(method, url, json=body)


async def snapshot(api: Api) -> dict[str, Any]:
    """Everything the writes above could change, read with the owner token."""
    out: dict[str, Any] = {}
    for key, url in [
        ("registries", REGISTRIES),
        ("registry", REGISTRY),
        ("devices", f"{DEVICES}?fieldMask=id,numId,blocked,metadata,config"),
        ("dev-1", f"{DEVICES}/dev-1"),
        ("configs", f"{DEVICES}/dev-1/configVersions"),
        ("bound", f"{DEVICES}?gatewayListOptions.associationsGatewayId=gw-1"),
        ("tokens", TOKENS),
    ]:
        response = await api.client.get(url)
        assert response.status_code == 200, response.text
        out[key] = response.json()
    policy = await api.client.post(f"{REGISTRY}:getIamPolicy", json={})
    out["policy"] = policy.json()
    return out


# 401


BAD_HEADERS = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer    "},
    {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="},
    {"Authorization": "Token ic_abc_def"},
    {"Authorization": "Bearer ic_000000000000_notARealSecret"},
    {"X-Goog-Api-Key": "AIzaSyA-not-a-token"},
]


async def test_requests_without_a_valid_token_are_unauthenticated(
    api: Api, seeded: dict[str, Any]
) -> None:
    before = await snapshot(api)
    for headers in BAD_HEADERS:
        async with client(api, headers) as http:
            for method, url, body, _ in WRITES:
                assert_error(await send(http, method, url, body), 401, "UNAUTHENTICATED")
            for method, url, body in READS:
                assert_error(await send(http, method, url, body), 401, "UNAUTHENTICATED")
    # A token with something appended is not the token.
    async with client(api, {"Authorization": f"Bearer {api.token}x"}) as http:
        assert_error(await http.get(REGISTRIES), 401, "UNAUTHENTICATED")
    assert await snapshot(api) == before


async def test_the_scheme_is_case_insensitive(api: Api) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        async with client(api, {"Authorization": f"{scheme} {api.token}"}) as http:
            response = await http.get(REGISTRIES)
            assert response.status_code == 200, (scheme, response.text)


async def test_401_wins_over_a_malformed_request(api: Api, anonymous: httpx.AsyncClient) -> None:
    for method, url, content in [
        ("POST", REGISTRIES, b"{not json"),
        ("POST", REGISTRIES, b'{"id": "reg-x", "bogus": 1}'),
        ("PATCH", f"{REGISTRY}?updateMask=nope", b"[]"),
        ("GET", "/v1/projects/BAD PROJECT/locations/x/registries", None),
        ("GET", "/v1/nowhere", None),
        ("PUT", REGISTRY, b"{}"),
    ]:
        response = await anonymous.request(method, url, content=content)
        assert_error(response, 401, "UNAUTHENTICATED")
    assert (await api.client.get(REGISTRIES)).json() == {"deviceRegistries": []}


# Token lifecycle


async def test_a_revoked_token_stops_working(api: Api) -> None:
    response = await api.client.post(TOKENS, json={"role": "editor", "name": "ci"})
    assert response.status_code == 200, response.text
    token = response.json()["token"]
    async with client(api, {"Authorization": f"Bearer {token}"}) as http:
        assert (await http.get(REGISTRIES)).status_code == 200
        assert (await http.post(REGISTRIES, json={"id": "reg-ci"})).status_code == 200

        listed = (await api.client.get(TOKENS)).json()["tokens"]
        [mine] = [t for t in listed if t["name"] == "ci"]
        assert token.startswith(f"ic_{mine['id']}_")
        response = await api.client.delete(f"{TOKENS}/{mine['id']}")
        assert response.status_code == 200 and response.json() == {}

        # The cache is cleared on revoke, so the very next request fails.
        assert_error(await http.get(REGISTRIES), 401, "UNAUTHENTICATED")
        assert_error(await http.post(REGISTRIES, json={"id": "reg-ci2"}), 401, "UNAUTHENTICATED")
    [mine] = [t for t in (await api.client.get(TOKENS)).json()["tokens"] if t["name"] == "ci"]
    assert mine["revoked"] is True
    # Revoking again, or an unknown id, is NOT_FOUND; other tokens keep working.
    assert_error(await api.client.delete(f"{TOKENS}/{mine['id']}"), 404, "NOT_FOUND")
    assert_error(await api.client.delete(f"{TOKENS}/000000000000"), 404, "NOT_FOUND")
    assert_error(await api.client.delete(f"{TOKENS}/a%00b"), 404, "NOT_FOUND")
    assert_error(await api.client.delete(f"{TOKENS}/x'--"), 404, "NOT_FOUND")
    assert [r["id"] for r in (await api.client.get(REGISTRIES)).json()["deviceRegistries"]] == [
        "reg-ci"
    ]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


async def test_a_token_revoked_elsewhere_stops_working_within_two_seconds(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revoke by another process (here: straight through the manager) does not clear this
    process's cache; the cached answer expires after 2 s."""
    clock = _Clock()
    monkeypatch.setattr("ironcore.access.callers.time", clock)
    token = await api.tokens.create("viewer", "elsewhere")
    async with client(api, {"Authorization": f"Bearer {token}"}) as http:
        assert (await http.get(REGISTRIES)).status_code == 200
        await api.tokens.revoke(token.split("_")[1])
        clock.now += 1.5
        assert (await http.get(REGISTRIES)).status_code == 200
        clock.now += 0.6
        assert_error(await http.get(REGISTRIES), 401, "UNAUTHENTICATED")


async def test_token_creation_shows_the_token_once(api: Api) -> None:
    response = await api.client.post(TOKENS, json={"role": "viewer", "name": "dashboard"})
    assert response.status_code == 200, response.text
    created = response.json()
    assert set(created) == {"token", "principal", "role", "name"}
    assert created["role"] == "viewer" and created["name"] == "dashboard"
    token = created["token"]
    token_id, secret = token.split("_")[1], token.split("_", 2)[2]
    assert len(secret) >= 32
    assert created["principal"] == f"adminToken:{token_id}"

    listing = await api.client.get(TOKENS)
    assert listing.status_code == 200
    tokens = listing.json()["tokens"]
    for item in tokens:
        assert set(item) == {
            "id",
            "principal",
            "name",
            "role",
            "createTime",
            "expireTime",
            "lastUseTime",
            "revoked",
        }
    [mine] = [t for t in tokens if t["id"] == token_id]
    assert mine["role"] == "viewer" and mine["name"] == "dashboard" and mine["revoked"] is False
    assert mine["principal"] == created["principal"]
    text = json.dumps(listing.json())
    assert secret not in text and api.token.split("_", 2)[2] not in text
    # Each creation makes a new token.
    again = (await api.client.post(TOKENS, json={"role": "viewer", "name": "dashboard"})).json()
    assert again["token"] != token


async def test_tokens_are_stored_hashed(api: Api) -> None:
    token = (await api.client.post(TOKENS, json={"role": "editor", "name": "hashed"})).json()[
        "token"
    ]
    async with api.manager.store.engine.connect() as conn:
        rows = [dict(row._mapping) for row in await conn.execute(select(admin_tokens))]
    assert len(rows) == 2  # the fixture's owner token and this one
    stored = " ".join(str(value) for row in rows for value in row.values())
    for plaintext in (token, api.token):
        assert plaintext not in stored
        assert plaintext.split("_", 2)[2] not in stored
    [row] = [r for r in rows if r["name"] == "hashed"]
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert row["role"] == "editor" and row["revoked_at"] == 0


async def test_bad_token_requests_are_refused(api: Api) -> None:
    before = (await api.client.get(TOKENS)).json()
    for body, field in [
        ({"role": "admin"}, "role"),
        # The Pub/Sub emulator port's caller (`access.callers.PUBSUB_EMULATOR`), not a token's.
        ({"role": "pubsub-client"}, "role"),
        ({"role": ""}, "role"),
        ({"name": "no role"}, "role"),
        ({"role": "viewer", "scopes": ["all"]}, "scopes"),
        ({"role": 1}, "role"),
        ({"role": "viewer", "name": "n" * 201}, "name"),
        ({"role": "viewer", "name": "a\x00b"}, "name"),
    ]:
        refused = await api.client.post(TOKENS, json=body)
        assert field in field_violations(assert_error(refused, 400, "INVALID_ARGUMENT", field))
    assert (await api.client.get(TOKENS)).json() == before
    # The longest name is kept whole, as shown at creation.
    created = await api.client.post(TOKENS, json={"role": "viewer", "name": "n" * 200})
    assert created.status_code == 200 and created.json()["name"] == "n" * 200
    names = [t["name"] for t in (await api.client.get(TOKENS)).json()["tokens"]]
    assert "n" * 200 in names


# Roles


async def test_a_viewer_reads_but_cannot_write(api: Api, seeded: dict[str, Any]) -> None:
    before = await snapshot(api)
    async with await api.as_role("viewer") as viewer:
        for method, url, body in READS:
            response = await send(viewer, method, url, body)
            assert response.status_code == 200, (method, url, response.text)
        for method, url, body, permission in WRITES:
            error = assert_error(await send(viewer, method, url, body), 403, "PERMISSION_DENIED")
            assert permission in error["message"], (url, error["message"])
    after = await snapshot(api)
    # The viewer token itself is the only new thing.
    assert len(after.pop("tokens")["tokens"]) == len(before.pop("tokens")["tokens"]) + 1
    assert after == before


async def test_an_editor_writes_but_cannot_set_policies_or_manage_tokens(
    api: Api, seeded: dict[str, Any]
) -> None:
    async with await api.as_role("editor") as editor:
        for method, url, body, _ in WRITES:
            if "setIamPolicy" in url or url.startswith(TOKENS):
                assert_error(await send(editor, method, url, body), 403, "PERMISSION_DENIED")
        response = await editor.post(REGISTRIES, json={"id": "reg-editor"})
        assert response.status_code == 200, response.text
        response = await editor.post(f"{REGISTRY}:getIamPolicy", json={})
        assert response.status_code == 200 and response.json() == {"etag": "ACAB"}
        response = await editor.post(
            f"{REGISTRY}:bindDeviceToGateway", json={"gatewayId": "gw-1", "deviceId": "dev-1"}
        )
        assert response.status_code == 200, response.text
        response = await editor.patch(
            f"{DEVICES}/dev-1", params={"updateMask": "blocked"}, json={"blocked": True}
        )
        assert response.status_code == 200 and response.json()["blocked"] is True
    policy = await api.client.post(f"{REGISTRY}:getIamPolicy", json={})
    assert policy.json() == {"etag": "ACAB"}
    names = [t["name"] for t in (await api.client.get(TOKENS)).json()["tokens"]]
    assert sorted(names) == ["test editor", "test owner"]


async def test_an_owner_may_do_everything(api: Api, seeded: dict[str, Any]) -> None:
    response = await api.client.post(
        f"{REGISTRY}:setIamPolicy",
        json={"policy": {"bindings": [{"role": "roles/viewer", "members": ["user:a@x.org"]}]}},
    )
    assert response.status_code == 200, response.text
    response = await api.client.post(TOKENS, json={"role": "owner", "name": "second owner"})
    assert response.status_code == 200
    async with client(api, {"Authorization": f"Bearer {response.json()['token']}"}) as second:
        assert (await second.get(TOKENS)).status_code == 200


# No token needed


async def test_health_readiness_and_metrics_need_no_token(
    api: Api, anonymous: httpx.AsyncClient
) -> None:
    assert (await api.client.get(REGISTRIES)).status_code == 200  # something to count
    healthz = await anonymous.get("/healthz")
    assert healthz.status_code == 200 and healthz.json() == {"status": "ok"}
    readyz = await anonymous.get("/readyz")
    assert readyz.status_code == 200
    assert readyz.json() == {"status": "ready", "components": {"database": "ok"}}
    metrics = await anonymous.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "ironcore_api_requests_total" in metrics.text
    openapi = await anonymous.get("/openapi.json")
    assert openapi.status_code == 200 and "/ironcore/v1/tokens" in openapi.json()["paths"]
    # Those paths are public; nothing next to them is.
    assert_error(await anonymous.get("/v1/healthz"), 401, "UNAUTHENTICATED")
