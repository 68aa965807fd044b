"""The `ClusterHub`s of two "servers" in one event loop, joined by `Bus`es over the real NATS.

The connections are the recorders of test_process_hub.py (the real servers are in test_bus.py):
what is tested here is what each server hears and does, including the races a test with real
devices cannot arrange (two connections at nearly the same moment).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import nats
import pytest

from ironcore.bridge.cluster.bus import Bus, namespace
from ironcore.bridge.cluster.hub import new_server_id
from ironcore.bridge.cluster.messages import Connected, Failed, decode, encode
from ironcore.bridge.hub import TAKEN_OVER
from ironcore.registry.resources import DeviceConfig
from tests.bridge.test_process_hub import (
    REGISTRY,
    Connection,
    Process,
    commands_and_key_questions_reach,
)
from tests.conftest import need_service

NATS_URL = "nats://127.0.0.1:4222"


class Server(Process):
    """A primary's hub joined to the bus, with what the server would give it, recorded."""

    def __init__(self, space: str) -> None:
        super().__init__(new_server_id())
        self.bus = Bus(NATS_URL, space, self.hub.origin)
        self.hub.attach(self.bus)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Server, Server]]:
    need_service("NATS", "127.0.0.1", 4222)
    space = uuid.uuid4().hex[:16]
    a, b = Server(space), Server(space)
    await a.bus.start(a.hub.receive)
    await b.bus.start(b.hub.receive)
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
