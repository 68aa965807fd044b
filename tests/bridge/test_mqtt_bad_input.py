"""Hostile devices against a real server: bad JWTs over TLS, malformed packets in plain text.

Every bad token must get CONNACK 5 and be counted under its reason; every malformed stream
must get its connection closed; and all the while a well-behaved device keeps publishing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ironcore.bridge.mqtt import codec
from ironcore.bridge.mqtt.codec import Connack, Connect, Puback, Publish, Subscribe, encode
from tests.bridge.devices import (
    PROJECT,
    Device,
    admin,
    client_id,
    connect,
    create_device,
    create_registry,
    last_error,
    make_jwt,
    new_key,
)
from tests.conftest import Server, free_port, start_server, stop_server
from tests.keys import PrivateKey, public_pem

REGISTRY = "reg-hostile"
GOOD = "dev-good"  # the well-behaved paho device
TARGET = "dev-target"  # the device the bad tokens try to impersonate
RAW = "dev-raw"  # authenticates raw sockets on the plaintext listener
BLOCKED, REVOKED, LAPSED = "dev-blocked", "dev-revoked", "dev-lapsed"
TIMEOUT = 5.0


@dataclass
class Publisher:
    """Publishes QoS 1 events from the good device in the background, counting PUBACKs."""

    device: Device
    acked: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.05):
            info = self.device.client.publish(f"/devices/{GOOD}/events", b"steady", qos=1)
            info.wait_for_publish(TIMEOUT)
            if info.is_published():
                self.acked += 1
            else:
                self.failures.append(f"no PUBACK within {TIMEOUT} s (rc {info.rc})")


@dataclass
class Bridge:
    server: Server
    plain_port: int
    keys: dict[str, PrivateKey]
    revoked_key: PrivateKey
    good: Device
    publisher: Publisher


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    plain_port = free_port()
    data_dir = tmp_path_factory.mktemp("hostile") / "data"
    server = start_server(data_dir, extra=["--insecure-mqtt-port", str(plain_port)])
    try:
        create_registry(server, REGISTRY)
        keys = {name: new_key() for name in (GOOD, TARGET, RAW, BLOCKED, REVOKED, LAPSED)}
        for name in (GOOD, TARGET, RAW, REVOKED):
            create_device(server, REGISTRY, name, keys[name])
        create_device(server, REGISTRY, BLOCKED, keys[BLOCKED], blocked=True)
        with admin(server) as api:
            body = {
                "id": LAPSED,
                "credentials": [
                    {
                        "publicKey": {"format": "ES256_PEM", "key": public_pem(keys[LAPSED])},
                        "expirationTime": "2020-01-01T00:00:00Z",
                    }
                ],
            }
            response = api.post(f"/registries/{REGISTRY}/devices", json=body)
            assert response.status_code == 200, response.text
            # Rotate REVOKED's key: tokens signed by the old one, which worked, must stop working.
            assert tls_connack(server, REVOKED, make_jwt(keys[REVOKED])) == Connack(False, 0)
            revoked_key, keys[REVOKED] = keys[REVOKED], new_key()
            response = api.patch(
                f"/registries/{REGISTRY}/devices/{REVOKED}",
                params={"updateMask": "credentials"},
                json={
                    "credentials": [
                        {"publicKey": {"format": "ES256_PEM", "key": public_pem(keys[REVOKED])}}
                    ]
                },
            )
            assert response.status_code == 200, response.text
        good = connect(server, REGISTRY, GOOD, make_jwt(keys[GOOD]), subscribe=False)
        publisher = Publisher(good)
        thread = threading.Thread(target=publisher.run, daemon=True)
        thread.start()
        try:
            yield Bridge(server, plain_port, keys, revoked_key, good, publisher)
        finally:
            publisher.stop.set()
            thread.join(TIMEOUT + 1)
            good.close()
    finally:
        stop_server(server)


# Raw MQTT over sockets.


def tls_socket(server: Server) -> socket.socket:
    context = ssl.create_default_context(cafile=str(server.ca_file))
    sock = socket.create_connection(("localhost", server.mqtt_port), timeout=TIMEOUT)
    return context.wrap_socket(sock, server_hostname="localhost")


def plain_socket(bridge: Bridge) -> socket.socket:
    return socket.create_connection(("127.0.0.1", bridge.plain_port), timeout=TIMEOUT)


def tls_connack(server: Server, device_id: str, token: str) -> codec.Packet:
    with tls_socket(server) as sock:
        sock.sendall(encode(connect_packet(client_id(REGISTRY, device_id), token.encode())))
        return read_packet(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; fails if it keeps the connection open."""
    received = bytearray()
    deadline = time.monotonic() + TIMEOUT
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open; got {received!r}") from None
        except ConnectionResetError:
            return bytes(received)
        if not data:
            return bytes(received)
        received += data


def decode_all(data: bytes) -> list[codec.Packet]:
    decoder = codec.Decoder(codec.MAX_PACKET_SIZE, codec.MAX_BUFFER_SIZE)
    decoder.feed(data)
    packets = []
    while (packet := decoder.next_packet()) is not None:
        packets.append(packet)
    return packets


def read_packet(sock: socket.socket) -> codec.Packet:
    decoder = codec.Decoder(codec.MAX_PACKET_SIZE, codec.MAX_BUFFER_SIZE)
    while (packet := decoder.next_packet()) is None:
        data = sock.recv(65536)
        assert data, "the server closed the connection"
        decoder.feed(data)
    return packet


def connect_packet(cid: str, password: bytes | None, level: int = 4) -> Connect:
    username = "unused" if password is not None else None
    return Connect("MQTT", level, True, 60, cid, username, password)


# Metrics.


def auth_failures(server: Server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    pattern = r'^ironcore_device_auth_failures_total\{bridge="mqtt",reason="([^"]+)"\} (\S+)$'
    return {reason: float(value) for reason, value in re.findall(pattern, text, re.M)}


def gauge(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} is not exported"
    return float(match[1])


# Hand-made tokens.


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def claims(**changes: object) -> dict[str, object]:
    now = int(time.time())
    body: dict[str, object] = {"iat": now, "exp": now + 1200, "aud": PROJECT}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def es256(key: PrivateKey, header: dict[str, object], body: dict[str, object]) -> str:
    """A JWS signed properly, so that only what the test changed is wrong."""
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signing_input = f"{b64json(header)}.{b64json(body)}"
    der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{signing_input}.{b64(r.to_bytes(32) + s.to_bytes(32))}"


def unsigned(alg: str) -> str:
    return f"{b64json({'alg': alg, 'typ': 'JWT'})}.{b64json(claims())}."


def hs256_with_public_pem(key: PrivateKey) -> str:
    """The classic algorithm confusion: HMAC keyed with the device's public key."""
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT'})}.{b64json(claims())}"
    mac = hmac.new(public_pem(key).encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def with_signature(token: str, change: Callable[[bytes], bytes]) -> str:
    head, body, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    return f"{head}.{body}.{b64(change(raw))}"


def der_signature(key: PrivateKey) -> str:
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signing_input = f"{b64json({'alg': 'ES256', 'typ': 'JWT'})}.{b64json(claims())}"
    der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    return f"{signing_input}.{b64(der)}"


def embedded_key_header(param: str, attacker: PrivateKey) -> str:
    numbers = attacker.public_key().public_numbers()
    assert isinstance(numbers, ec.EllipticCurvePublicNumbers)
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(numbers.x.to_bytes(32)),
        "y": b64(numbers.y.to_bytes(32)),
    }
    value: object = {
        "jwk": jwk,
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": ["MIIBszCCAVmgAwIBAgIUY29tZSBvbiwgdGhpcyBpcyBub3QgYSBjZXJ0"],
    }[param]
    return es256(attacker, {"alg": "ES256", "typ": "JWT", param: value}, claims())


@dataclass(frozen=True)
class BadToken:
    name: str
    reason: str
    password: Callable[[Bridge], bytes | None]
    device: str = TARGET
    client_id: Callable[[str], str] = lambda device: client_id(REGISTRY, device)


def _token(make: Callable[[Bridge], str]) -> Callable[[Bridge], bytes | None]:
    return lambda bridge: make(bridge).encode()


def _target(bridge: Bridge) -> PrivateKey:
    return bridge.keys[TARGET]


def _unsigned(alg: str) -> Callable[[Bridge], bytes | None]:
    return lambda bridge: unsigned(alg).encode()


def _embedded_key(param: str) -> Callable[[Bridge], bytes | None]:
    return lambda bridge: embedded_key_header(param, new_key()).encode()


HOUR = 3600
BAD_TOKENS = [
    *[BadToken(f"alg-{alg}", "alg", _unsigned(alg)) for alg in ("none", "None", "NONE", "nOnE")],
    BadToken(
        "alg-none-with-the-devices-claims",
        "alg",
        _token(lambda b: es256(_target(b), {"alg": "none"}, claims()).rsplit(".", 1)[0] + "."),
    ),
    BadToken(
        "signature-stripped",
        "signature",
        _token(lambda b: make_jwt(_target(b)).rsplit(".", 1)[0] + "."),
    ),
    BadToken(
        "signature-altered",
        "signature",
        _token(lambda b: with_signature(make_jwt(_target(b)), lambda s: bytes([s[0] ^ 1]) + s[1:])),
    ),
    BadToken(
        "hs256-keyed-with-public-pem", "alg", _token(lambda b: hs256_with_public_pem(_target(b)))
    ),
    *[BadToken(f"header-{p}", "header", _embedded_key(p)) for p in ("jwk", "jku", "x5u", "x5c")],
    BadToken("es256-der-signature", "signature", _token(lambda b: der_signature(_target(b)))),
    BadToken(
        "es256-r-s-zero",
        "signature",
        _token(lambda b: with_signature(make_jwt(_target(b)), lambda s: bytes(64))),
    ),
    BadToken("another-devices-token", "signature", _token(lambda b: make_jwt(b.keys[GOOD]))),
    BadToken("wrong-aud", "aud", _token(lambda b: make_jwt(_target(b), audience="other-project"))),
    BadToken(
        "missing-aud",
        "aud",
        _token(lambda b: es256(_target(b), {"alg": "ES256", "typ": "JWT"}, claims(aud=None))),
    ),
    BadToken(
        "expired",
        "expired",
        _token(
            lambda b: es256(
                _target(b),
                {"alg": "ES256"},
                claims(iat=int(time.time()) - 2 * HOUR, exp=int(time.time()) - HOUR),
            )
        ),
    ),
    BadToken(
        "iat-in-the-future",
        "iat_future",
        _token(
            lambda b: es256(
                _target(b),
                {"alg": "ES256"},
                claims(iat=int(time.time()) + HOUR, exp=int(time.time()) + 2 * HOUR),
            )
        ),
    ),
    BadToken(
        "lifetime-over-24h",
        "lifetime",
        _token(
            lambda b: es256(_target(b), {"alg": "ES256"}, claims(exp=int(time.time()) + 25 * HOUR))
        ),
    ),
    BadToken("removed-credential", "signature", _token(lambda b: make_jwt(b.revoked_key)), REVOKED),
    BadToken("expired-credential", "no_key", _token(lambda b: make_jwt(b.keys[LAPSED])), LAPSED),
    BadToken("blocked-device", "blocked", _token(lambda b: make_jwt(b.keys[BLOCKED])), BLOCKED),
    BadToken(
        "oversized-token",
        "malformed",
        _token(lambda b: es256(_target(b), {"alg": "ES256"}, claims(pad="x" * 10_000))),
    ),
    BadToken("garbage-token", "malformed", lambda b: b"\xff\x00garbage{}..."),
    BadToken("empty-password", "malformed", lambda b: b""),
    BadToken("no-password", "malformed", lambda b: None),
    BadToken(
        "client-id-wrong-shape",
        "client_id",
        _token(lambda b: make_jwt(_target(b))),
        client_id=lambda device: f"projects/{PROJECT}/devices/{device}",
    ),
    BadToken(
        "client-id-bad-device-id",
        "client_id",
        _token(lambda b: make_jwt(_target(b))),
        client_id=lambda device: client_id(REGISTRY, "a"),
    ),
    BadToken(
        "unknown-registry",
        "unknown_device",
        _token(lambda b: make_jwt(_target(b))),
        client_id=lambda device: client_id("reg-nowhere", device),
    ),
    BadToken(
        "unknown-device",
        "unknown_device",
        _token(lambda b: make_jwt(_target(b))),
        client_id=lambda device: client_id(REGISTRY, "dev-nobody"),
    ),
]


def test_the_token_makers_are_right(bridge: Bridge) -> None:
    """The hand-made tokens differ from a valid one only where each case says."""
    good = es256(_target(bridge), {"alg": "ES256", "typ": "JWT"}, claims())
    public = _target(bridge).public_key()
    assert jwt.decode(good, public, algorithms=["ES256"], audience=PROJECT)["aud"] == PROJECT
    oversized = next(c for c in BAD_TOKENS if c.name == "oversized-token").password(bridge)
    assert oversized is not None and len(oversized) > 10_000
    # A valid token of the same make gets in, so each bad one fails for what it changed.
    assert tls_connack(bridge.server, TARGET, good) == Connack(False, 0)


@pytest.mark.parametrize("case", BAD_TOKENS, ids=[case.name for case in BAD_TOKENS])
def test_bad_tokens_get_connack_5_and_are_counted(bridge: Bridge, case: BadToken) -> None:
    try_bad_token(bridge, case)


def try_bad_token(bridge: Bridge, case: BadToken) -> None:
    before = auth_failures(bridge.server)
    sock = tls_socket(bridge.server)
    with sock:
        sock.sendall(encode(connect_packet(case.client_id(case.device), case.password(bridge))))
        # CONNACK 5 and nothing else, then the server hangs up.
        assert decode_all(read_until_closed(sock)) == [Connack(False, 5)]
    after = auth_failures(bridge.server)
    assert sum(after.values()) - sum(before.values()) == 1
    assert after.get(case.reason, 0) - before.get(case.reason, 0) == 1, (before, after)


def test_the_refusal_reason_is_recorded_on_the_device(bridge: Bridge) -> None:
    # The device only ever sees CONNACK 5; the operator sees why in lastErrorStatus.
    assert tls_connack(bridge.server, BLOCKED, make_jwt(bridge.keys[BLOCKED])) == Connack(False, 5)
    assert last_error(bridge.server, REGISTRY, BLOCKED, "blocked")["code"] == 16


def test_bad_tokens_through_paho(bridge: Bridge) -> None:
    """A real client library's view of the same refusals (alg none, another device's key)."""
    before = sum(auth_failures(bridge.server).values())
    for token in (unsigned("none"), make_jwt(bridge.keys[GOOD])):
        device = connect(bridge.server, REGISTRY, TARGET, token, subscribe=False, wait=False)
        try:
            assert device.wait_connack() == 5
        finally:
            device.client.loop_stop()
    assert sum(auth_failures(bridge.server).values()) - before == 2


# Malformed packets on the plaintext listener, while a good device keeps publishing.


def good_device_still_works(bridge: Bridge, label: str) -> None:
    bridge.good.publish(f"/devices/{GOOD}/events", f"after {label}".encode(), qos=1)
    assert bridge.good.disconnects.empty(), "the well-behaved device was disconnected"


def raw_connected(bridge: Bridge) -> socket.socket:
    """A plaintext connection authenticated as RAW (CONNACK 0 read)."""
    sock = plain_socket(bridge)
    token = make_jwt(bridge.keys[RAW]).encode()
    sock.sendall(encode(connect_packet(client_id(REGISTRY, RAW), token)))
    assert read_packet(sock) == Connack(False, 0)
    return sock


def random_junk() -> bytes:
    data = random.Random(20240611).randbytes(4096)
    # Check the premise: the codec refuses these bytes rather than waiting for more.
    with pytest.raises(codec.ProtocolError):
        decode_all(data)
    return data


def remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        out.append(length & 0x7F | (0x80 if length > 0x7F else 0))
        length >>= 7
        if not length:
            return bytes(out)


def declared_big_publish() -> bytes:
    # The header promises 300 KB; only the first KB is sent. The server must refuse on the
    # header alone rather than wait for (and buffer) the body.
    body = b"\x00\x0e/devices/x/abc" + bytes(1024)
    return b"\x30" + remaining_length(300 * 1024) + body


CONNECT_LEVEL_5 = encode(connect_packet(client_id(REGISTRY, RAW), b"x", level=5))

PRE_CONNECT_CORPUS: dict[str, tuple[Callable[[], bytes], bytes]] = {
    # name: (bytes to send, what the server must answer before closing)
    "random-bytes": (random_junk, b""),
    "connect-level-5": (lambda: CONNECT_LEVEL_5, encode(Connack(False, 1))),
    "publish-before-connect": (lambda: encode(Publish(f"/devices/{RAW}/events", b"x")), b""),
    "subscribe-before-connect": (lambda: encode(Subscribe(1, (("/devices/x/config", 1),))), b""),
    "remaining-length-5-bytes": (lambda: b"\x10\xff\xff\xff\xff\x7f", b""),
    "declared-300kb-publish": (declared_big_publish, b""),
    "reserved-packet-type": (lambda: b"\xf0\x00", b""),
    "bad-protocol-name": (lambda: b"\x10\x0c\x00\x04MQTX\x04\x02\x00\x3c\x00\x00", b""),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PRE_CONNECT_CORPUS))
def test_malformed_streams_are_closed(bridge: Bridge, name: str) -> None:
    try_malformed_stream(bridge, name)


def try_malformed_stream(bridge: Bridge, name: str) -> None:
    make, expected = PRE_CONNECT_CORPUS[name]
    with plain_socket(bridge) as sock:
        sock.sendall(make())
        assert read_until_closed(sock) == expected
    good_device_still_works(bridge, name)


def test_truncated_connect_then_half_close(bridge: Bridge) -> None:
    data = encode(connect_packet(client_id(REGISTRY, RAW), make_jwt(bridge.keys[RAW]).encode()))
    with plain_socket(bridge) as sock:
        sock.sendall(data[: len(data) // 2])
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b""
    good_device_still_works(bridge, "truncated connect")


def test_truncated_connect_then_close(bridge: Bridge) -> None:
    data = encode(connect_packet(client_id(REGISTRY, RAW), b"x"))
    with plain_socket(bridge) as sock:
        sock.sendall(data[:10])
    good_device_still_works(bridge, "truncated connect then close")


SUBSCRIBE_BAD_FLAGS = b"\x80\x13\x00\x01\x00\x0e/devices/x/abc\x01"

AFTER_CONNECT_CORPUS: dict[str, bytes] = {
    "subscribe-bad-flags": SUBSCRIBE_BAD_FLAGS,
    "declared-300kb-publish": declared_big_publish(),
    "publish-qos-3": b"\x36\x05\x00\x01a\x00\x01",
    "publish-qos-2": encode(Publish(f"/devices/{RAW}/events", b"x", qos=2, packet_id=1)),
    "publish-foreign-topic": encode(Publish("/devices/dev-good/events", b"x", qos=1, packet_id=1)),
    "second-connect": encode(connect_packet(client_id(REGISTRY, RAW), b"x")),
    "remaining-length-5-bytes": b"\x30\xff\xff\xff\xff\x7f",
    "random-bytes": b"\x00" + random.Random(7).randbytes(2048),
}


@pytest.mark.parametrize("name", list(AFTER_CONNECT_CORPUS))
def test_malformed_packets_after_connect_are_closed(bridge: Bridge, name: str) -> None:
    try_malformed_packet_after_connect(bridge, name)


def try_malformed_packet_after_connect(bridge: Bridge, name: str) -> None:
    with raw_connected(bridge) as sock:
        # The connection works until the bad packet...
        sock.sendall(encode(Publish(f"/devices/{RAW}/events", b"ok", qos=1, packet_id=9)))
        assert read_packet(sock) == Puback(9)
        sock.sendall(AFTER_CONNECT_CORPUS[name])
        # ...which ends it without any answer.
        assert read_until_closed(sock) == b""
    good_device_still_works(bridge, name)


def test_many_hostile_connections_at_once(bridge: Bridge) -> None:
    """A burst of bad connections while the good device publishes between each."""
    sockets = [plain_socket(bridge) for _ in range(20)]
    try:
        for index, sock in enumerate(sockets):
            sock.sendall(random_junk() if index % 2 else CONNECT_LEVEL_5)
        for index, sock in enumerate(sockets):
            expected = b"" if index % 2 else encode(Connack(False, 1))
            assert read_until_closed(sock) == expected
            if index % 5 == 0:
                good_device_still_works(bridge, f"burst {index}")
    finally:
        for sock in sockets:
            sock.close()


def test_the_server_survives_the_whole_corpus(bridge: Bridge) -> None:
    """Every bad token and malformed stream in one go (this test does not rely on the others
    having run before it), then: no PUBACK ever missed, the process healthy, every hostile
    connection cleaned up and no traceback in the log."""
    server = bridge.server
    acked_before = bridge.publisher.acked
    for case in BAD_TOKENS:
        try_bad_token(bridge, case)
    for name in PRE_CONNECT_CORPUS:
        try_malformed_stream(bridge, name)
    for name in AFTER_CONNECT_CORPUS:
        try_malformed_packet_after_connect(bridge, name)
    good_device_still_works(bridge, "the corpus")
    # The background publisher was never left without a PUBACK, whatever else was going on.
    deadline = time.monotonic() + TIMEOUT
    while bridge.publisher.acked < acked_before + 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bridge.publisher.acked >= acked_before + 10
    assert bridge.publisher.failures == []
    assert server.process.poll() is None
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    # Every hostile connection was cleaned up: only the good device remains.
    deadline = time.monotonic() + TIMEOUT
    while gauge(server, "ironcore_mqtt_connections") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gauge(server, "ironcore_mqtt_connections") == 1
    assert gauge(server, "ironcore_mqtt_connected_devices") == 1
    log = Path(server.log).read_text(errors="replace")
    assert "Traceback" not in log
