"""`gcloud pubsub` (the Google Cloud CLI, installed from Debian's google-cloud-cli package)
against a real ironcore's REST API, set up exactly as docs/migrating.md says: the Pub/Sub
endpoint override, a project, and an admin token as the access token. The CLI speaks Pub/Sub's
v1 REST JSON; reading a policy is a GET of `:getIamPolicy`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES, Server

pytestmark = pytest.mark.databases("sqlite")
PROJECT = "gcloud-project"


def gcloud(server: Server, config: Path, *args: str) -> str:
    token = config / "token"
    if not token.exists():
        token.write_text(server.token)
        token.chmod(0o600)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CLOUDSDK_")},
        # The settings docs/migrating.md gives, as environment variables.
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB": f"{server.url}/",
        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token),
        "CLOUDSDK_CORE_PROJECT": PROJECT,
        # A configuration of the test's own, and no prompts or update checks.
        "CLOUDSDK_CONFIG": str(config / "gcloud"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
    }
    done = subprocess.run(
        ["gcloud", "pubsub", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_gcloud_pubsub_commands(server: Server, tmp_path: Path) -> None:
    if shutil.which("gcloud") is None:
        message = "the gcloud CLI is not installed (Debian package google-cloud-cli)"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message} and IRONCORE_REQUIRE_SERVICES=1")
        pytest.skip(message)
    assert "Created topic" in gcloud(server, tmp_path, "topics", "create", "telemetry")
    gcloud(server, tmp_path, "subscriptions", "create", "backend", "--topic", "telemetry")
    gcloud(
        server,
        tmp_path,
        "topics",
        "publish",
        "telemetry",
        "--message",
        "hello",
        "--attribute",
        "deviceId=dev-1",
    )
    pulled = gcloud(
        server, tmp_path, "subscriptions", "pull", "backend", "--auto-ack", "--format", "json"
    )
    assert '"deviceId": "dev-1"' in pulled and "aGVsbG8=" in pulled  # base64 of "hello"
    granted = gcloud(
        server,
        tmp_path,
        "topics",
        "add-iam-policy-binding",
        "telemetry",
        "--member",
        "serviceAccount:cloud-iot@system.gserviceaccount.com",
        "--role",
        "roles/pubsub.publisher",
    )
    assert "Updated IAM policy" in granted
    policy = gcloud(server, tmp_path, "topics", "get-iam-policy", "telemetry", "--format", "json")
    assert "serviceAccount:cloud-iot@system.gserviceaccount.com" in policy
    listed = gcloud(server, tmp_path, "subscriptions", "list", "--format", "value(name)")
    assert listed.split() == [f"projects/{PROJECT}/subscriptions/backend"]
    gcloud(server, tmp_path, "subscriptions", "delete", "backend")
    gcloud(server, tmp_path, "topics", "delete", "telemetry")
