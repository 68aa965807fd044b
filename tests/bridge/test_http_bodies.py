"""Request bodies against a real `ironcore serve`: the device JWT (or admin token) is checked
before a body is read; a body is read up to its method's cap and refused past it with 413, the
connection closed and the rest never read; JSON nested too deeply is a 400, never a 500; and an
event subfolder is at most 256 bytes, over HTTP and MQTT.

Large bodies go over raw sockets on loopback, so that a test sees how much the server took
before it answered; no request streams more than STREAM_MAX bytes, and every wait has a
timeout.
"""

from __future__ import annotations

import base64
import json
import random
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ironcore import limits
from tests.bridge.devices import (
    LOCATION,
    PROJECT,
    connect,
    create_device,
    create_registry,
    last_error,
    make_jwt,
    new_key,
)
from tests.conftest import Server
from tests.keys import PrivateKey

REGISTRY, DEVICE = "reg-bodies", "dev-bodies"
DEVICE_PATH = f"/v1/projects/{PROJECT}/locations/{LOCATION}/registries/{REGISTRY}/devices/{DEVICE}"
ADMIN_PATH = f"/v1/projects/{PROJECT}/locations/{LOCATION}/registries"
# The caps, as the contract gives them: the payload limit in base64 plus 16 KiB of JSON.
EVENT_CAP = 4 * -(-limits.EVENT_BYTES // 3) + 16 * 1024
STATE_CAP = 4 * -(-limits.STATE_BYTES // 3) + 16 * 1024
HUGE = 100 << 20  # what the hostile requests declare
FIRST = 1 << 20  # what they send before waiting for an answer
STREAM_MAX = 12 << 20  # what any one request sends at most
TIMEOUT = 10.0


@dataclass
class Device:
    key: PrivateKey

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_jwt(self.key)}"}


@pytest.fixture(scope="module")
def device(module_server: Server) -> Device:
    create_registry(module_server, REGISTRY)
    key = new_key()
    create_device(module_server, REGISTRY, DEVICE, key)
    return Device(key)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]
    # Body bytes the client had written when the answer was complete (None: no answer).
    answered_after: int | None
    # Body bytes the client wrote in all, until the server closed the connection or the
    # client stopped at STREAM_MAX.
    sent: int
    closed: bool

    @property
    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = self.body["error"]
        return error


def post(
    server: Server,
    path: str,
    headers: dict[str, str],
    length: int | None,
    fill: bytes = b"[",
) -> Answer:
    """POST `path` with a body of `length` bytes of `fill` (None: chunked, of no end): FIRST
    bytes, then wait up to TIMEOUT for an answer, then go on writing as fast as the server
    takes it (up to STREAM_MAX in all) until the server closes the connection."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    piece = fill * 65536
    if length is None:
        piece = b"10000\r\n" + piece + b"\r\n"
    total = min(STREAM_MAX, length if length is not None else STREAM_MAX)
    received = bytearray()
    answered_after: int | None = None
    sent = 0
    closed = False
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:

        def write(up_to: int) -> None:
            nonlocal sent
            offset = sent % len(piece)
            sent += sock.send(piece[offset : offset + up_to - sent])

        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            while sent < min(FIRST, total):
                write(min(FIRST, total))
        except (BrokenPipeError, ConnectionResetError):
            closed = True  # answered and closed already: the answer is still there to read
        sock.setblocking(False)
        waiting_until = time.monotonic() + TIMEOUT
        deadline = waiting_until + TIMEOUT
        while time.monotonic() < deadline:
            # First the answer to what was sent, then the rest of the body.
            writing = sent < total and (
                answered_after is not None or time.monotonic() > waiting_until
            )
            readable, writable, _ = select.select([sock], [sock] if writing else [], [], 0.1)
            if readable:
                try:
                    data = sock.recv(1 << 16)
                except ConnectionResetError:
                    data = b""
                received += data
                if answered_after is None and _complete(received):
                    answered_after = sent
                if not data:
                    closed = True
                    break
            if writable and not closed:
                try:
                    write(total)
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
    if answered_after is None:
        return Answer(0, {}, {}, None, sent, closed)
    status, headers_out, body = _parse(bytes(received))
    return Answer(status, headers_out, body, answered_after, sent, closed)


def _complete(data: bytes | bytearray) -> bool:
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return False
    length = _parse_head(head)[1].get("content-length")
    return length is not None and len(body) >= int(length)


def _parse_head(head: bytes | bytearray) -> tuple[int, dict[str, str]]:
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def _parse(data: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = data.partition(b"\r\n\r\n")
    status, headers = _parse_head(head)
    length = int(headers["content-length"])
    parsed: dict[str, Any] = json.loads(body[:length])
    return status, headers, parsed


def assert_refused_early(answer: Answer, status: int, code: str) -> None:
    """Answered on what FIRST held, with the error envelope; then the connection closed before
    the client could write STREAM_MAX bytes."""
    assert answer.answered_after is not None, f"no answer after {answer.sent} bytes"
    assert answer.answered_after <= FIRST
    assert (answer.status, answer.error["code"], answer.error["status"]) == (status, status, code)
    assert answer.headers.get("connection") == "close"
    assert answer.closed and answer.sent < STREAM_MAX, answer.sent


def vm(server: Server, field: str) -> int:
    """A line of the server's /proc status, in bytes (VmRSS: now; VmHWM: its peak so far)."""
    with open(f"/proc/{server.process.pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for the server")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Oversized bodies


def test_the_cap_is_the_largest_payload_in_base64_and_its_json(
    module_server: Server, device: Device
) -> None:
    """A declared body over the cap is refused before it is read; everything the contract
    allows, in the widest JSON a client writes, is under it and taken."""
    for verb, cap in ((":publishEvent", EVENT_CAP), (":setState", STATE_CAP)):
        answer = post(module_server, DEVICE_PATH + verb, device.auth, HUGE)
        assert_refused_early(answer, 413, "INVALID_ARGUMENT")
        message = answer.error["message"]
        assert message.startswith(f"Request payload size exceeds the limit: {cap} bytes")
        assert verb[1:] in message
    url = module_server.url + DEVICE_PATH
    headers = {**device.auth, "content-type": "application/json"}

    def publish(verb: str, body: str) -> httpx.Response:
        assert len(body.encode()) <= (EVENT_CAP if verb == ":publishEvent" else STATE_CAP)
        return httpx.post(url + verb, content=body, headers=headers, timeout=TIMEOUT)

    # The largest event in the widest JSON the envelope allowance is for: pretty-printed, with
    # a 256-byte subfolder written as \u escapes, and "\/" for each "/" of the
    # base64 (PHP's json_encode).
    payload = random.Random(7).randbytes(limits.EVENT_BYTES)
    data = b64(payload).replace("/", "\\/")
    escaped = "".join(f"\\u{ord(c):04x}" for c in "s" * 256)
    body = (
        '{\n    "binaryData": "' + data + '",\n    "subFolder": "' + escaped + '",\n'
        '    "gatewayInfo": {"gatewayId": ""}\n}'
    )
    response = publish(":publishEvent", body)
    assert (response.status_code, response.json()) == (200, {}), response.text
    body = json.dumps({"state": {"binaryData": b64(b"s" * limits.STATE_BYTES)}}, indent=4)
    response = publish(":setState", body)
    assert (response.status_code, response.json()) == (200, {}), response.text
    # One byte more than the contract allows is its rule's error (400), not the cap's.
    response = publish(":publishEvent", json.dumps({"binaryData": b64(payload + b"x")}))
    assert response.status_code == 400 and "262144 bytes" in response.text


def test_a_streamed_body_is_refused_once_past_the_cap(
    module_server: Server, device: Device
) -> None:
    # No Content-Length: the server reads up to the cap, then refuses and closes.
    answer = post(module_server, DEVICE_PATH + ":publishEvent", device.auth, None)
    assert answer.answered_after is not None
    assert (answer.status, answer.error["status"]) == (413, "INVALID_ARGUMENT")
    assert str(EVENT_CAP) in answer.error["message"]
    assert answer.headers.get("connection") == "close"
    assert answer.closed and answer.sent < STREAM_MAX


def test_the_caller_is_refused_before_its_body_is_read(
    module_server: Server, device: Device
) -> None:
    other = Device(new_key())
    for headers in ({}, other.auth, {"Authorization": f"Bearer {module_server.token}"}):
        answer = post(module_server, DEVICE_PATH + ":publishEvent", headers, HUGE)
        assert_refused_early(answer, 401, "UNAUTHENTICATED")
    unknown = DEVICE_PATH.replace(DEVICE, "nobody")
    answer = post(module_server, unknown + ":setState", device.auth, HUGE)
    assert_refused_early(answer, 404, "NOT_FOUND")
    # The admin API: no token, or a wrong one, is refused before the body too.
    for headers in ({}, {"Authorization": "Bearer nope"}):
        answer = post(module_server, ADMIN_PATH, headers, HUGE)
        assert_refused_early(answer, 401, "UNAUTHENTICATED")


def test_an_admin_body_over_the_cap_is_refused_before_it_is_read(module_server: Server) -> None:
    headers = {"Authorization": f"Bearer {module_server.token}"}
    answer = post(module_server, ADMIN_PATH, headers, 200 << 20)
    assert_refused_early(answer, 413, "INVALID_ARGUMENT")
    assert "firmware upload" in answer.error["message"]


def test_hostile_bodies_in_parallel_leave_the_server_small(
    module_server: Server, device: Device
) -> None:
    """Four parallel 100 MB publishEvents without a token (the issue's report: 974 MB of RSS)
    and four with one: the server's peak RSS grows by far less than the bodies."""
    before = vm(module_server, "VmHWM")
    answers: list[Answer] = []

    def hostile(headers: dict[str, str]) -> None:
        answers.append(post(module_server, DEVICE_PATH + ":publishEvent", headers, HUGE))

    for headers in ({}, device.auth):
        threads = [threading.Thread(target=hostile, args=(headers,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(3 * TIMEOUT)
    assert len(answers) == 8
    assert sorted(a.status for a in answers) == [401] * 4 + [413] * 4
    assert all(a.closed for a in answers)
    grown = vm(module_server, "VmHWM") - before
    assert grown < 16 << 20, f"the server's peak RSS grew by {grown >> 20} MB"
    assert httpx.get(f"{module_server.url}/readyz").status_code == 200


# Nesting


@pytest.mark.parametrize("depth", [33, 1000, 50_000])
def test_json_nested_too_deeply_is_a_400(module_server: Server, device: Device, depth: int) -> None:
    # 32 levels are read, and refused for what they are (not an event), not for their depth.
    response = httpx.post(
        module_server.url + DEVICE_PATH + ":publishEvent",
        content="[" * 32 + "]" * 32,
        headers=device.auth,
        timeout=TIMEOUT,
    )
    assert response.status_code == 400 and "nested too deeply" not in response.text
    nested = "[" * depth + "]" * depth
    admin = {"Authorization": f"Bearer {module_server.token}"}
    for path, headers, body in [
        (DEVICE_PATH + ":publishEvent", device.auth, nested),
        (DEVICE_PATH + ":setState", device.auth, '{"state": ' + nested + "}"),
        (ADMIN_PATH, admin, nested),
        (f"/ironcore/v1/projects/{PROJECT}/firmware", admin, '{"manifest": {"a": ' + nested + "}}"),
        (f"/v1/projects/{PROJECT}/topics/t:publish", admin, '{"messages": ' + nested + "}"),
    ]:
        response = httpx.post(module_server.url + path, content=body, headers=headers, timeout=30)
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["status"] == "INVALID_ARGUMENT"
        assert "nested too deeply: at most 32 levels" in error["message"], (path, error)


# Any body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
any_body = (
    st.binary(max_size=300)
    | st.text(alphabet='[]{}",:\\ 0123456789.eE-truefalsn\u00e9\ud800', max_size=200).map(
        lambda text: text.encode("utf-8", "surrogatepass")
    )
    | st.integers(0, 3000).map(lambda n: b"[" * n + b"]" * n)
    | st.integers(0, 3000).map(lambda n: b'{"binaryData": ' + b"[" * n)
    | st.integers(0, 3000).map(lambda n: b'{"state": ' + b'{"a": ' * n + b"1" + b"}" * n)
    | json_values.map(lambda value: json.dumps(value).encode())
)
ADMIN_ROUTES = [
    ADMIN_PATH,
    f"/v1/projects/{PROJECT}/topics/any-topic:publish",
    f"/ironcore{ADMIN_PATH}/{REGISTRY}:importManifest",
    f"/ironcore/v1/projects/{PROJECT}/firmware",
]


def levels(body: bytes) -> int:
    """How many levels the nesting bodies of `any_body` open (0 for the others)."""
    opened = body.count(b"[") + body.count(b"{")
    half = len(body) // 2
    nesting = body == b"[" * half + b"]" * half or body.startswith(
        (b'{"binaryData": [', b'{"state": {')
    )
    return opened if nesting and opened > 1 else 0


@pytest.mark.parametrize("path", [":publishEvent", ":setState", *ADMIN_ROUTES])
def test_no_body_gets_a_500(module_server: Server, device: Device, path: str) -> None:
    """Whatever the body, the answer is below 500 and in the error envelope."""
    admin = {"Authorization": f"Bearer {module_server.token}"}
    url = module_server.url + (DEVICE_PATH + path if path.startswith(":") else path)
    with httpx.Client(timeout=TIMEOUT) as client:

        @settings(
            max_examples=30,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(body=any_body)
        @example(body=b"[" * 1000 + b"]" * 1000)
        @example(body=b'{"binaryData": ' + b"[" * 1000)
        def check(body: bytes) -> None:
            headers = device.auth if path.startswith(":") else admin
            response = client.post(url, content=body, headers=headers)
            assert response.status_code < 500, (body[:100], response.text)
            if response.status_code >= 400:
                error = response.json()["error"]
                assert set(error) == {"code", "message", "status", "details"}
                assert error["code"] == response.status_code
            if levels(body) > 32:
                assert response.status_code == 400
                assert "nested too deeply" in response.json()["error"]["message"]

        check()
    assert "Traceback" not in module_server.log.read_text()


# Subfolders


def test_an_event_subfolder_over_256_bytes_is_refused_over_http(
    module_server: Server, device: Device
) -> None:
    url = module_server.url + DEVICE_PATH + ":publishEvent"
    for subfolder, status in (("s" * 256, 200), ("s" * 257, 400), ("é" * 129, 400)):
        body = {"binaryData": b64(b"e"), "subFolder": subfolder}
        response = httpx.post(url, json=body, headers=device.auth, timeout=TIMEOUT)
        assert response.status_code == status, response.text
        if status == 400:
            error = response.json()["error"]
            assert error["status"] == "INVALID_ARGUMENT" and "256 bytes" in error["message"]


@pytest.fixture
def mqtt_device(module_server: Server, device: Device) -> Iterator[Any]:
    online = connect(module_server, REGISTRY, DEVICE, make_jwt(device.key), subscribe=False)
    online.client.reconnect_delay_set(60, 120)
    yield online
    online.client.loop_stop()


def test_an_event_subfolder_over_256_bytes_is_refused_over_mqtt(
    module_server: Server, mqtt_device: Any
) -> None:
    mqtt_device.publish(f"/devices/{DEVICE}/events/{'s' * 256}", b"fits")
    info = mqtt_device.client.publish(f"/devices/{DEVICE}/events/{'s' * 10_000}", b"x", qos=1)
    mqtt_device.wait_disconnect(timeout=TIMEOUT)
    assert not info.is_published()
    error = last_error(module_server, REGISTRY, DEVICE, "subfolder")
    assert error["code"] == 3 and "10000 bytes" in error["message"]


def test_a_key_offer_nested_too_deeply_is_refused_over_mqtt(
    module_server: Server, mqtt_device: Any
) -> None:
    nested = b"[" * 5000 + b"]" * 5000
    mqtt_device.client.publish(f"/devices/{DEVICE}/ironcore/key-rotation", nested, qos=1)
    mqtt_device.wait_disconnect(timeout=TIMEOUT)
    error = last_error(module_server, REGISTRY, DEVICE, "nested too deeply")
    assert error["code"] == 3, error
