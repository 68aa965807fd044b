"""The audit log over REST: an entry for every change and every refusal, in the change's own
transaction, without secrets; read by project with filters and pages; never changed or
deleted through the API. Against the in-process app on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from ironcore.registry.store import audit
from ironcore.registry.store.schema import audit_log
from tests.conftest import Api

PROJECT = "p1"
PARENT = f"projects/{PROJECT}/locations/us-central1"
REGISTRIES = f"/v1/{PARENT}/registries"
REGISTRY = f"{REGISTRIES}/reg-audit"
DEVICES = f"{REGISTRY}/devices"
AUDIT = f"/ironcore/v1/projects/{PROJECT}/auditLogs"


async def entries(api: Api, **params: Any) -> list[dict[str, Any]]:
    """Every entry the API lists with `params`, following pages."""
    found: list[dict[str, Any]] = []
    token = ""
    while True:
        page = await api.client.get(AUDIT, params={**params, "pageToken": token})
        assert page.status_code == 200, page.text
        found.extend(page.json().get("auditLogs", []))
        token = page.json().get("nextPageToken", "")
        if not token:
            return found


async def count_rows(api: Api) -> int:
    async with api.manager.store.read() as conn:
        found = await conn.scalar(select(func.count()).select_from(audit_log))
    assert isinstance(found, int)
    return found


def token_id(token: str) -> str:
    return token.removeprefix("ic_").partition("_")[0]


async def test_changes_are_recorded_with_who_where_and_before_after(api: Api) -> None:
    assert (await api.client.post(REGISTRIES, json={"id": "reg-audit"})).status_code == 200
    created = await api.client.post(DEVICES, json={"id": "dev-1", "metadata": {"a": "b"}})
    assert created.status_code == 200, created.text
    patched = await api.client.patch(
        f"{DEVICES}/dev-1",
        params={"updateMask": "blocked,metadata"},
        json={"blocked": True, "metadata": {"a": "c"}},
    )
    assert patched.status_code == 200, patched.text
    # Reads change nothing and leave no entry.
    assert (await api.client.get(f"{DEVICES}/dev-1")).status_code == 200

    found = await entries(api)
    assert [e["method"] for e in found] == ["UpdateDevice", "CreateDevice", "CreateDeviceRegistry"]
    update, create, _ = found
    for entry in found:
        assert entry["principal"] == f"adminToken:{token_id(api.token)}"
        assert entry["authentication"] == "adminToken"
        assert entry["clientAddress"] == "127.0.0.1"
        assert entry["status"] == "OK"
        assert entry["time"].endswith("Z")
    # A create names what it created, so that a filter on the resource finds its creation.
    assert create["resource"] == f"{PARENT}/registries/reg-audit/devices/dev-1"
    assert create["request"]["body"] == {"id": "dev-1", "metadata": {"a": "b"}}
    assert update["resource"] == f"{PARENT}/registries/reg-audit/devices/dev-1"
    assert update["request"]["query"] == {"updateMask": "blocked,metadata"}
    assert update["changes"] == {
        "blocked": {"before": None, "after": True},
        "metadata": {"before": {"a": "b"}, "after": {"a": "c"}},
    }


async def test_a_change_refused_inside_its_transaction_leaves_no_entry(api: Api) -> None:
    assert (await api.client.post(REGISTRIES, json={"id": "reg-audit"})).status_code == 200
    before = await count_rows(api)
    again = await api.client.post(REGISTRIES, json={"id": "reg-audit"})
    assert again.status_code == 409, again.text
    bad = await api.client.patch(
        REGISTRY, params={"updateMask": "logLevel"}, json={"logLevel": "LOUD"}
    )
    assert bad.status_code == 400, bad.text
    # Transactions that find nothing to change: what they would change is gone, or was
    # changed by someone else meanwhile (a stale etag).
    gone = await api.client.delete(f"{REGISTRIES}/reg-gone")
    assert gone.status_code == 404, gone.text
    stale = await api.client.post(f"{REGISTRY}:setIamPolicy", json={"policy": {"etag": "BwX="}})
    assert stale.status_code == 409, stale.text
    topic = f"/v1/projects/{PROJECT}/topics/audit-t"
    assert (await api.client.put(topic, json={})).status_code == 200
    gateway = {"id": "gw-1", "gatewayConfig": {"gatewayType": "GATEWAY"}}
    for device in (gateway, {"id": "dev-1"}):
        assert (await api.client.post(DEVICES, json=device)).status_code == 200
    before = await count_rows(api)
    stale = await api.client.post(f"{topic}:setIamPolicy", json={"policy": {"etag": "BwX="}})
    assert stale.status_code == 409, stale.text
    unbound = await api.client.post(
        f"{REGISTRY}:unbindDeviceFromGateway", json={"gatewayId": "gw-1", "deviceId": "dev-1"}
    )
    assert unbound.status_code == 404, unbound.text
    for missing in ("/ironcore/v1/tokens/0123456789ab", f"{DEVICES}/dev-none"):
        assert (await api.client.delete(missing)).status_code == 404, missing
    assert await count_rows(api) == before


async def test_denials_and_authentication_failures_are_recorded(api: Api) -> None:
    assert (await api.client.post(REGISTRIES, json={"id": "reg-audit"})).status_code == 200
    guess = "ic_0123456789abcdef_not-a-real-secret"
    async with httpx.AsyncClient(
        transport=api.client._transport,
        base_url="http://ironcore",
        headers={"Authorization": f"Bearer {guess}"},
    ) as stranger:
        refused = await stranger.post(DEVICES, json={"id": "dev-x"})
    assert refused.status_code == 401
    async with await api.as_role("viewer") as viewer:
        denied = await viewer.delete(REGISTRY)
        assert denied.status_code == 403
        viewer_token = viewer.headers["Authorization"].removeprefix("Bearer ")

    unauthenticated = await entries(api, filter="status=UNAUTHENTICATED")
    assert len(unauthenticated) == 1
    assert unauthenticated[0]["principal"] == ""
    assert unauthenticated[0]["resource"] == f"{PARENT}/registries/reg-audit/devices"
    assert unauthenticated[0]["authentication"] == "adminToken"
    assert guess not in json.dumps(unauthenticated)
    denials = await entries(api, filter="status=PERMISSION_DENIED")
    assert len(denials) == 1
    assert denials[0]["principal"] == f"adminToken:{token_id(viewer_token)}"
    assert denials[0]["method"] == "DeleteDeviceRegistry"
    assert "cloudiot.registries.delete" in denials[0]["message"]
    assert denials[0]["resource"] == f"{PARENT}/registries/reg-audit"


async def test_denials_are_rate_limited_per_address(api: Api) -> None:
    async with httpx.AsyncClient(
        transport=api.client._transport,
        base_url="http://ironcore",
        headers={"Authorization": "Bearer nope"},
    ) as stranger:
        for _ in range(30):
            assert (await stranger.get(REGISTRIES)).status_code == 401
    assert len(await entries(api, filter="status=UNAUTHENTICATED")) == 20


async def test_no_secret_reaches_an_entry_or_the_log(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ironcore.registry.store.audit")
    secrets = [api.token]
    made = await api.client.post("/ironcore/v1/tokens", json={"role": "viewer", "name": "t"})
    assert made.status_code == 200, made.text
    secrets.append(made.json()["token"])
    account = await api.client.post(
        f"/ironcore/v1/projects/{PROJECT}/serviceAccounts", json={"accountId": "backend-1"}
    )
    assert account.status_code == 200, account.text
    key = await api.client.post(
        f"/ironcore/v1/projects/{PROJECT}/serviceAccounts/{account.json()['email']}/keys"
    )
    assert key.status_code == 200, key.text
    key_file = json.loads(base64.b64decode(key.json()["privateKeyData"]))
    secrets += [key.json()["privateKeyData"], key_file["private_key"]]
    secrets.append(key_file["private_key"].splitlines()[1])
    # Secrets sent in a request body are left out as well, whatever their depth.
    registry = await api.client.post(
        REGISTRIES, json={"id": "reg-audit", "passphrase": "hunter2-passphrase"}
    )
    assert registry.status_code == 400  # an unknown field; refused, and no entry
    assert (await api.client.post(REGISTRIES, json={"id": "reg-audit"})).status_code == 200
    device = await api.client.post(
        DEVICES,
        json={
            "id": "dev-s",
            "metadata": {"private_key": "pk-secret-value", "token": "t0ken-x", "k": "v"},
        },
    )
    assert device.status_code == 200, device.text
    secrets += ["hunter2-passphrase", "t0ken-x", "pk-secret-value"]
    topic = await api.client.put(f"/v1/projects/{PROJECT}/topics/audit-t", json={})
    assert topic.status_code == 200, topic.text
    push = await api.client.put(
        f"/v1/projects/{PROJECT}/subscriptions/audit-s",
        json={
            "topic": f"projects/{PROJECT}/topics/audit-t",
            "pushConfig": {"pushEndpoint": "https://127.0.0.1:9/push"},
        },
    )
    assert push.status_code == 200, push.text
    secrets.append(push.json()["pushConfig"]["signingSecret"])

    everything = await api.client.get("/ironcore/v1/projects/-/auditLogs")
    assert everything.status_code == 200
    listed = everything.json()["auditLogs"]
    assert {e["method"] for e in listed} >= {
        "CreateToken",
        "CreateServiceAccount",
        "CreateServiceAccountKey",
        "CreateDevice",
        "CreateSubscription",
    }
    device_entry = next(e for e in listed if e["method"] == "CreateDevice")
    assert device_entry["request"]["body"]["metadata"] == {"k": "v"}
    text = json.dumps(listed) + caplog.text
    assert "audit {" in caplog.text  # written to the log as well
    for secret in secrets:
        assert secret not in text, secret


async def test_filters_and_pages(api: Api) -> None:
    assert (await api.client.post(REGISTRIES, json={"id": "reg-audit"})).status_code == 200
    for n in range(5):
        made = await api.client.post(DEVICES, json={"id": f"dev-{n}"})
        assert made.status_code == 200
    everything = await entries(api, pageSize=2)
    assert len(everything) == 6
    assert len({e["id"] for e in everything}) == 6
    first = await api.client.get(AUDIT, params={"pageSize": 2})
    assert len(first.json()["auditLogs"]) == 2 and first.json()["nextPageToken"]

    assert len(await entries(api, filter="method=CreateDevice")) == 5
    assert len(await entries(api, filter=f"resource:{PARENT}/registries/reg-audit/")) == 5
    assert len(await entries(api, filter=f"resource:{PARENT}/registries/other")) == 0
    principal = f"adminToken:{token_id(api.token)}"
    assert len(await entries(api, filter=f'principal="{principal}" AND status=OK')) == 6
    assert await entries(api, filter="principal=serviceAccount:x@y") == []
    oldest = everything[-1]["time"]
    assert len(await entries(api, filter=f"time>{oldest}")) == 5
    assert len(await entries(api, filter=f"time>={oldest} AND time<={oldest}")) == 1
    assert len(await entries(api, filter="time<2000-01-01T00:00:00Z")) == 0
    # Another project's entries are not this one's.
    other = await api.client.get("/ironcore/v1/projects/p2/auditLogs")
    assert other.status_code == 200 and other.json() == {"auditLogs": []}

    for bad in ("nonsense", "colour=red", "time>yesterday", "time:2026", "status>OK"):
        refused = await api.client.get(AUDIT, params={"filter": bad})
        assert refused.status_code == 400, (bad, refused.text)
        assert refused.json()["error"]["status"] == "INVALID_ARGUMENT"
    for bad_token in ("!!!", base64.urlsafe_b64encode(b"x").decode()):
        refused = await api.client.get(AUDIT, params={"pageToken": bad_token})
        assert refused.status_code == 400, refused.text
    assert (await api.client.get(AUDIT, params={"pageSize": -1})).status_code == 400


async def test_entries_cannot_be_changed_or_deleted_or_read_without_permission(api: Api) -> None:
    assert (await api.client.post(REGISTRIES, json={"id": "reg-audit"})).status_code == 200
    [entry] = await entries(api)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        answer = await api.client.request(method, AUDIT, json={})
        assert answer.status_code == 405, (method, answer.text)
        one = await api.client.request(method, f"{AUDIT}/{entry['id']}", json={})
        assert one.status_code in (404, 405), (method, one.text)
    async with await api.as_role("editor") as editor:
        assert (await editor.get(AUDIT)).status_code == 403
    assert [e["id"] for e in await entries(api, filter="status=OK")] == [entry["id"]]


@pytest.mark.databases("sqlite")
async def test_a_change_whose_entry_cannot_be_written_is_not_made(api: Api) -> None:
    """The entry is written in the change's transaction: when the database refuses the entry,
    the change is rolled back with it (and a crash between the two cannot happen)."""
    store = api.manager.store
    async with store.write() as conn:
        await conn.execute(
            text(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit log refused'); END"
            )
        )
    # The in-process transport hands the app's exception to the caller (a server answers 500).
    with pytest.raises(IntegrityError, match="audit log refused"):
        await api.client.post(REGISTRIES, json={"id": "reg-audit"})
    async with store.write() as conn:
        await conn.execute(text("DROP TRIGGER refuse_audit"))
    assert (await api.client.get(REGISTRY)).status_code == 404
    assert await count_rows(api) == 0
    assert (await api.client.post(REGISTRIES, json={"id": "reg-audit"})).status_code == 200
    assert await count_rows(api) == 1


async def test_retention_deletes_only_entries_older_than_the_cutoff(api: Api) -> None:
    assert (await api.client.post(REGISTRIES, json={"id": "reg-audit"})).status_code == 200
    [entry] = await entries(api)
    written = int(
        datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp() * 1_000_000
    )
    assert await api.manager.store.audit.delete_before(written) == 0
    assert await count_rows(api) == 1
    assert await api.manager.store.audit.delete_before(written + 1) == 1
    assert await entries(api) == []
    # The sweep is not a change anyone made: it leaves no entry of its own.
    assert await count_rows(api) == 0


async def test_a_task_started_by_a_call_records_nothing_after_the_call(api: Api) -> None:
    """A task copies its context, actor included; its writes after the call are not the
    call's change."""
    actor = audit.Actor("rest", "adminToken:x", "adminToken", "", "CreateDevice", "projects/p1")
    token = audit.acting(actor)
    try:
        later = asyncio.get_running_loop().create_future()

        async def background() -> None:
            await later
            async with api.manager.store.write() as conn:
                await conn.execute(text("SELECT 1"))

        task = asyncio.create_task(background())
        async with api.manager.store.write() as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        audit.done(token)
    later.set_result(None)
    await task
    assert await count_rows(api) == 1


async def test_creates_name_what_they_created(api: Api) -> None:
    assert (await api.client.post(REGISTRIES, json={"id": "reg-audit"})).status_code == 200
    assert (await api.client.post(DEVICES, json={"id": "dev-1"})).status_code == 200
    token = await api.client.post("/ironcore/v1/tokens", json={"role": "viewer", "name": "t"})
    assert token.status_code == 200, token.text
    account = await api.client.post(
        f"/ironcore/v1/projects/{PROJECT}/serviceAccounts", json={"accountId": "backend-1"}
    )
    assert account.status_code == 200, account.text
    email = account.json()["email"]
    key = await api.client.post(f"/ironcore/v1/projects/{PROJECT}/serviceAccounts/{email}/keys")
    assert key.status_code == 200, key.text

    device = f"{PARENT}/registries/reg-audit/devices/dev-1"
    [created] = await entries(api, filter=f"resource={device}")
    assert created["method"] == "CreateDevice"
    [registry] = await entries(api, filter=f"resource={PARENT}/registries/reg-audit")
    assert registry["method"] == "CreateDeviceRegistry"
    accounts = f"projects/{PROJECT}/serviceAccounts/{email}"
    assert [e["method"] for e in await entries(api, filter=f"resource:{accounts}")] == [
        "CreateServiceAccountKey",
        "CreateServiceAccount",
    ]
    [key_entry] = await entries(api, filter="method=CreateServiceAccountKey")
    assert key_entry["resource"] == key.json()["name"]
    listed = await api.client.get(
        "/ironcore/v1/projects/-/auditLogs", params={"filter": "method=CreateToken"}
    )
    [token_entry] = listed.json()["auditLogs"]
    assert token_entry["resource"] == f"tokens/{token_id(token.json()['token'])}"


async def test_config_and_policy_updates_record_before_and_after(api: Api) -> None:
    assert (await api.client.post(REGISTRIES, json={"id": "reg-audit"})).status_code == 200
    first = base64.b64encode(b"first config").decode()
    made = await api.client.post(DEVICES, json={"id": "dev-1", "config": {"binaryData": first}})
    assert made.status_code == 200, made.text
    second = base64.b64encode(b"second").decode()
    modified = await api.client.post(
        f"{DEVICES}/dev-1:modifyCloudToDeviceConfig", json={"binaryData": second}
    )
    assert modified.status_code == 200, modified.text
    [config] = await entries(api, filter="method=ModifyCloudToDeviceConfig")
    sha = {data: hashlib.sha256(data).hexdigest() for data in (b"first config", b"second")}
    assert config["changes"] == {
        "version": {"before": 1, "after": 2},
        "binaryData": {
            "before": {"size": 12, "sha256": sha[b"first config"]},
            "after": {"size": 6, "sha256": sha[b"second"]},
        },
    }
    assert config["request"]["body"] == {"binaryData": {"size": 6, "sha256": sha[b"second"]}}
    [device] = await entries(api, filter="method=CreateDevice")
    assert first not in json.dumps(device) and second not in json.dumps(config)

    binding = {"role": "roles/cloudiot.viewer", "members": ["user:a@example.com"]}
    for path in (
        f"{REGISTRY}:setIamPolicy",
        f"/ironcore/v1/projects/{PROJECT}:setIamPolicy",
    ):
        for bindings in ([binding], []):
            written = await api.client.post(path, json={"policy": {"bindings": bindings}})
            assert written.status_code == 200, written.text
    topic = f"/v1/projects/{PROJECT}/topics/audit-t"
    assert (await api.client.put(topic, json={})).status_code == 200
    written = await api.client.post(
        f"{topic}:setIamPolicy", json={"policy": {"bindings": [binding]}}
    )
    assert written.status_code == 200, written.text
    policies = await entries(api, filter="method:Set")
    assert [(e["method"], e["changes"]) for e in policies] == [
        ("SetPubSubIamPolicy", {"bindings": {"before": [], "after": [binding]}}),
        ("SetProjectIamPolicy", {"bindings": {"before": [binding], "after": []}}),
        ("SetProjectIamPolicy", {"bindings": {"before": [], "after": [binding]}}),
        ("SetIamPolicy", {"bindings": {"before": [binding], "after": []}}),
        ("SetIamPolicy", {"bindings": {"before": [], "after": [binding]}}),
    ]

    token = await api.client.post("/ironcore/v1/tokens", json={"role": "viewer", "name": "t"})
    revoked = await api.client.delete(f"/ironcore/v1/tokens/{token_id(token.json()['token'])}")
    assert revoked.status_code == 200, revoked.text
    listed = await api.client.get(
        "/ironcore/v1/projects/-/auditLogs", params={"filter": "method=RevokeToken"}
    )
    [revoke] = listed.json()["auditLogs"]
    assert revoke["changes"] == {"revoked": {"before": False, "after": True}}


async def test_a_command_is_recorded_with_its_result_and_without_its_data(api: Api) -> None:
    assert (await api.client.post(REGISTRIES, json={"id": "reg-audit"})).status_code == 200
    assert (await api.client.post(DEVICES, json={"id": "dev-1"})).status_code == 200
    data = base64.b64encode(b"reboot now").decode()
    sent = await api.client.post(
        f"{DEVICES}/dev-1:sendCommandToDevice", json={"binaryData": data, "subfolder": "sys"}
    )
    assert sent.status_code == 400, sent.text  # not connected: FAILED_PRECONDITION
    assert sent.json()["error"]["status"] == "FAILED_PRECONDITION"
    # A command refused for its request is not sent, and not recorded.
    bad = await api.client.post(
        f"{DEVICES}/dev-1:sendCommandToDevice", json={"binaryData": data, "subfolder": "a+b"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"
    [command] = await entries(api, filter="method=SendCommandToDevice")
    assert command["status"] == "FAILED_PRECONDITION"
    assert command["resource"] == f"{PARENT}/registries/reg-audit/devices/dev-1"
    assert "not connected" in command["message"]
    assert command["request"]["body"] == {
        "binaryData": {"size": 10, "sha256": hashlib.sha256(b"reboot now").hexdigest()},
        "subfolder": "sys",
    }
    assert data not in json.dumps(command)


async def test_credentials_in_urls_are_redacted(api: Api) -> None:
    topic = f"projects/{PROJECT}/topics/audit-t"
    assert (await api.client.put(f"/v1/{topic}", json={})).status_code == 200
    endpoint = "https://pushuser:pushpass@127.0.0.1:9/push?token=qtoken&x-api-key=k3y&plain=1"
    push = await api.client.put(
        f"/v1/projects/{PROJECT}/subscriptions/audit-s",
        json={"topic": topic, "pushConfig": {"pushEndpoint": endpoint}},
    )
    assert push.status_code == 200, push.text
    [entry] = await entries(api, filter="method=CreateSubscription")
    recorded = entry["request"]["body"]["pushConfig"]["pushEndpoint"]
    assert recorded == (
        "https://REDACTED@127.0.0.1:9/push?token=REDACTED&x-api-key=REDACTED&plain=1"
    )
    for secret in ("pushuser", "pushpass", "qtoken", "k3y"):
        assert secret not in json.dumps(entry), secret
    # At any depth, and inside longer strings.
    nested = audit.redacted(
        {
            "a": [{"b": "see http://u:p4ss@h/x and ftp://h/y?sig=s1g"}],
            "c": "no url",
            "d": "https://h/kept?page=2&",  # nothing to hide: kept as written
            "e": "http://[::1",  # not a URL that parses: left out whole
        }
    )
    assert nested == {
        "a": [{"b": "see http://REDACTED@h/x and ftp://h/y?sig=REDACTED"}],
        "c": "no url",
        "d": "https://h/kept?page=2&",
        "e": "REDACTED",
    }
