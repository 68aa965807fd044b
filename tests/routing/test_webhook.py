"""Push subscriptions deliver to a real local HTTP server that fails on purpose."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.bridge.devices import PROJECT, create_device, create_registry, make_jwt, new_key
from tests.conftest import Server, free_port, wait_for

# What is under test is the push to the endpoint; the database plays no part in it.
pytestmark = pytest.mark.databases("sqlite")


class Receiver:
    """An HTTP endpoint that answers 500 to the first `failures` requests, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = 500 if len(receiver.requests) <= receiver.failures else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/push"

    def close(self) -> None:
        self.server.shutdown()


def publish_from_device(server: Server, registry: str, payload: bytes) -> None:
    key = new_key()
    create_device(server, registry, "dev-push", key)
    location = f"{server.url}/v1/projects/{PROJECT}/locations/us-central1"
    url = f"{location}/registries/{registry}/devices/dev-push"
    r = httpx.post(
        f"{url}:publishEvent",
        json={"binary_data": base64.b64encode(payload).decode(), "sub_folder": "hooks"},
        headers={"Authorization": f"Bearer {make_jwt(key)}"},
    )
    assert r.status_code == 200, r.text


def push_subscription(server: Server, name: str, endpoint: str, **extra: Any) -> str:
    """Subscription `name` of the events topic pushing to `endpoint`; its signing secret."""
    r = httpx.put(
        f"{server.url}/v1/projects/{PROJECT}/subscriptions/{name}",
        json={
            "topic": f"projects/{PROJECT}/topics/events",
            "pushConfig": {"pushEndpoint": endpoint},
            **extra,
        },
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert r.status_code == 200, r.text
    secret: str = r.json()["pushConfig"]["signingSecret"]
    return secret


def test_webhook_retries_then_delivers_signed(server: Server) -> None:
    receiver = Receiver(failures=2)
    try:
        create_registry(server, "reg-push")
        secret = push_subscription(server, "hook", receiver.url)
        publish_from_device(server, "reg-push", b"webhook payload")
        wait_for(lambda: len(receiver.requests) >= 3, 30, "three push attempts")
        time.sleep(1.0)
        assert len(receiver.requests) == 3, "a delivered message must not be pushed again"
        for request_headers, body in receiver.requests:
            expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            assert request_headers["X-Ironcore-Signature"] == expected
        pushed = json.loads(receiver.requests[-1][1])
        assert pushed["subscription"] == f"projects/{PROJECT}/subscriptions/hook"
        assert base64.b64decode(pushed["message"]["data"]) == b"webhook payload"
        assert pushed["message"]["attributes"]["deviceId"] == "dev-push"
        assert pushed["message"]["attributes"]["subFolder"] == "hooks"
        assert pushed["message"]["messageId"] and pushed["message"]["publishTime"]
    finally:
        receiver.close()


def test_webhook_dead_letters_after_max_attempts(server: Server) -> None:
    receiver = Receiver(failures=10**6)
    headers = {"Authorization": f"Bearer {server.token}"}
    base = f"{server.url}/v1/projects/{PROJECT}"
    try:
        create_registry(server, "reg-dead")
        assert httpx.put(f"{base}/topics/dead-letters", json={}, headers=headers).status_code == 200
        r = httpx.put(
            f"{base}/subscriptions/dead-reader",
            json={"topic": f"projects/{PROJECT}/topics/dead-letters"},
            headers=headers,
        )
        assert r.status_code == 200
        dead_letters = {
            "deadLetterTopic": f"projects/{PROJECT}/topics/dead-letters",
            "maxDeliveryAttempts": 5,
        }
        push_subscription(server, "failing-hook", receiver.url, deadLetterPolicy=dead_letters)
        publish_from_device(server, "reg-dead", b"undeliverable")

        def dead_lettered() -> bool:
            pulled = httpx.post(
                f"{base}/subscriptions/dead-reader:pull", json={"maxMessages": 5}, headers=headers
            )
            received = pulled.json().get("receivedMessages", [])
            return any(base64.b64decode(m["message"]["data"]) == b"undeliverable" for m in received)

        wait_for(dead_lettered, 40, "the dead letter")
        assert len(receiver.requests) == 5
    finally:
        receiver.close()
