"""The `ClusterHub`s of two "servers" in one event loop, joined by `Bus`es over the real NATS.

The connections are the recorders of test_process_hub.py (the real servers are in test_bus.py):
what is tested here is what each server hears and does, including the races a test with real
devices cannot arrange (two connections at nearly the same moment).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import nats
import pytest

from ironcore.bridge.cluster import hub as cluster_hub
from ironcore.bridge.cluster.bus import LEASE_SECONDS, Bus, namespace
from ironcore.bridge.cluster.hub import new_server_id
from ironcore.bridge.cluster.messages import (
    Connected,
    Failed,
    Holding,
    Message,
    decode,
    encode,
)
from ironcore.bridge.hub import TAKEN_OVER
from ironcore.registry.resources import DeviceConfig
from tests.bridge.test_process_hub import (
    REGISTRY,
    Connection,
    Process,
    commands_and_key_questions_reach,
    device,
)
from tests.conftest import need_service

NATS_URL = "nats://127.0.0.1:4222"


class Server(Process):
    """A primary's hub joined to the bus, with what the server would give it, recorded."""

    def __init__(self, space: str, lease: float = LEASE_SECONDS) -> None:
        super().__init__(new_server_id())
        self.bus = Bus(NATS_URL, space, self.hub.origin, lease)
        self.hub.attach(self.bus)


@pytest.fixture
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Server, Server]]:
    """Two servers joined on the bus; their lease is the test's indirect parameter, if any."""
    need_service("NATS", "127.0.0.1", 4222)
    space = uuid.uuid4().hex[:16]
    lease = getattr(request, "param", LEASE_SECONDS)
    a, b = Server(space, lease), Server(space, lease)
    await a.bus.start(a.hub)
    await b.bus.start(b.hub)
    yield a, b
    await a.bus.close()
    await b.bus.close()


async def until(predicate: object, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110 (a plain predicate)
            await asyncio.sleep(0.01)


async def test_a_device_connecting_to_another_server_closes_the_older_connection(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    older, newer = Connection(), Connection()
    a.hub.register(5, older)
    await until(lambda: b.hub.is_connected(5))
    b.hub.register(5, newer)
    await until(lambda: older.kicked == [(5, TAKEN_OVER)])
    assert a.hub.local.get(5) is None and a.hub.is_connected(5)  # now served by b
    assert newer.kicked == []
    # The kicked connection going away later tells nobody anything that matters.
    a.hub.unregister(5, older)
    await asyncio.sleep(0.1)
    assert b.hub.local.get(5) is newer and a.hub.is_connected(5)
    b.hub.unregister(5, newer)
    await until(lambda: not a.hub.is_connected(5))


async def test_of_two_connections_at_nearly_the_same_moment_the_newer_wins(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    first, second = Connection(), Connection()
    # Both register before either hears of the other.
    a.hub.register(6, first)
    b.hub.register(6, second)
    await until(lambda: first.kicked or second.kicked)
    await asyncio.sleep(0.2)
    assert first.kicked == [(6, TAKEN_OVER)] and second.kicked == []
    assert b.hub.local.get(6) is second


async def test_commands_and_key_questions_go_to_the_serving_server(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    connection = Connection(fingerprint="abc")
    b.hub.register(7, connection)
    await until(lambda: a.hub.is_connected(7))
    await commands_and_key_questions_reach(a.hub, connection, 7)


async def test_changes_are_applied_by_the_other_server_and_not_passed_back(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    link = Connection()
    b.hub.register(9, link)
    await until(lambda: a.hub.is_connected(9))
    await a.hub.config_changed(9, DeviceConfig(version=4, binary_data=b"\x01cfg"))
    await a.hub.device_changed(9)
    await a.hub.rotation_changed(9)
    await a.hub.registry_changed(REGISTRY)
    await until(lambda: len(link.revalidated) == 2 and link.rotations)
    assert link.configs == [(9, 4, b"\x01cfg")]
    assert link.revalidated == [9, None] and link.rotations == [9]
    assert b.forgotten == [9, 9, 9, "all"] and b.refreshes == 1
    await asyncio.sleep(0.1)
    assert a.forgotten == [9, 9, 9, "all"]  # a's own changes, forgotten once: not passed back
    assert a.refreshes == 0


async def test_malformed_messages_are_ignored(pair: tuple[Server, Server]) -> None:
    a, b = pair
    held = Connection()
    a.hub.register(4, held)
    client = await nats.connect(NATS_URL)
    try:
        for body in (
            b"not json",
            b"{}",
            b'{"kind": "connected", "origin": "x", "num_id": 4, "at": "not a number"}',
            b'{"kind": "kick", "num_id": 4}',  # says no sender: never sent on this subject
        ):
            await client.publish(a.bus.all_subject, body)
        await client.flush()
        server = a.bus.server_prefix + a.hub.origin
        for body in (b"junk", encode(Connected("x", 4, 0.0))):
            reply = await client.request(server, body, 2)
            assert isinstance(decode(reply.data), Failed)  # answered, so the asker does not wait
    finally:
        await client.close()
    link = Connection()
    b.hub.register(3, link)
    await until(lambda: a.hub.is_connected(3))  # still listening
    assert held.kicked == [] and a.hub.local.get(4) is held


def test_servers_of_other_databases_never_share_subjects() -> None:
    url = "postgresql://db/ironcore"
    assert namespace(url, "a") == namespace(url, "a")
    assert namespace(url, "a") != namespace(url, "b")
    assert namespace(url, "a") != namespace("postgresql://other/ironcore", "a")


async def test_a_change_made_in_one_server_is_forgotten_by_the_other(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    a.hub.forget_device(31)  # a key rotation step on one of a's connections
    await until(lambda: b.forgotten == [31])
    assert a.forgotten == [31]


async def test_a_server_that_joins_later_learns_who_holds_which_device() -> None:
    need_service("NATS", "127.0.0.1", 4222)
    space = uuid.uuid4().hex[:16]
    a, b = Server(space), Server(space)
    await a.bus.start(a.hub)
    held = Connection(fingerprint="abc")
    a.hub.register(11, held)
    try:
        await b.bus.start(b.hub)  # after the device connected: no `Connected` to hear
        await until(lambda: b.hub.is_connected(11))
        await commands_and_key_questions_reach(b.hub, held, 11)
    finally:
        await a.bus.close()
        await b.bus.close()


SHORT_LEASE = pytest.mark.parametrize("pair", [0.6], indirect=True, ids=["lease-0.6s"])


@SHORT_LEASE
async def test_the_devices_of_a_server_not_heard_for_its_lease_are_not_connected(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    b.hub.register(12, Connection())
    await until(lambda: a.hub.is_connected(12))
    await asyncio.sleep(1.2)  # two leases: b says it is alive meanwhile
    assert a.hub.is_connected(12)
    await b.bus.close()  # gone without a word for its device, as if killed
    await until(lambda: not a.hub.is_connected(12))
    assert await a.hub.send_command(device(12), b"x", "") is False


@SHORT_LEASE
async def test_a_server_only_slow_past_its_lease_is_asked_again_what_it_holds(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    b.hub.register(15, Connection())
    await until(lambda: a.hub.is_connected(15))
    beating = b.bus._beating
    assert beating is not None
    beating.cancel()  # b's heartbeats stall, as in an event loop stalled past the lease
    await until(lambda: not a.hub.is_connected(15))
    b.bus._beating = asyncio.create_task(b.bus._beat())
    await until(lambda: a.hub.is_connected(15))


async def test_a_rejoining_server_and_the_others_settle_who_holds_a_device(
    pair: tuple[Server, Server],
) -> None:
    """As after a NATS outage during which a device connected to both servers and another
    left one of them: the newer connection stays, the departed device is forgotten."""
    a, b = pair
    older, newer, gone = Connection(), Connection(), Connection()
    a.hub.register(13, older)
    a.hub.register(14, gone)
    await until(lambda: b.hub.is_connected(13) and b.hub.is_connected(14))
    # What b would have heard, had the bus been up: taken off the directories here.
    a.hub.local.unregister(14, gone)
    a.hub.directory.release(14, a.hub.origin)
    b.hub.local.register(13, newer)
    b.hub.directory.take(13, b.hub.origin, time.time())
    assert older.kicked == [] and b.hub.is_connected(14)

    await b.hub.joined(b.bus, recovering=True)
    await until(lambda: older.kicked == [(13, TAKEN_OVER)] and not b.hub.is_connected(14))
    assert newer.kicked == [] and newer.caught_up == 1
    assert a.hub.directory.get(13) == b.hub.directory.get(13)
    entry = b.hub.directory.get(13)
    assert entry is not None and entry.holder == b.hub.origin


async def test_what_a_server_holds_is_told_in_chunks_that_replace_what_was_known(
    pair: tuple[Server, Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    monkeypatch.setattr(cluster_hub, "HOLDING_CHUNK", 2)
    for num_id in range(21, 26):
        a.hub.register(num_id, Connection())
    await until(lambda: all(b.hub.is_connected(n) for n in range(21, 26)))
    b.hub.directory.take(26, a.hub.origin, 0.0)  # a departure b missed
    sent: list[Message] = []
    real_send = a.bus.send

    def send(message: Message) -> None:
        sent.append(message)
        real_send(message)

    monkeypatch.setattr(a.bus, "send", send)
    await a.hub.joined(a.bus, recovering=False)
    await until(lambda: not b.hub.is_connected(26))
    holdings = [m for m in sent if isinstance(m, Holding)]
    assert [(len(m.devices), m.first, m.last) for m in holdings] == [
        (2, True, False),
        (2, False, False),
        (1, False, True),
    ]
    assert {n for n in b.hub.directory} == set(range(21, 26))
