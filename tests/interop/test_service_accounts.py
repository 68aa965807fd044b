"""Service accounts end to end against a real `ironcore serve`: accounts and keys over the
API and the CLI; Google's JSON key files used by the real google-auth, through the token
endpoint (REST, `AuthorizedSession`) and as self-signed JWTs (the real `google-cloud-iot` and
`google-cloud-pubsub` clients over the TLS gRPC port); every bad credential refused as
RefreshError or UNAUTHENTICATED; a service account confined to its project and its roles;
`--pubsub-emulator-as`."""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core import exceptions
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import AuthorizedSession
from google.cloud import iot_v1
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from google.oauth2 import service_account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli.test_cli import Cli
from tests.conftest import (
    Database,
    Server,
    cluster_secret,
    free_port,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.databases("sqlite")
PROJECT, OTHER = "sa-project", "other-project"
PARENT = f"projects/{PROJECT}/locations/us-central1"
ADMIN_ROLES = ["roles/cloudiot.admin", "roles/pubsub.editor"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, local_ca: Path) -> Iterator[Server]:
    """One server for the module, with its TLS gRPC port (certificate from `local_ca`),
    recording every refusal (test_contractor.py's matrix checks each one's audit entry; they
    all come from one address, beyond the default limit of 20 a minute)."""
    data = tmp_path_factory.mktemp("sa") / "data"
    (data / "tls").mkdir(parents=True)
    for name in ("ca.crt", "ca.key"):
        shutil.copy(local_ca / name, data / "tls" / name)
    running = start_server(data, None, ["--audit-denials-per-minute", "10000"], grpc=True)
    yield running
    stop_server(running)


def api(server: Server, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(
        method,
        f"{server.url}/ironcore/v1/projects/{path}",
        json=body,
        headers={"Authorization": f"Bearer {server.token}"},
    )


_names = iter(range(10**6))


def new_account(server: Server, roles: list[str], project: str = PROJECT) -> str:
    """A new account's email."""
    created = api(
        server,
        "POST",
        f"{project}/serviceAccounts",
        {"accountId": f"acct-{next(_names)}", "roles": roles},
    )
    assert created.status_code == 200, created.text
    email: str = created.json()["email"]
    return email


def new_key(server: Server, email: str, project: str = PROJECT) -> dict[str, str]:
    created = api(server, "POST", f"{project}/serviceAccounts/{email}/keys")
    assert created.status_code == 200, created.text
    key_file: dict[str, str] = json.loads(base64.b64decode(created.json()["privateKeyData"]))
    return key_file


def credentials(key_file: dict[str, str], **kwargs: Any) -> Any:
    return service_account.Credentials.from_service_account_info(key_file, **kwargs)


def iot_client(server: Server, creds: Any) -> iot_v1.DeviceManagerClient:
    return iot_v1.DeviceManagerClient(
        credentials=creds, client_options={"api_endpoint": f"127.0.0.1:{server.grpc_port}"}
    )


def signed(key_file: dict[str, str], claims: dict[str, Any], **header: Any) -> str:
    """A JWT signed with the key file's private key, as anyone holding it can make one."""
    key = serialization.load_pem_private_key(key_file["private_key"].encode(), None)
    return jwt.encode(
        claims,
        key,
        algorithm="RS256",
        headers={"kid": key_file["private_key_id"], **header},
    )


def claims(key_file: dict[str, str], **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    found = {
        "iss": key_file["client_email"],
        "sub": key_file["client_email"],
        "aud": "https://cloudiot.googleapis.com/",
        "iat": now,
        "exp": now + 3600,
    }
    found.update(changes)
    return {k: v for k, v in found.items() if v is not None}


def rest_as(server: Server, token: str, source: str = "127.0.0.1") -> httpx.Response:
    """A REST call with `token`, sent from `source` (any 127/8 address reaches the server):
    failed authentications back off per client address (access.backoff)."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source)) as client:
        return client.get(
            f"{server.url}/v1/{PARENT}/registries", headers={"Authorization": f"Bearer {token}"}
        )


def clear_failures(server: Server) -> None:
    """A valid call forgets the failures of its address, so that a test's refusals stay below
    the back-off (tested in tests/api/test_auth_backoff.py) on the module's shared server."""
    assert rest_as(server, server.token).status_code == 200


# Accounts and keys over the API


def test_accounts_api(server: Server) -> None:
    created = api(
        server,
        "POST",
        f"{PROJECT}/serviceAccounts",
        {"accountId": "backend-1", "roles": ["roles/cloudiot.viewer"], "displayName": "Backend"},
    )
    assert created.status_code == 200, created.text
    account = created.json()
    assert account["email"] == f"backend-1@{PROJECT}.iam.gserviceaccount.com"
    assert account["name"] == f"projects/{PROJECT}/serviceAccounts/{account['email']}"
    assert len(account["uniqueId"]) == 21 and account["uniqueId"].isdigit()
    assert account["roles"] == ["roles/cloudiot.viewer"]
    again = api(server, "POST", f"{PROJECT}/serviceAccounts", {"accountId": "backend-1"})
    assert again.status_code == 409 and again.json()["error"]["status"] == "ALREADY_EXISTS"
    for account_id in ("short", "Upper-case1", "ends-with-", "1starts-digit", "a" * 31):
        refused = api(server, "POST", f"{PROJECT}/serviceAccounts", {"accountId": account_id})
        assert refused.status_code == 400, account_id
    unknown = api(
        server,
        "POST",
        f"{PROJECT}/serviceAccounts",
        {"accountId": "backend-2", "roles": ["roles/iot.owner"]},
    )
    assert unknown.status_code == 400 and "roles/iot.owner" in unknown.text
    listed = api(server, "GET", f"{PROJECT}/serviceAccounts").json()["accounts"]
    assert account["email"] in [a["email"] for a in listed]
    by_name = api(server, "GET", f"{PROJECT}/serviceAccounts/backend-1")
    assert by_name.json()["email"] == account["email"]
    assert api(server, "GET", f"{OTHER}/serviceAccounts/backend-1").status_code == 404

    key = api(server, "POST", f"{PROJECT}/serviceAccounts/backend-1/keys").json()
    key_file = json.loads(base64.b64decode(key["privateKeyData"]))
    assert key_file["type"] == "service_account"
    assert key_file["project_id"] == PROJECT
    assert key_file["client_email"] == account["email"]
    assert key_file["client_id"] == account["uniqueId"]
    assert key_file["token_uri"] == f"{server.url}/token"
    assert len(key_file["private_key_id"]) == 40
    assert key_file["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert key["name"].endswith("/keys/" + key_file["private_key_id"])
    keys = api(server, "GET", f"{PROJECT}/serviceAccounts/backend-1/keys").json()["keys"]
    assert [k["name"] for k in keys] == [key["name"]]
    assert "privateKeyData" not in keys[0]

    # The private key is nowhere in the database (SQLite: the file and its WAL).
    body = "".join(key_file["private_key"].splitlines()[1:-1])
    stored = b"".join(p.read_bytes() for p in server.data_dir.glob("*.db*"))
    assert stored and body[:64].encode() not in stored
    public = serialization.load_pem_private_key(key_file["private_key"].encode(), None)
    public_body = public.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_body.splitlines()[1] in stored

    deleted = api(
        server, "DELETE", f"{PROJECT}/serviceAccounts/backend-1/keys/{key_file['private_key_id']}"
    )
    assert deleted.status_code == 200
    assert api(server, "GET", f"{PROJECT}/serviceAccounts/backend-1/keys").json()["keys"] == []
    assert api(server, "DELETE", f"{PROJECT}/serviceAccounts/backend-1").status_code == 200
    assert api(server, "GET", f"{PROJECT}/serviceAccounts/backend-1").status_code == 404


def test_accounts_cli(server: Server, tmp_path: Path) -> None:
    cli = Cli(server, tmp_path).run
    made = cli(
        "service-accounts",
        "create",
        "cli-robot",
        "--project",
        PROJECT,
        "--role",
        "roles/cloudiot.viewer",
        "--role",
        "roles/pubsub.subscriber",
    )
    assert made.code == 0, made.err
    listed = cli("--json", "service-accounts", "list", "--project", PROJECT)
    found = {a["email"]: a for a in json.loads(listed.out)["accounts"]}
    email = f"cli-robot@{PROJECT}.iam.gserviceaccount.com"
    assert found[email]["roles"] == ["roles/cloudiot.viewer", "roles/pubsub.subscriber"]
    bad = cli("service-accounts", "create", "cli-robot2", "--project", PROJECT, "--role", "admin")
    assert bad.code == 1 and "INVALID_ARGUMENT" in bad.err and "'admin'" in bad.err

    out = tmp_path / "key.json"
    created = cli(
        "service-accounts", "keys", "create", "cli-robot", "--project", PROJECT, "--out", str(out)
    )
    assert created.code == 0, created.err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key_file = json.loads(out.read_text())
    assert key_file["private_key_id"] == created.out.strip()
    assert key_file["client_email"] == email
    again = cli(
        "service-accounts", "keys", "create", "cli-robot", "--project", PROJECT, "--out", str(out)
    )
    assert again.code == 1 and "exists" in again.err
    assert json.loads(out.read_text()) == key_file
    keys = cli("service-accounts", "keys", "list", "cli-robot", "--project", PROJECT)
    assert key_file["private_key_id"] in keys.out
    assert "PRIVATE" not in keys.out
    gone = cli(
        "service-accounts",
        "keys",
        "delete",
        "cli-robot",
        key_file["private_key_id"],
        "--project",
        PROJECT,
    )
    assert gone.code == 0, gone.err
    assert cli("service-accounts", "delete", "cli-robot", "--project", PROJECT).code == 0
    missing = cli("service-accounts", "delete", "cli-robot", "--project", PROJECT)
    assert missing.code == 1 and "NOT_FOUND" in missing.err


# google-auth against the token endpoint (REST)


def test_key_file_with_authorized_session(server: Server, tmp_path: Path) -> None:
    email = new_account(server, ADMIN_ROLES)
    path = tmp_path / "key.json"
    path.write_text(json.dumps(new_key(server, email)))
    creds = service_account.Credentials.from_service_account_file(
        str(path), scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    session = AuthorizedSession(creds)
    created = session.post(f"{server.url}/v1/{PARENT}/registries", json={"id": "rest-sa"})
    assert created.status_code == 200, created.text
    assert creds.token.startswith("ic-sa_")
    listed = session.get(f"{server.url}/v1/{PARENT}/registries").json()
    assert "rest-sa" in [r["id"] for r in listed["deviceRegistries"]]


def test_access_token_stops_with_its_key_and_account(server: Server) -> None:
    email = new_account(server, ADMIN_ROLES)
    key_file = new_key(server, email)
    creds = credentials(key_file)
    AuthorizedSession(creds).get(f"{server.url}/v1/{PARENT}/registries").raise_for_status()
    token = creds.token
    assert rest_as(server, token).status_code == 200
    api(server, "DELETE", f"{PROJECT}/serviceAccounts/{email}/keys/{key_file['private_key_id']}")
    refused = rest_as(server, token)
    assert refused.status_code == 401 and refused.json()["error"]["status"] == "UNAUTHENTICATED"
    with pytest.raises(RefreshError, match="invalid_grant"):
        credentials(key_file).refresh(google_request())

    second = new_key(server, email)
    creds = credentials(second)
    AuthorizedSession(creds).get(f"{server.url}/v1/{PARENT}/registries").raise_for_status()
    api(server, "DELETE", f"{PROJECT}/serviceAccounts/{email}")
    assert rest_as(server, creds.token).status_code == 401
    with pytest.raises(RefreshError, match="invalid_grant"):
        credentials(second).refresh(google_request())


def google_request() -> Any:
    from google.auth.transport.requests import Request

    return Request()


def token_endpoint(server: Server, assertion: str, grant: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{server.url}/token",
        data={
            "grant_type": grant or "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": assertion,
        },
    )


def test_token_endpoint_refusals(server: Server) -> None:
    key_file = new_key(server, new_account(server, ADMIN_ROLES))
    aud = f"{server.url}/token"
    good = token_endpoint(server, signed(key_file, claims(key_file, aud=aud, scope="x")))
    assert good.status_code == 200, good.text
    assert good.json()["token_type"] == "Bearer" and good.json()["expires_in"] == 3600
    now = int(time.time())
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        claims(key_file, aud=aud),
        forger,
        algorithm="RS256",
        headers={"kid": key_file["private_key_id"]},
    )
    cases = {
        "expired": signed(key_file, claims(key_file, aud=aud, iat=now - 7200, exp=now - 3600)),
        "too long": signed(key_file, claims(key_file, aud=aud, exp=now + 7200)),
        "wrong aud": signed(key_file, claims(key_file, aud="https://example.com/token")),
        "no aud": signed(key_file, claims(key_file, aud=None)),
        "wrong iss": signed(key_file, claims(key_file, aud=aud, iss="x@y", sub=None)),
        "forged": forged,
        "unknown kid": signed(key_file, claims(key_file, aud=aud), kid="0" * 40),
        "kid not hex": signed(key_file, claims(key_file, aud=aud), kid="\x00" * 40),
        "no kid": jwt.encode(
            claims(key_file, aud=aud),
            serialization.load_pem_private_key(key_file["private_key"].encode(), None),
            algorithm="RS256",
        ),
        "alg HS256": jwt.encode(claims(key_file, aud=aud), "s" * 32, algorithm="HS256"),
        "garbage": "not.a.jwt",
    }
    for case, assertion in cases.items():
        refused = token_endpoint(server, assertion)
        assert refused.status_code == 400, case
        assert refused.json()["error"] == "invalid_grant", case
    assert token_endpoint(server, "x", grant="password").json()["error"] == "unsupported_grant_type"
    empty = httpx.post(f"{server.url}/token", content=b"\xff\xfe")
    assert empty.status_code == 400 and empty.json()["error"] == "invalid_request"


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    header=st.dictionaries(st.text(max_size=5), st.none() | st.integers() | st.text(max_size=45)),
    payload=st.dictionaries(
        st.sampled_from(["iss", "sub", "aud", "iat", "exp", "scope"]),
        st.none() | st.integers() | st.floats() | st.text(max_size=10) | st.lists(st.integers()),
    ),
    signature=st.binary(max_size=300),
    raw=st.text(max_size=200),
)
def test_garbage_assertions_are_refused(
    server: Server, header: dict[str, Any], payload: dict[str, Any], signature: bytes, raw: str
) -> None:
    """Never a 500: neither at the token endpoint nor as a bearer JWT."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header.setdefault("alg", "RS256")
    token = ".".join(
        [part(json.dumps(header).encode()), part(json.dumps(payload).encode()), part(signature)]
    )
    for assertion in (token, raw, "eyJ" + raw + ".."):
        refused = token_endpoint(server, assertion)
        assert refused.status_code == 400, refused.text
        if assertion.isascii() and assertion.isprintable() and assertion.strip():
            # From an address of its own: after a few failures back-off answers first (429),
            # and the other tests' calls from 127.0.0.1 must not wait for it.
            bearer = rest_as(server, assertion.strip(), source="127.0.0.7")
            assert bearer.status_code in (401, 429), bearer.text


# Self-signed JWTs over gRPC, with the real clients


def test_google_cloud_iot_over_grpc_with_key_file(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As docs/migrating.md has it: the key file in GOOGLE_APPLICATION_CREDENTIALS, the
    client built with nothing but the endpoint."""
    key_file = new_key(server, new_account(server, ADMIN_ROLES))
    path = tmp_path / "key.json"
    # A token_uri nothing answers at: the calls below pass on self-signed JWTs alone.
    path.write_text(json.dumps(key_file | {"token_uri": "http://127.0.0.1:9/token"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    client = iot_v1.DeviceManagerClient(
        client_options={"api_endpoint": f"127.0.0.1:{server.grpc_port}"}
    )
    try:
        registry = client.create_device_registry(parent=PARENT, device_registry={"id": "grpc-sa"})
        client.create_device(parent=registry.name, device={"id": "dev-1"})
        assert [d.id for d in client.list_devices(parent=registry.name)] == ["dev-1"]
    finally:
        client.transport.close()
    # With scopes the client sends a JWT without aud but with scope; also accepted.
    scoped = credentials(key_file, scopes=["https://www.googleapis.com/auth/cloudiot"])
    client = iot_client(server, scoped)
    try:
        assert client.get_device_registry(name=registry.name).id == "grpc-sa"
    finally:
        client.transport.close()


def test_pubsub_clients_over_grpc_with_key_file(server: Server) -> None:
    key_file = new_key(server, new_account(server, ADMIN_ROLES))
    # Self-signed JWTs only: nothing answers at this token_uri.
    creds = credentials(key_file | {"token_uri": "http://127.0.0.1:9/token"})
    endpoint = {"api_endpoint": f"127.0.0.1:{server.grpc_port}"}
    publisher = PublisherClient(credentials=creds, client_options=endpoint)
    subscriber = SubscriberClient(credentials=creds, client_options=endpoint)
    topic = f"projects/{PROJECT}/topics/sa-telemetry"
    name = f"projects/{PROJECT}/subscriptions/sa-backend"
    try:
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=name, topic=topic)
        publisher.publish(topic, b"hello", deviceId="d1").result(timeout=30)
        pulled = subscriber.pull(subscription=name, max_messages=10, timeout=30)
        assert [m.message.data for m in pulled.received_messages] == [b"hello"]
        subscriber.acknowledge(subscription=name, ack_ids=[pulled.received_messages[0].ack_id])
        # subscribe(): StreamingPull with the same credentials.
        received: queue.Queue[bytes] = queue.Queue()

        def callback(message: Any) -> None:
            received.put(message.data)
            message.ack()

        streaming = subscriber.subscribe(name, callback)
        try:
            publisher.publish(topic, b"streamed").result(timeout=30)
            assert received.get(timeout=30) == b"streamed"
        finally:
            streaming.cancel()
            streaming.result(timeout=30)
    finally:
        publisher.stop()
        subscriber.close()


def test_bad_jwts_are_unauthenticated_over_grpc(server: Server) -> None:
    from tests.interop.iot_clients import StaticToken

    email = new_account(server, ADMIN_ROLES)
    key_file = new_key(server, email)
    now = int(time.time())
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "expired": signed(key_file, claims(key_file, iat=now - 7200, exp=now - 3600)),
        "wrong aud": signed(key_file, claims(key_file, aud="https://storage.googleapis.com/")),
        "forged": jwt.encode(
            claims(key_file), forger, algorithm="RS256", headers={"kid": key_file["private_key_id"]}
        ),
        "garbage": "eyJhbGciOi.garbage.garbage",
    }
    for case, token in cases.items():
        client = iot_client(server, StaticToken(token=token))
        try:
            with pytest.raises(exceptions.Unauthenticated):
                client.list_device_registries(parent=PARENT)
        finally:
            client.transport.close()
        assert rest_as(server, token).status_code == 401, case
        clear_failures(server)

    # A working key stops working once deleted, then its account's other key once the
    # account is deleted (within the authenticator's cache time).
    good = signed(key_file, claims(key_file))
    assert rest_as(server, good).status_code == 200
    api(server, "DELETE", f"{PROJECT}/serviceAccounts/{email}/keys/{key_file['private_key_id']}")
    assert rest_as(server, good).status_code == 401
    second = new_key(server, email)
    other = signed(second, claims(second))
    assert rest_as(server, other).status_code == 200
    api(server, "DELETE", f"{PROJECT}/serviceAccounts/{email}")
    for token in (good, other):
        deadline = time.monotonic() + 10
        while rest_as(server, token).status_code != 401:
            assert time.monotonic() < deadline, "a deleted credential kept working"
            time.sleep(0.2)
        client = iot_client(server, StaticToken(token=token))
        try:
            with pytest.raises(exceptions.Unauthenticated):
                client.list_device_registries(parent=PARENT)
        finally:
            client.transport.close()
        clear_failures(server)
    log = server.log.read_text()
    assert "refused a service-account JWT" in log and "expired" in log


def test_account_confined_to_its_project_and_roles(server: Server) -> None:
    editor = credentials(new_key(server, new_account(server, ["roles/cloudiot.editor"])))
    client = iot_client(server, editor)
    try:
        with pytest.raises(exceptions.PermissionDenied) as denied:
            client.list_device_registries(parent=f"projects/{OTHER}/locations/us-central1")
        assert "cloudiot.registries.list" in str(denied.value.message)
        assert f"projects/{PROJECT}" in str(denied.value.message)
        # Its own project's IAM policy needs roles/cloudiot.admin.
        client.create_device_registry(parent=PARENT, device_registry={"id": "confined"})
        with pytest.raises(exceptions.PermissionDenied):
            client.get_iam_policy(resource=f"{PARENT}/registries/confined")
    finally:
        client.transport.close()
    viewer = credentials(new_key(server, new_account(server, ["roles/cloudiot.viewer"])))
    client = iot_client(server, viewer)
    try:
        assert "confined" in [r.id for r in client.list_device_registries(parent=PARENT)]
        with pytest.raises(exceptions.PermissionDenied) as denied:
            client.create_device_registry(parent=PARENT, device_registry={"id": "nope"})
        assert "cloudiot.registries.create" in str(denied.value.message)
        granted = client.test_iam_permissions(
            resource=f"{PARENT}/registries/confined",
            permissions=["cloudiot.devices.get", "cloudiot.devices.create"],
        )
        assert list(granted.permissions) == ["cloudiot.devices.get"]
    finally:
        client.transport.close()
    # A service account manages no service accounts, not even in its own project.
    AuthorizedSession(viewer).get(f"{server.url}/v1/{PARENT}/registries").raise_for_status()
    refused = httpx.get(
        f"{server.url}/ironcore/v1/projects/{PROJECT}/serviceAccounts",
        headers={"Authorization": f"Bearer {viewer.token}"},
    )
    assert refused.status_code == 403
    # Admin tokens keep working on every project.
    assert api(server, "GET", f"{OTHER}/serviceAccounts").status_code == 200


def test_pubsub_emulator_as_a_service_account(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "ironcore",
            "serve",
            "--data-dir",
            str(data),
            "--api-port",
            str(free_port()),
            "--mqtt-port",
            "0",
            "--grpc-port",
            "0",
            "--pubsub-emulator-port",
            str(port),
            "--pubsub-emulator-as",
            "ghost-account",
            # The key the servers below are given: this start seals the database's key check.
            "--secret-key-file",
            str(cluster_secret()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("IRONCORE_")},
    )
    assert missing.returncode == 1
    assert "--pubsub-emulator-as" in missing.stderr and "ghost-account" in missing.stderr

    first = start_server(data, None, extra=["--grpc-port", "0"])
    try:
        email = new_account(first, ["roles/pubsub.publisher"])
        topic = f"projects/{PROJECT}/topics/emulated"
        made = httpx.put(
            f"{first.url}/v1/{topic}",
            json={},
            headers={"Authorization": f"Bearer {first.token}"},
        )
        assert made.status_code == 200, made.text
    finally:
        stop_server(first)
    server = start_server(
        data, None, extra=["--pubsub-emulator-port", str(port), "--pubsub-emulator-as", email]
    )
    try:
        import grpc
        from google.cloud.pubsub_v1.publisher.client import Client
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        publisher = Client(transport=PublisherGrpcTransport(channel=channel))
        publisher.publish(topic, b"as the account").result(timeout=30)
        with pytest.raises(exceptions.PermissionDenied) as denied:
            publisher.create_topic(name=f"projects/{PROJECT}/topics/new")
        assert "pubsub.topics.create" in str(denied.value.message)
        with pytest.raises(exceptions.PermissionDenied):
            publisher.publish(f"projects/{OTHER}/topics/t", b"x").result(timeout=30)
        publisher.stop()
    finally:
        stop_server(server)


@pytest.mark.databases("postgresql")
def test_key_file_lifecycle_on_postgresql(tmp_path: Path, database: Database) -> None:
    """The same store on PostgreSQL: migration 0008, the token endpoint, JWTs, deletion, and
    ids PostgreSQL would refuse (NUL) kept out of SQL."""
    pg = start_server(tmp_path / "data", database)
    try:
        email = new_account(pg, ["roles/cloudiot.viewer"])
        key_file = new_key(pg, email)
        creds = credentials(key_file)
        session = AuthorizedSession(creds)
        assert session.get(f"{pg.url}/v1/{PARENT}/registries").status_code == 200
        jwt_token = signed(key_file, claims(key_file, aud=pg.url + "/"))
        assert rest_as(pg, jwt_token).status_code == 401  # no --public-url: not an audience
        jwt_token = signed(key_file, claims(key_file))
        assert rest_as(pg, jwt_token).status_code == 200
        nul = signed(key_file, claims(key_file), kid="\x00" * 40)
        assert rest_as(pg, nul).status_code == 401
        assert token_endpoint(pg, nul).json()["error"] == "invalid_grant"
        assert api(pg, "GET", f"{PROJECT}/serviceAccounts/a%00bcdefg").status_code == 404
        api(pg, "DELETE", f"{PROJECT}/serviceAccounts/{email}/keys/{key_file['private_key_id']}")
        assert rest_as(pg, jwt_token).status_code == 401
        assert rest_as(pg, creds.token).status_code == 401
        assert api(pg, "DELETE", f"{PROJECT}/serviceAccounts/{email}").status_code == 200
    finally:
        stop_server(pg)
