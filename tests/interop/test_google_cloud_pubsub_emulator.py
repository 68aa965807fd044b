"""Unmodified `google-cloud-pubsub` code redirected by PUBSUB_EMULATOR_HOST to a real ironcore
process's `--pubsub-emulator-port` (plaintext, no credentials): publish, subscribe to device
telemetry, pull and ack, create a subscription; what the port's fixed caller may not do is
refused; the port listens on loopback unless told otherwise, and a warning says when it is not."""

from __future__ import annotations

import ipaddress
import queue
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.api_core import exceptions
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from google.cloud.pubsub_v1.subscriber.message import Message

from ironcore.access.callers import PUBSUB_EMULATOR
from ironcore.runtime.primary import is_loopback
from tests.bridge import devices
from tests.conftest import Database, Server, free_port, start_server, stop_server

pytestmark = pytest.mark.databases("sqlite")
EVENTS = f"projects/{devices.PROJECT}/topics/events"
SUBSCRIPTION = f"projects/{devices.PROJECT}/subscriptions/backend"
TIMEOUT = 30


def emulator_server(tmp_path: Path, database: Database, *extra: str) -> tuple[Server, int]:
    port = free_port()
    server = start_server(
        tmp_path / "data", database, extra=["--pubsub-emulator-port", str(port), *extra]
    )
    return server, port


@pytest.fixture
def clients(
    tmp_path: Path, database: Database, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Server, int, PublisherClient, SubscriberClient]]:
    """A server with the emulator port, a registry whose telemetry goes to EVENTS, and the
    clients as an application builds them: no endpoint, no credentials, only the variable."""
    server, port = emulator_server(tmp_path, database)
    devices.create_registry(server, "emulated")
    # The clients read it when they are built.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")
    publisher, subscriber = PublisherClient(), SubscriberClient()
    yield server, port, publisher, subscriber
    publisher.stop()
    subscriber.close()
    stop_server(server)


def listening_addresses(port: int) -> set[str]:
    """The local addresses sockets listen on at `port` (from /proc/net/tcp and tcp6, where an
    address is 32-bit words in host order; an IPv4-mapped IPv6 address is given as IPv4)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            hex_address, _, hex_port = local.rpartition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            words = [int(hex_address[i : i + 8], 16) for i in range(0, len(hex_address), 8)]
            raw = b"".join(socket.htonl(word).to_bytes(4, "big") for word in words)
            address = ipaddress.ip_address(raw)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            found.add(str(address))
    return found


def test_publish_pull_ack_and_create_subscription(
    clients: tuple[Server, int, PublisherClient, SubscriberClient],
) -> None:
    _, port, publisher, subscriber = clients
    created = subscriber.create_subscription(name=SUBSCRIPTION, topic=EVENTS)
    assert (created.name, created.topic) == (SUBSCRIPTION, EVENTS)
    assert publisher.get_topic(topic=EVENTS).name == EVENTS
    assert EVENTS in {t.name for t in publisher.list_topics(project=f"projects/{devices.PROJECT}")}

    futures = [publisher.publish(EVENTS, b"one", room="a"), publisher.publish(EVENTS, b"two")]
    ids = [future.result(timeout=TIMEOUT) for future in futures]
    assert len(set(ids)) == 2 and all(i.isdigit() for i in ids)

    pulled = subscriber.pull(subscription=SUBSCRIPTION, max_messages=10).received_messages
    assert {(m.message.data, m.message.message_id) for m in pulled} == {
        (b"one", ids[0]),
        (b"two", ids[1]),
    }
    assert {m.message.data: dict(m.message.attributes) for m in pulled}[b"one"] == {"room": "a"}
    acked = [m.ack_id for m in pulled]
    subscriber.acknowledge(subscription=SUBSCRIPTION, ack_ids=acked)
    # Acked, a message stays gone even once its lease is given up.
    subscriber.modify_ack_deadline(subscription=SUBSCRIPTION, ack_ids=acked, ack_deadline_seconds=0)
    assert not subscriber.pull(subscription=SUBSCRIPTION, max_messages=10).received_messages

    assert listening_addresses(port) == {"127.0.0.1"}


def test_what_the_emulator_caller_may_not_do_is_refused(
    clients: tuple[Server, int, PublisherClient, SubscriberClient],
) -> None:
    server, port, publisher, subscriber = clients
    subscriber.create_subscription(name=SUBSCRIPTION, topic=EVENTS)
    with pytest.raises(exceptions.PermissionDenied, match=r"pubsub\.topics\.create"):
        publisher.create_topic(name=f"projects/{devices.PROJECT}/topics/new")
    with pytest.raises(exceptions.PermissionDenied, match=r"pubsub\.topics\.delete"):
        publisher.delete_topic(topic=EVENTS)
    with pytest.raises(exceptions.PermissionDenied, match=r"pubsub\.subscriptions\.delete"):
        subscriber.delete_subscription(subscription=SUBSCRIPTION)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/google.cloud.iot.v1.DeviceManager/ListDeviceRegistries"
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub(b"")
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED  # not served at all
    # Nothing was changed by the refusals.
    assert subscriber.get_subscription(subscription=SUBSCRIPTION).topic == EVENTS
    assert publisher.get_topic(topic=EVENTS).name == EVENTS
    # The change and the refusals are in the audit log, in the port's caller's name.
    listed = httpx.get(
        f"{server.url}/ironcore/v1/projects/{devices.PROJECT}/auditLogs",
        params={"filter": f"principal={PUBSUB_EMULATOR.principal}"},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert listed.status_code == 200, listed.text
    entries = listed.json()["auditLogs"]
    assert [(e["method"], e["resource"], e["status"]) for e in reversed(entries)] == [
        ("CreateSubscription", SUBSCRIPTION, "OK"),
        ("CreateTopic", f"projects/{devices.PROJECT}/topics/new", "PERMISSION_DENIED"),
        ("DeleteTopic", EVENTS, "PERMISSION_DENIED"),
        ("DeleteSubscription", SUBSCRIPTION, "PERMISSION_DENIED"),
    ]
    assert {(e["wire"], e["authentication"]) for e in entries} == {("grpc", "none")}


def test_subscribe_receives_device_telemetry(
    clients: tuple[Server, int, PublisherClient, SubscriberClient],
) -> None:
    server, _, _, subscriber = clients
    key = devices.new_key()
    device = devices.create_device(server, "emulated", "dev-1", key)
    subscriber.create_subscription(name=SUBSCRIPTION, topic=EVENTS)
    received: queue.Queue[Message] = queue.Queue()

    def callback(message: Message) -> None:
        received.put(message)
        message.ack()

    future = subscriber.subscribe(SUBSCRIPTION, callback)
    mqtt = devices.online(server, "emulated", "dev-1", key, subscribe=False)
    try:
        mqtt.publish("/devices/dev-1/events/rooms/kitchen", b"temp=23")
        message = received.get(timeout=TIMEOUT)
    finally:
        mqtt.close()
        future.cancel()
        future.result(timeout=TIMEOUT)
    assert message.data == b"temp=23"
    assert dict(message.attributes) == {
        "deviceId": "dev-1",
        "deviceNumId": device["numId"],
        "deviceRegistryId": "emulated",
        "deviceRegistryLocation": devices.LOCATION,
        "projectId": devices.PROJECT,
        "subFolder": "rooms/kitchen",
    }


def test_a_host_other_than_loopback_is_warned_about(tmp_path: Path, database: Database) -> None:
    server, port = emulator_server(tmp_path, database, "--pubsub-emulator-host", "0.0.0.0")
    try:
        assert listening_addresses(port) & {"0.0.0.0", "::"}
        # Logged while the server starts, before it answers /readyz.
        assert "--pubsub-emulator-host 0.0.0.0 is not a loopback address" in server.log.read_text()
    finally:
        stop_server(server)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("ironcore.example.com", False),
    ],
)
def test_which_hosts_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
