"""The real `ironcore` command, run as a subprocess against a real `ironcore serve` process.

Most tests share one SQLite server (module scope, to keep the file fast); one runs on PostgreSQL
as well. Every command is `python -m ironcore --server URL …`, with the token in IRONCORE_TOKEN
unless the test is about how the token is found, and HOME pointed at an empty directory so a
real ~/.ironcore never leaks in.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from ironcore.registry.wire import format_timestamp
from tests.conftest import Server, free_port
from tests.keys import es256_key, make_ca, public_pem


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def error_line(self) -> str:
        """The one line a failing command prints, after checking it is exactly one line."""
        lines = self.err.splitlines()
        assert self.code != 0, f"expected a failure, got exit 0 with {self.out!r}"
        assert len(lines) == 1, f"expected one line on stderr, got {self.err!r}"
        assert lines[0].startswith("error: "), lines[0]
        assert self.out == "", f"a failing command printed on stdout: {self.out!r}"
        return lines[0]


class Cli:
    """Runs `ironcore` with a clean environment: no IRONCORE_* variables but the ones given."""

    def __init__(self, server: Server, home: Path) -> None:
        self.server = server
        self.home = home

    def env(self, token: str | None = None, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IRONCORE_")}
        env["HOME"] = str(self.home)
        if token is not None:
            env["IRONCORE_TOKEN"] = token
        env.update(extra)
        return env

    def run(
        self,
        *args: str,
        token: str | None = "",
        server: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Result:
        """`ironcore --server URL ARGS`; token "" means the server's owner token."""
        if env is None:
            env = self.env(self.server.token if token == "" else token)
        command = [sys.executable, "-m", "ironcore", "--server", server or self.server.url]
        done = subprocess.run(
            [*command, *args], env=env, capture_output=True, text=True, timeout=60
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, **kwargs: Any) -> Result:
        result = self.run(*args, **kwargs)
        assert result.code == 0, f"ironcore {' '.join(args)} failed: {result.err}"
        return result

    def json(self, *args: str, **kwargs: Any) -> Any:
        return self.ok("--json", *args, **kwargs).json()


@pytest.fixture(scope="module")
def cli(module_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(module_server, tmp_path_factory.mktemp("home"))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def es256_pem(tmp_path: Path) -> Path:
    path = tmp_path / "ec_public.pem"
    path.write_text(public_pem(es256_key()))
    return path


@pytest.fixture
def registry(cli: Cli) -> str:
    registry_id = unique("reg")
    cli.ok("registries", "create", registry_id)
    return registry_id


# Registries


def test_registry_create_with_topics_and_no_mqtt(cli: Cli) -> None:
    registry_id = unique("reg")
    created = cli.json(
        "registries",
        "create",
        registry_id,
        "--event-topic",
        "projects/p/topics/all",
        "--event-topic",
        "alerts=projects/p/topics/alerts",
        "--state-topic",
        "projects/p/topics/state",
        "--no-mqtt",
    )
    assert created["id"] == registry_id
    assert created["name"] == f"projects/my-project/locations/us-central1/registries/{registry_id}"
    assert created["eventNotificationConfigs"] == [
        {"pubsubTopicName": "projects/p/topics/all"},
        {"subfolderMatches": "alerts", "pubsubTopicName": "projects/p/topics/alerts"},
    ]
    assert created["stateNotificationConfig"] == {"pubsubTopicName": "projects/p/topics/state"}
    assert created["mqttConfig"] == {"mqttEnabledState": "MQTT_DISABLED"}
    # What was created is what the server keeps.
    assert cli.json("registries", "get", registry_id) == created


def test_registry_list_get_patch_delete(cli: Cli, tmp_path: Path) -> None:
    registry_id = unique("reg")
    table = cli.ok("registries", "create", registry_id, "--no-mqtt").out
    assert registry_id in table

    listed = cli.json("registries", "list")
    assert registry_id in [r["id"] for r in listed["deviceRegistries"]]
    assert registry_id in cli.ok("registries", "list").out

    patched = cli.json(
        "registries",
        "patch",
        registry_id,
        "--mqtt",
        "--event-topic",
        "projects/p/topics/new",
        "--state-topic",
        "projects/p/topics/state2",
    )
    assert patched["mqttConfig"] == {"mqttEnabledState": "MQTT_ENABLED"}
    assert patched["eventNotificationConfigs"] == [{"pubsubTopicName": "projects/p/topics/new"}]
    assert patched["stateNotificationConfig"] == {"pubsubTopicName": "projects/p/topics/state2"}

    ca = tmp_path / "ca.pem"
    ca.write_text(make_ca("cli test CA").pem)
    with_ca = cli.json("registries", "patch", registry_id, "--ca-cert", str(ca))
    [credential] = with_ca["credentials"]
    assert credential["publicKeyCertificate"]["certificate"] == ca.read_text()
    assert credential["publicKeyCertificate"]["x509Details"]["subject"].endswith("cli test CA")
    # The patch named only the credentials: the topics stay.
    assert with_ca["eventNotificationConfigs"] == patched["eventNotificationConfigs"]

    nothing = cli.run("registries", "patch", registry_id)
    assert "nothing to change" in nothing.error_line

    assert registry_id in cli.ok("registries", "delete", registry_id).out
    gone = cli.run("registries", "get", registry_id)
    assert gone.error_line.startswith("error: NOT_FOUND: ")
    assert registry_id not in [r["id"] for r in cli.json("registries", "list")["deviceRegistries"]]


def test_registry_created_with_ca_cert(cli: Cli, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(make_ca().pem)
    registry_id = unique("reg")
    created = cli.json("registries", "create", registry_id, "--ca-cert", str(ca))
    assert [c["publicKeyCertificate"]["format"] for c in created["credentials"]] == [
        "X509_CERTIFICATE_PEM"
    ]


# Devices


def test_device_create_with_key_and_metadata(cli: Cli, registry: str, es256_pem: Path) -> None:
    device = cli.json(
        "devices",
        "create",
        "thermostat-1",
        "-r",
        registry,
        "--key-file",
        str(es256_pem),
        "--metadata",
        "room=kitchen",
        "--metadata",
        "floor=2",
    )
    assert device["id"] == "thermostat-1"
    assert device["numId"].isdigit() and len(device["numId"]) == 16
    assert device["credentials"][0]["publicKey"] == {
        "format": "ES256_PEM",
        "key": es256_pem.read_text(),
    }
    assert device["metadata"] == {"room": "kitchen", "floor": "2"}

    got = cli.json("devices", "get", "thermostat-1", "-r", registry)
    assert got["numId"] == device["numId"]
    assert got["metadata"] == {"room": "kitchen", "floor": "2"}

    # The human table shows the id and the whole numeric id, even when piped.
    table = cli.ok("devices", "list", "-r", registry).out
    assert "thermostat-1" in table
    assert device["numId"] in table


def test_gateway_device(cli: Cli, registry: str) -> None:
    gateway = cli.json(
        "devices",
        "create",
        "gateway-1",
        "-r",
        registry,
        "--gateway",
        "--auth-method",
        "ASSOCIATION_ONLY",
    )
    assert gateway["gatewayConfig"] == {
        "gatewayType": "GATEWAY",
        "gatewayAuthMethod": "ASSOCIATION_ONLY",
    }
    # Without --json, `get` pretty-prints the resource and `list` shows a table.
    assert json.loads(cli.ok("devices", "get", "gateway-1", "-r", registry).out) == gateway
    [row] = [
        line
        for line in cli.ok("devices", "list", "-r", registry).out.splitlines()
        if "gateway-1" in line
    ]
    assert row.split("│")[4].strip() == "True"  # the gateway column


def test_device_patch_block_unblock_delete(cli: Cli, registry: str, es256_pem: Path) -> None:
    cli.ok("devices", "create", "dev-1", "-r", registry, "--metadata", "a=1")

    patched = cli.json(
        "devices",
        "patch",
        "dev-1",
        "-r",
        registry,
        "--metadata",
        "b=2",
        "--key-file",
        str(es256_pem),
    )
    assert patched["metadata"] == {"b": "2"}
    assert len(patched["credentials"]) == 1

    assert cli.json("devices", "block", "dev-1", "-r", registry)["blocked"] is True
    assert cli.json("devices", "get", "dev-1", "-r", registry)["blocked"] is True
    assert cli.json("devices", "unblock", "dev-1", "-r", registry).get("blocked", False) is False
    assert cli.json("devices", "get", "dev-1", "-r", registry).get("blocked", False) is False

    nothing = cli.run("devices", "patch", "dev-1", "-r", registry)
    assert "nothing to change" in nothing.error_line

    assert "dev-1" in cli.ok("devices", "delete", "dev-1", "-r", registry).out
    assert cli.run("devices", "get", "dev-1", "-r", registry).error_line.startswith(
        "error: NOT_FOUND: "
    )
    assert cli.json("devices", "list", "-r", registry) == {"devices": []}


def test_config_set_and_versions(cli: Cli, registry: str, tmp_path: Path) -> None:
    for device in ("cfg-data", "cfg-file", "cfg-cond"):
        cli.ok("devices", "create", device, "-r", registry)

    # The first update of each device is not rate limited: version 1 is the device's creation.
    by_data = cli.json("devices", "config", "set", "cfg-data", "-r", registry, "--data", '{"a":1}')
    assert by_data["version"] == "2"
    assert base64.b64decode(by_data["binaryData"]) == b'{"a":1}'

    payload = bytes(range(256))
    (tmp_path / "config.bin").write_bytes(payload)
    by_file = cli.json(
        "devices",
        "config",
        "set",
        "cfg-file",
        "-r",
        registry,
        "--file",
        str(tmp_path / "config.bin"),
    )
    assert by_file["version"] == "2"

    versions = cli.json("devices", "config", "versions", "cfg-file", "-r", registry)
    assert [v["version"] for v in versions["deviceConfigs"]] == ["2", "1"]
    assert base64.b64decode(versions["deviceConfigs"][0]["binaryData"]) == payload
    table = cli.ok("devices", "config", "versions", "cfg-data", "-r", registry).out
    assert '{"a":1}' in table
    assert "<256 bytes>" in cli.ok("devices", "config", "versions", "cfg-file", "-r", registry).out
    one = cli.json(
        "devices", "config", "versions", "cfg-file", "-r", registry, "--num-versions", "1"
    )
    assert [v["version"] for v in one["deviceConfigs"]] == ["2"]

    # A conditional update on the current version goes through; on a stale one it fails.
    cond = ["devices", "config", "set", "cfg-cond", "-r", registry, "--data", "x"]
    assert cli.json(*cond, "--version-to-update", "1")["version"] == "2"
    stale = cli.run(*cond, "--version-to-update", "1")
    assert stale.error_line.startswith("error: FAILED_PRECONDITION: ")
    assert "(1)" in stale.error_line and "(2)" in stale.error_line
    assert [
        v["version"]
        for v in cli.json("devices", "config", "versions", "cfg-cond", "-r", registry)[
            "deviceConfigs"
        ]
    ] == ["2", "1"]

    neither = cli.run("devices", "config", "set", "cfg-data", "-r", registry)
    assert "exactly one of --data or --file" in neither.error_line
    missing = cli.run(
        "devices", "config", "set", "cfg-data", "-r", registry, "--file", str(tmp_path / "nope")
    )
    assert "cannot read" in missing.error_line and "nope" in missing.error_line


def test_config_set_to_several_devices_or_all(cli: Cli, registry: str) -> None:
    # Each device is updated once here: a device's first update is never rate limited.
    for device in ("bulk-1", "bulk-2", "bulk-3"):
        cli.ok("devices", "create", device, "-r", registry)
    table = cli.ok("devices", "config", "set", "-r", registry, "--all", "--data", "a").out
    assert "OK" in table and "3" in table
    versions = cli.json("devices", "config", "versions", "bulk-3", "-r", registry)
    assert [v["version"] for v in versions["deviceConfigs"]] == ["2", "1"]

    for device in ("bulk-4", "bulk-5", "bulk-6"):
        cli.ok("devices", "create", device, "-r", registry)
    two = cli.json("devices", "config", "set", "bulk-4", "bulk-5", "-r", registry, "--data", "b")
    assert two["versions"] == [{"version": "2", "devices": 2}] and two["errors"] == []
    unknown = cli.run("devices", "config", "set", "bulk-6", "ghost", "-r", registry, "--data", "c")
    assert unknown.code == 1
    assert "ghost" in unknown.out and "NOT_FOUND" in unknown.out
    assert "1 device(s) were not updated" in unknown.err
    versions = cli.json("devices", "config", "versions", "bulk-6", "-r", registry)
    assert [v["version"] for v in versions["deviceConfigs"]] == ["2", "1"]

    nobody = cli.run("devices", "config", "set", "-r", registry, "--data", "c")
    assert "exactly one of: device id(s), --all or --gateway" in nobody.error_line
    both = cli.run("devices", "config", "set", "bulk-1", "-r", registry, "--all", "--data", "c")
    assert "exactly one of" in both.error_line
    conditional = ["bulk-1", "bulk-2", "-r", registry, "--data", "c", "--version-to-update", "2"]
    assert "applies to one device" in cli.run("devices", "config", "set", *conditional).error_line


def test_states(cli: Cli, registry: str, tmp_path: Path) -> None:
    key = es256_key()
    (tmp_path / "key.pem").write_text(public_pem(key))
    cli.ok("devices", "create", "stateful", "-r", registry, "--key-file", str(tmp_path / "key.pem"))
    assert cli.json("devices", "states", "stateful", "-r", registry) == {"deviceStates": []}

    # The device reports a state over the HTTP device bridge, with a JWT of its own.
    now = int(time.time())
    device_jwt = jwt.encode({"aud": "my-project", "iat": now, "exp": now + 600}, key, "ES256")
    path = f"/v1/projects/my-project/locations/us-central1/registries/{registry}/devices/stateful"
    response = httpx.post(
        f"{cli.server.url}{path}:setState",
        json={"state": {"binaryData": base64.b64encode(b"temp=21").decode()}},
        headers={"Authorization": f"Bearer {device_jwt}"},
    )
    assert response.status_code == 200, response.text

    [state] = cli.json("devices", "states", "stateful", "-r", registry)["deviceStates"]
    assert base64.b64decode(state["binaryData"]) == b"temp=21"
    table = cli.ok("devices", "states", "stateful", "-r", registry).out
    assert "temp=21" in table and state["updateTime"] in table
    missing = cli.run("devices", "states", "no-such-device", "-r", registry)
    assert missing.error_line.startswith("error: NOT_FOUND: ")


def test_gateway_bind_unbind(cli: Cli, registry: str) -> None:
    cli.ok("devices", "create", "gw-1", "-r", registry, "--gateway")
    cli.ok("devices", "create", "behind", "-r", registry)
    cli.ok("devices", "create", "elsewhere", "-r", registry)

    bound = cli.ok("gateways", "bind", "-r", registry, "--gateway", "gw-1", "--device", "behind")
    assert "behind" in bound.out and "bindDeviceToGateway" in bound.out
    listed = cli.json("devices", "list", "-r", registry, "--gateway-id", "gw-1")
    assert [d["id"] for d in listed["devices"]] == ["behind"]

    cli.ok("gateways", "unbind", "-r", registry, "--gateway", "gw-1", "--device", "behind")
    assert cli.json("devices", "list", "-r", registry, "--gateway-id", "gw-1") == {"devices": []}

    again = cli.run("gateways", "unbind", "-r", registry, "--gateway", "gw-1", "--device", "behind")
    assert again.error_line.startswith("error: NOT_FOUND: ")
    not_gateway = cli.run(
        "gateways", "bind", "-r", registry, "--gateway", "elsewhere", "--device", "behind"
    )
    assert not_gateway.error_line.startswith("error: INVALID_ARGUMENT: ")
    assert "not a gateway" in not_gateway.error_line


# Tokens


def test_tokens_viewer_reads_then_is_revoked(cli: Cli) -> None:
    created = cli.ok("tokens", "create", "--role", "viewer", "--name", "dashboard")
    viewer = created.out.strip()
    assert viewer.startswith("ic_") and "\n" not in viewer
    assert "cannot be shown again" in created.err
    token_id = viewer.split("_")[1]

    listed = cli.json("tokens", "list")["tokens"]
    [mine] = [t for t in listed if t["id"] == token_id]
    assert mine["role"] == "viewer" and mine["name"] == "dashboard" and mine["revoked"] is False
    assert all(viewer not in json.dumps(t) for t in listed)
    assert token_id in cli.ok("tokens", "list").out

    assert "deviceRegistries" in cli.json("registries", "list", token=viewer)
    denied = cli.run("registries", "create", unique("reg"), token=viewer)
    assert denied.error_line.startswith("error: PERMISSION_DENIED: ")
    assert "cloudiot.registries.create" in denied.error_line
    # Only owners manage tokens.
    assert cli.run("tokens", "list", token=viewer).error_line.startswith(
        "error: PERMISSION_DENIED: "
    )

    assert token_id in cli.ok("tokens", "revoke", token_id).out
    deadline = time.monotonic() + 2.5
    while True:
        result = cli.run("registries", "list", token=viewer)
        if result.code != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert result.error_line.startswith("error: UNAUTHENTICATED: ")
    [mine] = [t for t in cli.json("tokens", "list")["tokens"] if t["id"] == token_id]
    assert mine["revoked"] is True
    assert cli.run("tokens", "revoke", token_id).error_line.startswith("error: NOT_FOUND: ")


def test_token_create_json_and_bad_role(cli: Cli) -> None:
    created = cli.json("tokens", "create", "--role", "editor", "--name", "ci")
    assert created["role"] == "editor" and created["name"] == "ci"
    editor = created["token"]
    registry_id = unique("reg")
    assert cli.json("registries", "create", registry_id, token=editor)["id"] == registry_id

    bad = cli.run("tokens", "create", "--role", "superuser")
    assert bad.error_line.startswith("error: INVALID_ARGUMENT: ")
    assert "viewer, editor, owner" in bad.error_line


def test_tokens_expiry_rotation_and_bad_input(cli: Cli) -> None:
    created = cli.json("tokens", "create", "--role", "viewer", "--expires-in", "30d")
    token, expire_time = created["token"], created["expireTime"]
    token_id = token.split("_")[1]
    assert cli.json("registries", "list", token=token) is not None
    listed = cli.json("tokens", "list")["tokens"]
    [mine] = [t for t in listed if t["id"] == token_id]
    assert mine["expireTime"] == expire_time and "lastUseTime" in mine
    table = cli.ok("tokens", "list").out
    assert "expireTime" in table and "lastUseTime" in table

    soon = format_timestamp((datetime.now(UTC) + timedelta(days=60)).replace(microsecond=0))
    at = cli.json("tokens", "create", "--role", "viewer", "--expires-at", soon)
    assert at["expireTime"] == soon

    rotated = cli.ok("tokens", "rotate", token_id)
    new = rotated.out.strip()
    assert new.startswith(f"ic_{token_id}_") and new != token
    assert "cannot be shown again" in rotated.err
    assert cli.run("registries", "list", token=token).error_line.startswith(
        "error: UNAUTHENTICATED: "
    )
    assert cli.json("registries", "list", token=new) is not None
    assert cli.json("tokens", "rotate", token_id)["id"] == token_id

    for bad in ("30", "30x", "0d", "-1h", "1.5h", "9999d"):
        result = cli.run("tokens", "create", "--role", "viewer", "--expires-in", bad)
        assert result.code != 0 and "--expires-in" in result.err, (bad, result.err)
    past = cli.run("tokens", "create", "--role", "viewer", "--expires-at", "2001-01-01T00:00:00Z")
    assert past.error_line.startswith("error: INVALID_ARGUMENT: ")
    both = cli.run(
        "tokens",
        "create",
        "--role",
        "viewer",
        "--expires-in",
        "1d",
        "--expires-at",
        soon,
    )
    assert both.code != 0 and "not both" in both.err
    assert cli.run("tokens", "rotate", "000000000000").error_line.startswith("error: NOT_FOUND: ")
    cli.ok("tokens", "revoke", token_id)
    assert cli.run("tokens", "rotate", token_id).error_line.startswith(
        "error: FAILED_PRECONDITION: "
    )


# How the token is found


def test_token_from_data_dir(cli: Cli) -> None:
    """Without --token or IRONCORE_TOKEN the CLI reads <data-dir>/admin-token, where the data
    directory is IRONCORE_DATA_DIR."""
    env = cli.env(IRONCORE_DATA_DIR=str(cli.server.data_dir))
    assert "deviceRegistries" in cli.json("registries", "list", env=env)


def test_token_from_home(cli: Cli, tmp_path: Path) -> None:
    """With no IRONCORE_DATA_DIR either, the data directory is ~/.ironcore."""
    home = tmp_path / "home"
    (home / ".ironcore").mkdir(parents=True)
    shutil.copy(cli.server.data_dir / "admin-token", home / ".ironcore" / "admin-token")
    env = cli.env()
    env["HOME"] = str(home)
    assert "deviceRegistries" in cli.json("registries", "list", env=env)


def test_token_precedence(cli: Cli, tmp_path: Path) -> None:
    """--token beats IRONCORE_TOKEN, which beats the data directory's admin-token."""
    data_dir_env = {"IRONCORE_DATA_DIR": str(cli.server.data_dir)}
    env = cli.env("ic_bogus_token", **data_dir_env)
    assert cli.run("registries", "list", env=env).error_line.startswith("error: UNAUTHENTICATED")
    env = cli.env("ic_bogus_token", **data_dir_env)
    assert cli.run("--token", cli.server.token, "--json", "registries", "list", env=env).code == 0
    env = cli.env(cli.server.token)
    result = cli.run("--token", "ic_bogus_token", "registries", "list", env=env)
    assert result.error_line.startswith("error: UNAUTHENTICATED")


def test_no_token_at_all(cli: Cli, tmp_path: Path) -> None:
    env = cli.env()
    env["HOME"] = str(tmp_path)
    line = cli.run("registries", "list", env=env).error_line
    assert "no admin token" in line
    assert str(tmp_path / ".ironcore" / "admin-token") in line


# Errors: one line on stderr, starting with "error:", and a non-zero exit


def test_error_not_found(cli: Cli, registry: str) -> None:
    line = cli.run("devices", "get", "ghost", "-r", registry).error_line
    assert line.startswith("error: NOT_FOUND: ") and "ghost" in line
    assert cli.run("registries", "get", unique("nope")).error_line.startswith("error: NOT_FOUND")


def test_error_already_exists(cli: Cli, registry: str) -> None:
    line = cli.run("registries", "create", registry).error_line
    assert line.startswith("error: ALREADY_EXISTS: ")
    cli.ok("devices", "create", "twin", "-r", registry)
    line = cli.run("devices", "create", "twin", "-r", registry).error_line
    assert line.startswith("error: ALREADY_EXISTS: ")


@pytest.mark.parametrize("bad_id", ["ab", "1starts-with-digit", "goog-reserved", "has space"])
def test_error_invalid_id(cli: Cli, bad_id: str) -> None:
    line = cli.run("registries", "create", bad_id).error_line
    assert line.startswith("error: INVALID_ARGUMENT: ")
    # The rule is printed as the server wrote it (brackets included, not eaten as markup).
    assert "3 to 255 characters from [a-zA-Z0-9-._+~%]" in line


def test_error_unreadable_key_file(cli: Cli, registry: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    line = cli.run(
        "devices", "create", "dev-x", "-r", registry, "--key-file", str(missing)
    ).error_line
    assert f"cannot read {missing}" in line and "No such file" in line

    binary = tmp_path / "key.der"
    binary.write_bytes(b"\x30\x82\xff\xfe" * 32)
    line = cli.run(
        "devices", "create", "dev-x", "-r", registry, "--key-file", str(binary)
    ).error_line
    assert f"cannot read {binary}" in line

    line = cli.run(
        "devices", "create", "dev-x", "-r", registry, "--key-file", str(tmp_path)
    ).error_line
    assert f"cannot read {tmp_path}" in line

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    line = cli.run(
        "devices", "create", "dev-x", "-r", registry, "--key-file", str(garbage)
    ).error_line
    assert line.startswith("error: INVALID_ARGUMENT: ")
    # Nothing was created by any of these.
    assert cli.run("devices", "get", "dev-x", "-r", registry).error_line.startswith(
        "error: NOT_FOUND"
    )


def test_error_bad_metadata(cli: Cli, registry: str) -> None:
    line = cli.run("devices", "create", "dev-m", "-r", registry, "--metadata", "novalue").error_line
    assert "KEY=VALUE" in line


def test_error_server_unreachable(cli: Cli) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    line = cli.run("registries", "list", server=closed).error_line
    assert line.startswith(f"error: cannot reach ironcore at {closed}")
    line = cli.run("registries", "list", server="http://[::1").error_line
    assert "not a valid URL" in line


def test_server_from_environment(cli: Cli) -> None:
    env = cli.env(cli.server.token, IRONCORE_SERVER=cli.server.url)
    command = [sys.executable, "-m", "ironcore", "--json", "registries", "list"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "deviceRegistries" in json.loads(done.stdout)


def test_project_and_location(cli: Cli) -> None:
    registry_id = unique("reg")
    created = cli.json(
        "--project",
        "other-project",
        "--location",
        "europe-west1",
        "registries",
        "create",
        registry_id,
    )
    assert created["name"].startswith("projects/other-project/locations/europe-west1/")
    # The default project does not see it.
    assert cli.run("registries", "get", registry_id).error_line.startswith("error: NOT_FOUND")
    env = cli.env(
        cli.server.token, IRONCORE_PROJECT="other-project", IRONCORE_LOCATION="europe-west1"
    )
    assert cli.json("registries", "get", registry_id, env=env)["id"] == registry_id


# PostgreSQL


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_cli_on_postgresql(server: Server, tmp_path: Path, es256_pem: Path) -> None:
    cli = Cli(server, tmp_path)
    cli.ok("registries", "create", "pg-registry", "--event-topic", "projects/p/topics/telemetry")
    device = cli.json(
        "devices", "create", "pg-device", "-r", "pg-registry", "--key-file", str(es256_pem)
    )
    config = cli.json("devices", "config", "set", "pg-device", "-r", "pg-registry", "--data", "hi")
    assert config["version"] == "2"
    listed = cli.json("devices", "list", "-r", "pg-registry")
    assert [d["numId"] for d in listed["devices"]] == [device["numId"]]
    stale = cli.run(
        "devices",
        "config",
        "set",
        "pg-device",
        "-r",
        "pg-registry",
        "--data",
        "x",
        "--version-to-update",
        "1",
    )
    assert stale.error_line.startswith("error: FAILED_PRECONDITION: ")
    assert cli.run("registries", "create", "pg-registry").error_line.startswith(
        "error: ALREADY_EXISTS"
    )
