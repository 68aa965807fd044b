"""Commands, configs and blocks sent through the front (HAProxy) to the devices of a
`tests.ops.load.Load` while servers are restarted or killed, and what must hold afterwards
(issue 13):

- every command reached its device or got a clear error: a 200 means the device received it;
  FAILED_PRECONDITION (the device is not connected) and UNAVAILABLE are clear errors; anything
  else (a 500, a balancer's 502, a 200 the device never saw) is not;
- every device's latest config version is acknowledged by the device, and is the last config
  it received;
- a blocked device is connected nowhere: its client was disconnected and is refused when it
  tries again, and a command to it through any server answers that it is not connected.
"""

from __future__ import annotations

import base64
import itertools
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from tests.bridge.devices import LOCATION, PROJECT
from tests.conftest import Server, wait_for
from tests.ops.load import Load

# Each sender waits this long after a command and a config (two senders: a few of each a
# second, beside the devices' ~600 events).
PAUSE_SECONDS = 0.2
SENDERS = 2
# A command answered UNAVAILABLE may have waited for a server that did not answer (5 s).
REQUEST_SECONDS = 30.0
# The answers that say clearly why a command was not delivered: (HTTP status, error status).
CLEAR_ERRORS = frozenset({(400, "FAILED_PRECONDITION"), (503, "UNAVAILABLE")})


@dataclass(frozen=True)
class Answer:
    """What the API answered to one request sent to `device`."""

    device: str
    payload: bytes
    sent_at: float  # time.monotonic()
    status: int  # 0: no HTTP answer at all
    error: str  # the error's status (FAILED_PRECONDITION…) or what went wrong; "" for a 200
    detail: str = ""
    version: int = 0  # a config's version, once stored


def device_url(front: Server, registry: str, device_id: str) -> str:
    return (
        f"{front.url}/v1/projects/{PROJECT}/locations/{LOCATION}"
        f"/registries/{registry}/devices/{device_id}"
    )


def answer(
    device: str, payload: bytes, sent_at: float, response: httpx.Response | Exception
) -> Answer:
    if isinstance(response, Exception):
        return Answer(device, payload, sent_at, 0, type(response).__name__, str(response))
    if response.status_code == 200:
        version = int(response.json().get("version", 0))
        return Answer(device, payload, sent_at, 200, "", version=version)
    try:
        error = str(response.json()["error"]["status"])
    except (ValueError, KeyError, TypeError):
        error = "not an API error"
    return Answer(device, payload, sent_at, response.status_code, error, response.text[:300])


def send_command(api: httpx.Client, url: str, device: str, payload: bytes) -> Answer:
    sent_at = time.monotonic()
    body = {"binaryData": base64.b64encode(payload).decode()}
    try:
        response: httpx.Response | Exception = api.post(f"{url}:sendCommandToDevice", json=body)
    except httpx.HTTPError as error:
        response = error
    return answer(device, payload, sent_at, response)


class Orders:
    """Senders that go round the devices through `front`, each sending a command (a payload of
    its own) and, to the devices not in `unchanged`, a new config, until stopped."""

    def __init__(
        self, front: Server, registry: str, devices: Sequence[str], unchanged: Collection[str]
    ) -> None:
        self.front = front
        self.registry = registry
        self.devices = list(devices)
        self.unchanged = set(unchanged)
        self.commands: list[Answer] = []
        self.configs: list[Answer] = []
        self._lock = threading.Lock()
        # A sender holds a turn while its requests are under way (`paused` takes them all).
        self._turns = threading.Semaphore(SENDERS)
        self._stopping = threading.Event()
        self._numbers = itertools.count()
        self._pool = ThreadPoolExecutor(SENDERS)
        self._running = [self._pool.submit(self._send, i) for i in range(SENDERS)]

    def stop(self) -> None:
        """Stop sending, once what is under way is answered (again: nothing)."""
        self._stopping.set()
        for running in self._running:
            running.result(timeout=2 * REQUEST_SECONDS + 10)
        self._pool.shutdown()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No request is under way or sent within the block."""
        for _ in range(SENDERS):
            self._turns.acquire()
        try:
            yield
        finally:
            for _ in range(SENDERS):
                self._turns.release()

    def _send(self, first: int) -> None:
        headers = {"Authorization": f"Bearer {self.front.token}"}
        with httpx.Client(headers=headers, timeout=REQUEST_SECONDS) as api:
            for index in itertools.count(first, SENDERS):
                if self._stopping.is_set():
                    return
                device = self.devices[index % len(self.devices)]
                with self._turns:
                    self._round(api, device)
                time.sleep(PAUSE_SECONDS)

    def _round(self, api: httpx.Client, device: str) -> None:
        url = device_url(self.front, self.registry, device)
        number = next(self._numbers)
        command = send_command(api, url, device, f"{self.registry}/command/{number}".encode())
        with self._lock:
            self.commands.append(command)
        if device in self.unchanged:
            return
        data = f"{self.registry}/config/{number}".encode()
        sent_at = time.monotonic()
        body = {"binaryData": base64.b64encode(data).decode()}
        try:
            response: httpx.Response | Exception = api.post(
                f"{url}:modifyCloudToDeviceConfig", json=body
            )
        except httpx.HTTPError as error:
            response = error
        with self._lock:
            self.configs.append(answer(device, data, sent_at, response))


def block(front: Server, registry: str, device: str) -> None:
    headers = {"Authorization": f"Bearer {front.token}"}
    response = httpx.patch(
        device_url(front, registry, device),
        params={"updateMask": "blocked"},
        json={"blocked": True},
        headers=headers,
        timeout=REQUEST_SECONDS,
    )
    assert response.status_code == 200, response.text


def check_commands(answers: Sequence[Answer], load: Load, timeout: float = 15) -> None:
    """Every command answered 200 reached its device (the last may still be on their way);
    every other answer is a clear error."""
    unclear = [a for a in answers if a.status != 200 and (a.status, a.error) not in CLEAR_ERRORS]
    assert not unclear, (
        f"{len(unclear)} of {len(answers)} commands got no clear answer: {unclear[:5]}"
    )
    delivered = [a for a in answers if a.status == 200]
    assert delivered, f"none of {len(answers)} commands was delivered"

    def lost() -> list[Answer]:
        received = load.seen().commands
        return [a for a in delivered if a.payload not in received]

    deadline = time.monotonic() + timeout
    while (missing := lost()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not missing, (
        f"{len(missing)} of {len(delivered)} commands answered 200 never reached their device: "
        f"{missing[:5]}"
    )


def check_configs(
    front: Server, registry: str, devices: Collection[str], answers: Sequence[Answer], load: Load
) -> None:
    """Every config change got a clear answer, and each device acknowledged its latest config
    version and received it last (waited for: a device that just reconnected is sent it)."""
    unclear = [a for a in answers if a.status != 200 and (a.status, a.error) not in CLEAR_ERRORS]
    assert not unclear, (
        f"{len(unclear)} of {len(answers)} configs got no clear answer: {unclear[:5]}"
    )
    stored: dict[str, int] = {}
    for a in answers:
        if a.status == 200:
            stored[a.device] = max(stored.get(a.device, 0), a.version)
    assert stored, f"none of {len(answers)} config changes was stored"
    headers = {"Authorization": f"Bearer {front.token}"}

    def behind(api: httpx.Client) -> dict[str, str]:
        received = load.seen().configs
        found = {}
        for device in devices:
            response = api.get(device_url(front, registry, device))
            assert response.status_code == 200, response.text
            config = response.json().get("config", {})
            version = int(config.get("version", 0))
            data = base64.b64decode(config.get("binaryData", ""))
            if version < stored.get(device, 0):
                found[device] = f"version {version} is older than one the API stored"
            elif "deviceAckTime" not in config:
                found[device] = f"version {version} is not acknowledged"
            elif received.get(device) != data:
                found[device] = (
                    f"version {version} is {data!r}, the device last got {received.get(device)!r}"
                )
        return found

    with httpx.Client(headers=headers, timeout=REQUEST_SECONDS) as api:
        deadline = time.monotonic() + 30
        while (late := behind(api)) and time.monotonic() < deadline:
            time.sleep(0.5)
    assert not late, (
        f"{len(late)} devices' latest configs are not acknowledged: {sorted(late.items())[:5]}"
    )


def check_reached_everywhere(servers: Sequence[Server], registry: str, load: Load) -> None:
    """Once the cluster has settled, a command to each connected device through each server
    reaches it: every server knows where every device is."""
    connected = sorted(load.seen().connected)
    assert connected, "no device is connected"
    sends = [(s, d, i) for i, (s, d) in enumerate(itertools.product(servers, connected))]

    def one(server: Server, device: str, number: int) -> Answer:
        headers = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(headers=headers, timeout=REQUEST_SECONDS) as api:
            payload = f"{registry}/settled/{number}".encode()
            return send_command(api, device_url(server, registry, device), device, payload)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda send: one(*send), sends))
    refused = [(a.device, a.status, a.error) for a in answers if a.status != 200]
    assert not refused, f"{len(refused)} of {len(answers)} commands were refused: {refused[:5]}"
    check_commands(answers, load)


def check_blocked(
    servers: Sequence[Server], registry: str, blocked: Collection[str], load: Load
) -> None:
    """The blocked devices are connected nowhere: their clients were disconnected and are
    refused when they try again, and a command to them through any server answers that they
    are not connected."""
    wait_for(
        lambda: not set(blocked) & load.seen().connected,
        10,
        "the blocked devices to be disconnected",
    )
    connects = {d: load.connects[d] for d in blocked}
    refusals = {d: load.refusals[d] for d in blocked}
    wait_for(
        lambda: all(load.refusals[d] > refusals[d] for d in blocked),
        10,
        "the blocked devices to try again and be refused",
    )
    for server in servers:
        headers = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(headers=headers, timeout=REQUEST_SECONDS) as api:
            for device in blocked:
                got = send_command(api, device_url(server, registry, device), device, b"blocked")
                assert (got.status, got.error) == (400, "FAILED_PRECONDITION"), got
                assert "not connected" in got.detail, got
    assert {d: load.connects[d] for d in blocked} == connects, "a blocked device connected again"
    assert not set(blocked) & load.seen().connected, "a blocked device is connected"
