"""Admin token revocation, rotation and expiry across two `ironcore serve` processes sharing a
PostgreSQL database: a token revoked or rotated on server A is refused on server B at the very
next request, although B had just cached it as valid; one that expires is refused on B from
its expiry on; and each server writes when tokens were last used (at the latest when it stops).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ironcore.registry.wire import parse_timestamp
from tests.conftest import (
    Database,
    Server,
    start_peer,
    start_server,
    stop_server,
)

REGISTRIES = "/v1/projects/p1/locations/us-central1/registries"
TOKENS = "/ironcore/v1/tokens"


pytestmark = pytest.mark.databases("postgresql")


def call(server: Server, token: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kwargs)


def owner(server: Server, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    response = call(server, server.token, method, path, **kwargs)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def refused(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"
    message: str = response.json()["error"]["message"]
    return message


def test_revocation_rotation_and_expiry_hold_on_the_next_request_on_another_server(
    tmp_path: Path, database: Database
) -> None:
    a = start_server(tmp_path / "a", database)
    b: Server | None = None
    try:
        b = start_peer(a, tmp_path / "b", database, [])

        # Revoked on A: B, which had just found the token valid, refuses its next request.
        revoked = owner(a, "POST", TOKENS, json={"role": "viewer", "name": "revoked"})["token"]
        assert call(b, revoked, "GET", REGISTRIES).status_code == 200
        owner(a, "DELETE", f"{TOKENS}/{revoked.split('_')[1]}")
        refused(call(b, revoked, "GET", REGISTRIES))

        # Rotated on A: the old secret is refused on B at once, the new one served.
        old = owner(a, "POST", TOKENS, json={"role": "editor", "name": "rotated"})["token"]
        rotated_id = old.split("_")[1]
        assert call(b, old, "GET", REGISTRIES).status_code == 200
        new = owner(a, "POST", f"{TOKENS}/{rotated_id}:rotate")["token"]
        refused(call(b, old, "GET", REGISTRIES))
        assert call(b, new, "POST", REGISTRIES, json={"id": "reg-rotated"}).status_code == 200

        # Expiring: served on B until its expiry (B caches it no further), refused from then
        # on, saying why.
        created = owner(a, "POST", TOKENS, json={"role": "viewer", "ttl": "4s"})
        expiring, expiring_id = created["token"], created["token"].split("_")[1]
        expiry = parse_timestamp(created["expireTime"]).timestamp()
        assert call(b, expiring, "GET", REGISTRIES).status_code == 200
        time.sleep(max(0.0, expiry - 1.5 - time.time()))
        response = call(b, expiring, "GET", REGISTRIES)
        if time.time() < expiry:  # not so slow that it expired meanwhile
            assert response.status_code == 200, response.text
        time.sleep(max(0.0, expiry + 0.05 - time.time()))
        message = refused(call(b, expiring, "GET", REGISTRIES))
        assert "expired" in message and expiring_id in message

        # B writes the uses it saw when it stops (and every minute before that).
        assert stop_server(b) == 0
        b = None
        listed = {t["id"]: t for t in owner(a, "GET", TOKENS)["tokens"]}
        for token_id in (revoked.split("_")[1], rotated_id, expiring_id):
            assert listed[token_id]["lastUseTime"] is not None, listed[token_id]
        assert listed[revoked.split("_")[1]]["revoked"] is True
        assert listed[rotated_id]["revoked"] is False
    finally:
        if b is not None:
            stop_server(b)
        stop_server(a)
