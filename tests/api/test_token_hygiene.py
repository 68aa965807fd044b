"""Admin token hygiene: expiry, last use, rotation, and the bad input of each. Against the
in-process app on SQLite and PostgreSQL; the cluster-wide effect of revocation, rotation and
expiry is tests/ops/test_token_cluster.py."""

from __future__ import annotations

import types
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import inspect

from ironcore.access.tokens import MAX_LIFETIME, AdminTokens, hash_token, parse_duration
from ironcore.registry.store import Store
from ironcore.registry.wire import format_timestamp, parse_timestamp
from tests.api.errors import assert_error, field_violations
from tests.api.test_auth_api import REGISTRIES, TOKENS, client
from tests.conftest import Api, Clock, Database
from tests.migrations import downgrade, revision_before


def app_tokens(api: Api) -> AdminTokens:
    """The app's own AdminTokens, which notes the uses its authenticator sees."""
    tokens: AdminTokens = api.client._transport.app.state.tokens  # type: ignore[attr-defined]
    return tokens


def listed(tokens: list[dict[str, object]], token_id: str) -> dict[str, object]:
    [mine] = [t for t in tokens if t["id"] == token_id]
    return mine


@pytest.fixture
def moving(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The test clock, driving the authenticator's cache too."""
    fake = types.SimpleNamespace(monotonic=lambda: clock.now.timestamp())
    monkeypatch.setattr("ironcore.access.callers.time", fake)
    return clock


async def test_a_token_with_a_lifetime_stops_working_when_it_expires(
    api: Api, moving: Clock
) -> None:
    created = (await api.client.post(TOKENS, json={"role": "viewer", "ttl": "1h"})).json()
    assert parse_timestamp(created["expireTime"]) == moving.now + timedelta(hours=1)
    token = created["token"]
    token_id = token.split("_")[1]
    async with client(api, {"Authorization": f"Bearer {token}"}) as http:
        assert (await http.get(REGISTRIES)).status_code == 200
        moving.advance(3599)
        assert (await http.get(REGISTRIES)).status_code == 200
        moving.advance(1)
        error = assert_error(await http.get(REGISTRIES), 401, "UNAUTHENTICATED")
        assert "expired" in error["message"] and token_id in error["message"]
    mine = listed((await api.client.get(TOKENS)).json()["tokens"], token_id)
    assert mine["expireTime"] == created["expireTime"] and mine["revoked"] is False
    # An expired token cannot be brought back by rotating it.
    rotated = await api.client.post(f"{TOKENS}/{token_id}:rotate")
    assert "expired" in assert_error(rotated, 400, "FAILED_PRECONDITION")["message"]


async def test_expire_time_is_kept_and_listed(api: Api, clock: Clock) -> None:
    at = format_timestamp(clock.now + timedelta(days=30))
    created = await api.client.post(TOKENS, json={"role": "editor", "expireTime": at})
    assert created.status_code == 200, created.text
    assert created.json()["expireTime"] == at
    token_id = created.json()["token"].split("_")[1]
    mine = listed((await api.client.get(TOKENS)).json()["tokens"], token_id)
    assert mine["expireTime"] == at and mine["lastUseTime"] is None
    # Without either, a token never expires.
    plain = (await api.client.post(TOKENS, json={"role": "viewer"})).json()
    assert "expireTime" not in plain
    plain_id = plain["token"].split("_")[1]
    assert listed((await api.client.get(TOKENS)).json()["tokens"], plain_id)["expireTime"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ttl": "0s"}, "ttl"),
        ({"ttl": "30"}, "ttl"),
        ({"ttl": "30x"}, "ttl"),
        ({"ttl": "-5m"}, "ttl"),
        ({"ttl": "1.5h"}, "ttl"),
        ({"ttl": ""}, "ttl"),
        ({"ttl": "3651d"}, "ttl"),
        ({"ttl": "٣d"}, "ttl"),
        ({"expireTime": "tomorrow"}, "expireTime"),
        ({"expireTime": "2030-01-01T00:00:00"}, "expireTime"),
        ({"expireTime": "2025-12-31T23:59:59Z"}, "expireTime"),
        ({"expireTime": "2026-01-01T00:00:00Z"}, "expireTime"),
        ({"expireTime": "2040-01-01T00:00:00Z"}, "expireTime"),
        ({"expireTime": "9999-12-31T23:59:59Z"}, "expireTime"),
    ],
)
async def test_bad_expiry_is_invalid_argument(api: Api, body: dict[str, str], field: str) -> None:
    before = len((await api.client.get(TOKENS)).json()["tokens"])
    response = await api.client.post(TOKENS, json={"role": "viewer", **body})
    assert field in field_violations(assert_error(response, 400, "INVALID_ARGUMENT", field))
    assert len((await api.client.get(TOKENS)).json()["tokens"]) == before


async def test_expire_time_and_ttl_together_are_refused(api: Api) -> None:
    both = {"role": "viewer", "ttl": "1h", "expireTime": "2026-02-01T00:00:00Z"}
    error = assert_error(await api.client.post(TOKENS, json=both), 400, "INVALID_ARGUMENT")
    assert "not both" in error["message"]


async def test_rotation_keeps_the_token_and_changes_its_secret(api: Api, clock: Clock) -> None:
    created = (
        await api.client.post(TOKENS, json={"role": "editor", "name": "ci", "ttl": "30d"})
    ).json()
    old = created["token"]
    token_id = old.split("_")[1]
    async with client(api, {"Authorization": f"Bearer {old}"}) as http:
        assert (await http.get(REGISTRIES)).status_code == 200
        response = await api.client.post(f"{TOKENS}/{token_id}:rotate")
        assert response.status_code == 200, response.text
        rotated = response.json()
        # The answer cached for the old secret is gone: the very next request fails.
        assert_error(await http.get(REGISTRIES), 401, "UNAUTHENTICATED")
    new = rotated["token"]
    assert new != old and new.startswith(f"ic_{token_id}_")
    assert rotated["id"] == token_id and rotated["role"] == "editor" and rotated["name"] == "ci"
    assert rotated["expireTime"] == created["expireTime"]
    async with client(api, {"Authorization": f"Bearer {new}"}) as http:
        assert (await http.post(REGISTRIES, json={"id": "reg-rotated"})).status_code == 200
    tokens = (await api.client.get(TOKENS)).json()["tokens"]
    mine = listed(tokens, token_id)
    assert mine["expireTime"] == created["expireTime"] and mine["revoked"] is False
    assert sum(t["id"] == token_id for t in tokens) == 1
    assert new.split("_", 2)[2] not in str(tokens)

    # Revoked: rotating it is refused, and the revoked secret stays dead.
    assert (await api.client.delete(f"{TOKENS}/{token_id}")).status_code == 200
    refused = await api.client.post(f"{TOKENS}/{token_id}:rotate")
    assert "revoked" in assert_error(refused, 400, "FAILED_PRECONDITION")["message"]
    async with client(api, {"Authorization": f"Bearer {new}"}) as http:
        assert_error(await http.get(REGISTRIES), 401, "UNAUTHENTICATED")


@pytest.mark.parametrize("token_id", ["000000000000", "a%00b", "x'--", "A" * 40])
async def test_rotating_an_unknown_token_is_not_found(api: Api, token_id: str) -> None:
    assert_error(await api.client.post(f"{TOKENS}/{token_id}:rotate"), 404, "NOT_FOUND")


async def test_rotation_needs_the_tokens_permission(api: Api) -> None:
    editor = await api.as_role("editor")
    async with editor:
        response = await editor.post(f"{TOKENS}/{api.token.split('_')[1]}:rotate")
    assert_error(response, 403, "PERMISSION_DENIED")
    # The owner token was not rotated.
    assert (await api.client.get(TOKENS)).status_code == 200


async def test_last_use_is_written_behind(api: Api, moving: Clock) -> None:
    clock = moving
    tokens = app_tokens(api)
    token = await api.tokens.create("viewer", "used")
    token_id = token.split("_")[1]
    async with client(api, {"Authorization": f"Bearer {token}"}) as http:
        assert (await http.get(REGISTRIES)).status_code == 200
        clock.advance(5)
        assert (await http.get(REGISTRIES)).status_code == 200
    # Noted, not yet written: no request writes.
    assert listed((await api.client.get(TOKENS)).json()["tokens"], token_id)["lastUseTime"] is None
    used_at = clock.now
    await tokens.flush_uses()
    mine = listed((await api.client.get(TOKENS)).json()["tokens"], token_id)
    assert mine["lastUseTime"] == format_timestamp(used_at)
    # An earlier use written later (by a server that flushes late) does not go back in time.
    await AdminTokens(api.manager.store, lambda: used_at - timedelta(minutes=1)).flush_uses()
    other = AdminTokens(api.manager.store, lambda: used_at - timedelta(minutes=1))
    other.note_use(token_id)
    await other.flush_uses()
    mine = listed((await api.client.get(TOKENS)).json()["tokens"], token_id)
    assert mine["lastUseTime"] == format_timestamp(used_at)


# The duration parser


_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@given(st.lists(st.tuples(st.integers(0, 5000), st.sampled_from("smhdw")), min_size=1, max_size=5))
def test_a_duration_is_the_sum_of_its_parts(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    seconds = sum(n * _UNIT_SECONDS[unit] for n, unit in parts)
    if 0 < seconds <= MAX_LIFETIME.total_seconds():
        assert parse_duration(text) == timedelta(seconds=seconds)
        assert parse_duration(f" {text} ") == timedelta(seconds=seconds)
    else:
        with pytest.raises(ValueError):
            parse_duration(text)


@given(st.text(max_size=30))
def test_any_text_parses_or_is_a_value_error(text: str) -> None:
    try:
        parsed = parse_duration(text)
    except ValueError as error:
        assert str(error)
    else:
        assert timedelta(0) < parsed <= MAX_LIFETIME


def test_durations_named_in_the_docs() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("5m") == timedelta(minutes=5)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("3600s") == timedelta(hours=1)


# Migration 0014


async def test_migration_0014_keeps_tokens_working_and_can_be_undone(
    database: Database, clock: Clock
) -> None:
    store = await Store.open(database.url, database.schema)
    tokens = AdminTokens(store, clock)
    kept = await tokens.create("editor", "from before", clock.now + timedelta(days=1))
    async with store.engine.begin() as conn:
        await conn.run_sync(downgrade, revision_before("0014"))
        columns = await conn.run_sync(
            lambda c: {col["name"] for col in inspect(c).get_columns("admin_tokens")}
        )
    assert not {"expires_at", "last_used_at"} & columns
    await store.close()
    # Opening it again upgrades it: the token written before is valid, and never expires.
    store = await Store.open(database.url, database.schema)
    try:
        found = await AdminTokens(store, clock).find(hash_token(kept))
        assert found is not None and found.role == "editor" and found.expires_at is None
        assert found.last_used_at is None
    finally:
        await store.close()
