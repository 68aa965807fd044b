"""An MQTT device client for ironcore (and Cloud IoT Core's bridge contract), on paho-mqtt 2.

What it adds to paho: the client id and topics of the contract; a fresh JWT on every
(re)connect; reconnects with jittered exponential backoff, also when the bridge drops the
connection as the JWT expires (and, before that happens, a planned reconnect with a new token);
config and command handlers; QoS 1 publishes that return only once the bridge acknowledged them;
and gateway mode (attach, detach, relay, the errors topic).

    element = SoftwareElement.open(Path("device.se"))
    tokens = TokenSource.for_element(element, "my-project")
    client = DeviceClient(Endpoint("mqtt.example.com", 8883, "ca.crt"), DeviceName(
        "my-project", "us-central1", "my-registry", "my-device"), tokens)
    client.on_config = lambda device_id, payload: print("config", payload)
    client.start()
    client.publish_event(b"temperature=21")
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from ironcore.device.tokens import TokenSource

log = logging.getLogger(__name__)
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int = 8883
    # The CA the bridge's certificate chains to (ironcore's <data-dir>/tls/ca.crt by default).
    ca_file: str | None = None
    keepalive: int = 60


@dataclass(frozen=True)
class DeviceName:
    project: str
    location: str
    registry: str
    device_id: str

    @property
    def client_id(self) -> str:
        return (
            f"projects/{self.project}/locations/{self.location}"
            f"/registries/{self.registry}/devices/{self.device_id}"
        )


class PublishError(Exception):
    """A QoS 1 message was not acknowledged in time (the client retries it on reconnect)."""


def backoff(attempt: int, rng: random.Random) -> float:
    """Full jitter: a random wait up to an exponentially growing cap, so a fleet that lost its
    bridge at once does not come back at once."""
    cap = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2**attempt)
    return rng.uniform(0, cap)


Handler = Callable[[str, bytes], None]


class DeviceClient:
    """One device (or gateway) connection, kept up by a background thread."""

    def __init__(self, endpoint: Endpoint, name: DeviceName, tokens: TokenSource) -> None:
        self.endpoint = endpoint
        self.name = name
        self.tokens = tokens
        # Called with (device_id, payload) from paho's thread.
        self.on_config: Handler | None = None
        self.on_command: Callable[[str, str, bytes], None] | None = None
        self.on_gateway_error: Callable[[dict[str, Any]], None] | None = None
        self.on_connect: Callable[[], None] | None = None
        # ironcore's own commands (subfolder "ironcore/…", e.g. key rotation) and refusals.
        self.on_ironcore_command: Callable[[str, bytes], None] | None = None
        self.on_refused: Callable[[int], None] | None = None
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._stop = threading.Event()
        # A reconnect the client chose (to present a fresh JWT) skips the backoff.
        self._planned = False
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        self._attached: set[str] = set()
        self._attach_tokens: dict[str, str] = {}
        self.connects = 0
        self.last_connack = -1
        self._client = self._new_client()

    def _new_client(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.name.client_id,
            protocol=paho.MQTTv311,
            reconnect_on_failure=False,
        )
        if self.endpoint.ca_file is not None:
            client.tls_set(ca_certs=self.endpoint.ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # Lifecycle

    def start(self, wait: float | None = 30.0) -> None:
        """Connect in the background; with `wait`, return once connected (or raise)."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-{self.name.device_id}", daemon=True
        )
        self._thread.start()
        if wait is not None and not self._connected.wait(wait):
            raise TimeoutError(
                f"{self.name.device_id} did not connect within {wait} s "
                f"(last CONNACK {self.last_connack})"
            )

    def stop(self) -> None:
        self._stop.set()
        self._client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def reconnect_now(self) -> None:
        """Drop the connection; the client reconnects at once with a fresh token."""
        self.tokens.reset()
        self._client.disconnect()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self._client.username_pw_set("unused", self.tokens.token())
            try:
                self._client.connect(
                    self.endpoint.host, self.endpoint.port, self.endpoint.keepalive
                )
            except (OSError, ssl.SSLError) as error:
                log.info("%s: cannot connect: %s", self.name.device_id, error)
            else:
                self._client.loop_start()
                self._watch_token()
                self._client.loop_stop()
            if self._stop.is_set():
                break
            attempt = 0 if self._planned else attempt + 1
            wait = 0.0 if self._planned else backoff(attempt, self._rng)
            self._planned = False
            self._stop.wait(wait)

    def _watch_token(self) -> None:
        """Wait while the connection lasts; reconnect before the JWT expires."""
        started = time.monotonic()
        while not self._stop.is_set():
            if not self._connected.is_set() and time.monotonic() - started > 15:
                # No CONNACK (or a refusal): give up this attempt.
                self._client.disconnect()
                return
            if self._connected.is_set() and self.tokens.due(time.time()):
                self._planned = True
                self._client.disconnect()
            if self._disconnected.wait(0.5):
                self._disconnected.clear()
                return

    # paho callbacks (paho's thread)

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.last_connack = int(reason.value)
        if reason.is_failure:
            log.warning("%s: connection refused (%s)", self.name.device_id, reason)
            if self.on_refused is not None:
                self.on_refused(self.last_connack)
            return
        self.connects += 1
        for device_id in (self.name.device_id, *self._attached):
            client.subscribe(f"/devices/{device_id}/config", qos=1)
            client.subscribe(f"/devices/{device_id}/commands/#", qos=0)
        if self.on_gateway_error is not None:
            client.subscribe(f"/devices/{self.name.device_id}/errors", qos=0)
        for device_id in self._attached:
            client.publish(f"/devices/{device_id}/attach", self._attach_payload(device_id), qos=1)
        self._connected.set()
        if self.on_connect is not None:
            self.on_connect()

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        self._disconnected.set()
        if not self._stop.is_set() and not self._planned:
            log.info("%s: disconnected (%s)", self.name.device_id, reason)

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        parts = message.topic.split("/", 4)
        if len(parts) < 4 or parts[1] != "devices":
            return
        device_id, kind = parts[2], parts[3]
        payload = bytes(message.payload)
        if kind == "config" and self.on_config is not None:
            self.on_config(device_id, payload)
        elif kind == "commands":
            subfolder = parts[4] if len(parts) > 4 else ""
            if subfolder.startswith("ironcore/") and device_id == self.name.device_id:
                if self.on_ironcore_command is not None:
                    self.on_ironcore_command(subfolder[len("ironcore/") :], payload)
            elif self.on_command is not None:
                self.on_command(device_id, subfolder, payload)
        elif kind == "errors" and self.on_gateway_error is not None:
            try:
                self.on_gateway_error(json.loads(message.payload))
            except ValueError:
                log.warning("%s: unreadable gateway error %r", self.name.device_id, message.payload)

    # Publishing

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 30.0) -> None:
        """Publish; with QoS 1, return only once the bridge acknowledged (PublishError if not)."""
        info = self._client.publish(topic, payload, qos=qos)
        if qos == 0:
            return
        try:
            info.wait_for_publish(timeout)
        except RuntimeError as error:
            raise PublishError(f"{topic}: {error}") from None
        if not info.is_published():
            raise PublishError(f"{topic}: no acknowledgement within {timeout} s")

    def publish_event(
        self, payload: bytes, subfolder: str = "", device_id: str | None = None, qos: int = 1
    ) -> None:
        topic = f"/devices/{device_id or self.name.device_id}/events"
        self.publish(f"{topic}/{subfolder}" if subfolder else topic, payload, qos)

    def publish_state(self, payload: bytes, device_id: str | None = None, qos: int = 1) -> None:
        self.publish(f"/devices/{device_id or self.name.device_id}/state", payload, qos)

    # Gateway mode

    def attach(self, device_id: str, token: str = "") -> None:
        """Attach a device behind this gateway (its JWT when the gateway's auth method needs
        one), and subscribe to its config and commands. Failures arrive on `on_gateway_error`."""
        self._attach_tokens[device_id] = token
        self._attached.add(device_id)
        self.publish(f"/devices/{device_id}/attach", self._attach_payload(device_id))
        self._client.subscribe(f"/devices/{device_id}/config", qos=1)
        self._client.subscribe(f"/devices/{device_id}/commands/#", qos=0)

    def detach(self, device_id: str) -> None:
        self._attached.discard(device_id)
        self._attach_tokens.pop(device_id, None)
        self.publish(f"/devices/{device_id}/detach", b"{}")

    def _attach_payload(self, device_id: str) -> bytes:
        return json.dumps({"authorization": self._attach_tokens.get(device_id, "")}).encode()
