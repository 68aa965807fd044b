"""Secrets at rest and in logs, on a real server at `--log-level debug`: push subscriptions'
signing secrets are sealed in the database (and ones stored in clear by an older server are
sealed at start), pushes are still signed with the secret the API showed, and no token, token
hash, signing secret, JWT or private key the run made appears in the server's log."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import sqlite3
import stat
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from tests.bridge.devices import PROJECT, create_registry, make_jwt, new_key
from tests.conftest import Server, cluster_secret, start_server, stop_server, wait_for
from tests.routing.test_webhook import Receiver, publish_from_device, push_subscription

pytestmark = pytest.mark.databases("sqlite")
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/hook"


def stored_secret(server: Server) -> str:
    with contextlib.closing(sqlite3.connect(server.data_dir / "ironcore.db")) as db:
        row = db.execute("SELECT push_secret FROM subscriptions WHERE name = ?", (SUBSCRIPTION,))
        value: str = row.fetchone()[0]
    return value


def database_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data_dir.glob("ironcore.db*") if p.is_file())


def signed_with(secret: str, request: tuple[dict[str, str], bytes]) -> bool:
    headers, body = request
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return headers["X-Ironcore-Signature"] == expected


def test_secrets_are_sealed_and_never_logged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    receiver = Receiver(failures=0)
    server = start_server(data, extra=["--log-level", "debug"])
    made: list[str] = [server.token]
    try:
        admin = {"Authorization": f"Bearer {server.token}"}
        created = httpx.post(
            f"{server.url}/ironcore/v1/tokens", json={"role": "viewer", "name": "t"}, headers=admin
        )
        assert created.status_code == 200, created.text
        viewer = created.json()["token"]
        made.append(viewer)
        listed = httpx.get(
            f"{server.url}/v1/projects/{PROJECT}/locations/us-central1/registries",
            headers={"Authorization": f"Bearer {viewer}"},
        )
        assert listed.status_code == 200, listed.text
        create_registry(server, "reg-sealed")
        secret = push_subscription(server, SUBSCRIPTION.rsplit("/", 1)[1], receiver.url)
        made.append(secret)
        # Sealed in the database, and nowhere in its files in clear.
        stored = stored_secret(server)
        assert stored.startswith("sealed:v1:") and secret not in stored
        assert secret.encode() not in database_bytes(data)
        # Pushes are signed with the secret the API showed, opened from the database.
        publish_from_device(server, "reg-sealed", b"first")
        wait_for(lambda: receiver.requests, 30, "the first push")
        assert signed_with(secret, receiver.requests[0])
        key = new_key()
        made += [
            make_jwt(key),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
        ]
    finally:
        stop_server(server)

    # A secret an older server stored in clear is sealed by the next start.
    old = "an-old-plaintext-secret-0123456789"
    with contextlib.closing(sqlite3.connect(data / "ironcore.db")) as db, db:
        db.execute("UPDATE subscriptions SET push_secret = ? WHERE name = ?", (old, SUBSCRIPTION))
    made.append(old)
    first_log = server.log.read_text()
    server = start_server(data, extra=["--log-level", "debug"])
    try:
        assert "sealed 1 push subscription secrets stored in clear" in server.log.read_text()
        stored = stored_secret(server)
        assert stored.startswith("sealed:v1:") and old not in stored
        pushed = len(receiver.requests)
        published = httpx.post(
            f"{server.url}/v1/projects/{PROJECT}/topics/events:publish",
            json={"messages": [{"data": base64.b64encode(b"second").decode()}]},
            headers={"Authorization": f"Bearer {server.token}"},
        )
        assert published.status_code == 200, published.text
        wait_for(lambda: len(receiver.requests) > pushed, 30, "the second push")
        assert signed_with(old, receiver.requests[-1])
    finally:
        stop_server(server)
        receiver.close()

    logs = first_log + server.log.read_text()
    # A debug log, where the database driver (aiosqlite) would log every statement's values.
    assert " DEBUG " in logs
    for key_file in (cluster_secret(), data / "tls" / "ca.key", data / "tls" / "server.key"):
        made.append(key_file.read_text().strip())
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, key_file
    hashes = [hashlib.sha256(token.encode()).hexdigest() for token in made[:2]]
    for secret_value in [*made, *hashes]:
        for line in secret_value.splitlines():
            # A PEM's armour lines are the same in every key; their bodies are not.
            if not line.startswith("-----"):
                assert line not in logs, f"{line[:12]}... is in the server's log"
