"""The `ClusterHub`s of a primary and its workers joined by real `ipc.Channel`s in one event loop.

The connections are recorders standing in for MQTT connections (the real connections across
real processes are tested in test_workers.py); what is tested here is the directory: who is told
to close an older connection, where commands and key questions go, who hears of changes and
forgets, and what the primary forgets when a worker goes away.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from ironcore.bridge.cluster.hub import ClusterHub, worker_id
from ironcore.bridge.cluster.messages import (
    Answer,
    CollectMetrics,
    Forget,
    Hello,
    Holding,
    Message,
    Metrics,
    Ready,
)
from ironcore.bridge.cluster.transport import ChannelTransport, Peers, Transport
from ironcore.bridge.hub import TAKEN_OVER
from ironcore.bridge.ipc import Reply
from ironcore.registry.names import RegistryName
from ironcore.registry.resources import Device, DeviceConfig

REGISTRY = RegistryName.parse("project", "us-central1", "registry")
SERVER = "server"


@dataclass
class Connection:
    """Records what the hub asks of a connection."""

    registry_name: RegistryName = REGISTRY
    fingerprint: str = "fp"
    kicked: list[tuple[int, str]] = field(default_factory=list)
    configs: list[tuple[int, int, bytes]] = field(default_factory=list)
    commands: list[tuple[int, str, bytes]] = field(default_factory=list)
    revalidated: list[int | None] = field(default_factory=list)
    rotations: list[int] = field(default_factory=list)
    caught_up: int = 0
    subscribed: bool = True

    def deliver_config(self, num_id: int, config: DeviceConfig) -> None:
        self.configs.append((num_id, config.version, config.binary_data))

    def deliver_command(self, num_id: int, subfolder: str, data: bytes) -> bool:
        if self.subscribed:
            self.commands.append((num_id, subfolder, data))
        return self.subscribed

    async def revalidate(self, num_id: int | None) -> None:
        self.revalidated.append(num_id)

    def kick(self, num_id: int, reason: str) -> None:
        self.kicked.append((num_id, reason))

    async def rotation_changed(self, num_id: int) -> None:
        self.rotations.append(num_id)

    def key_in_use(self, num_id: int) -> str | None:
        return self.fingerprint

    async def catch_up(self) -> None:
        self.caught_up += 1


class Process:
    """A process's hub, with what the process would give it recorded: its cache (an
    authenticator, as far as the hub uses one) and its revocations."""

    def __init__(self, origin: str, transports: Sequence[Transport] = ()) -> None:
        self.forgotten: list[int | str] = []
        self.refreshes = 0
        self.hub = ClusterHub(
            origin, self, refresh_revocations=self._refresh, transports=transports
        )

    def forget_device(self, num_id: int) -> None:
        self.forgotten.append(num_id)

    def forget_all(self) -> None:
        self.forgotten.append("all")

    async def _refresh(self) -> None:
        self.refreshes += 1


class Worker(Process):
    def __init__(self, index: int) -> None:
        self.primary = ChannelTransport(Peers.PRIMARY, SERVER, "the primary")
        super().__init__(worker_id(SERVER, index), [self.primary])

    def receive(self, message: Message, via: Transport) -> Reply:
        if isinstance(message, CollectMetrics):
            return Metrics([["ironcore_test", "counter", "help", []]])
        return self.hub.receive(message, via)


async def joined(count: int) -> tuple[Process, list[Worker], list[ChannelTransport]]:
    primary = Process(SERVER)
    workers, links = [], []
    for index in range(1, count + 1):
        ours, theirs = socket.socketpair()
        worker = Worker(index)
        link = ChannelTransport(Peers.WORKER, worker_id(SERVER, index), f"MQTT worker {index}")
        await link.open(ours, primary.hub.receive)
        primary.hub.attach(link)
        await worker.primary.open(theirs, worker.receive)
        workers.append(worker)
        links.append(link)
    return primary, workers, links


async def settle() -> None:
    """Let frames cross the socket pairs both ways."""
    for _ in range(20):
        await asyncio.sleep(0.002)


def device(num_id: int) -> Device:
    return Device(id=f"d{num_id}", num_id=num_id)


async def commands_and_key_questions_reach(
    asker: ClusterHub, served: Connection, num_id: int
) -> None:
    """`served`, in another process, serves the device: `asker` reaches it; nobody serves
    `num_id + 1`."""
    assert await asker.send_command(device(num_id), b"\x00\xffbinary", "sys") is True
    assert served.commands == [(num_id, "sys", b"\x00\xffbinary")]
    assert await asker.key_in_use(num_id) == served.fingerprint

    served.subscribed = False
    assert await asker.send_command(device(num_id), b"x", "") is False
    assert await asker.send_command(device(num_id + 1), b"x", "") is False
    assert await asker.key_in_use(num_id + 1) is None


async def test_a_device_moving_between_processes_closes_the_older_connection() -> None:
    primary, (one, two), _ = await joined(2)
    on_one, on_two, on_primary, on_one_again = (Connection() for _ in range(4))

    one.hub.register(7, on_one)
    await settle()
    assert primary.hub.is_connected(7)
    two.hub.register(7, on_two)
    await settle()
    assert on_one.kicked == [(7, TAKEN_OVER)]
    assert not one.hub.is_connected(7) and two.hub.is_connected(7)

    primary.hub.register(7, on_primary)  # the primary's own listener
    await settle()
    assert on_two.kicked == [(7, TAKEN_OVER)] and not two.hub.is_connected(7)

    one.hub.register(7, on_one_again)
    await settle()
    assert on_primary.kicked == [(7, TAKEN_OVER)] and not primary.hub.local.get(7)
    assert on_one.kicked == [(7, TAKEN_OVER)]  # the first connection was not told twice
    assert len(primary.hub.directory) == 1


async def test_a_kicked_connection_going_away_late_does_not_unregister_the_new_one() -> None:
    primary, (one, two), _ = await joined(2)
    old, new = Connection(), Connection()
    one.hub.register(3, old)
    await settle()
    two.hub.register(3, new)
    await settle()
    one.hub.unregister(3, old)  # the kicked connection closing: nothing left to report
    await settle()
    assert primary.hub.is_connected(3)
    two.hub.unregister(3, new)
    await settle()
    assert not primary.hub.is_connected(3) and len(primary.hub.directory) == 0


async def test_commands_and_key_questions_go_to_the_process_serving_the_device() -> None:
    primary, (_, two), _ = await joined(2)
    connection = Connection(fingerprint="abc")
    two.hub.register(9, connection)
    await settle()
    await commands_and_key_questions_reach(primary.hub, connection, 9)


async def test_changes_reach_every_worker_and_the_serving_one_acts() -> None:
    primary, (one, two), _ = await joined(2)
    connection = Connection()
    two.hub.register(4, connection)
    await settle()

    await primary.hub.config_changed(4, DeviceConfig(version=3, binary_data=b"\x01cfg"))
    await primary.hub.device_changed(4)
    await primary.hub.rotation_changed(4)
    await primary.hub.registry_changed(REGISTRY)
    await settle()
    assert connection.configs == [(4, 3, b"\x01cfg")]
    assert connection.revalidated == [4, None]
    assert connection.rotations == [4]
    for process in (primary, one, two):
        # Each process forgets what it cached, whether or not it serves the device.
        assert process.forgotten == [4, 4, 4, "all"]
    # A registry heard of from elsewhere may be a signer revoked there: refreshed first.
    assert (primary.refreshes, one.refreshes, two.refreshes) == (0, 1, 1)


async def test_a_workers_own_change_is_forgotten_everywhere_else() -> None:
    primary, (one, two), _ = await joined(2)
    one.hub.forget_device(12)  # a key rotation step on one of the worker's connections
    await settle()
    assert primary.forgotten == [12] and two.forgotten == [12]
    assert one.forgotten == [12]  # once, not told back


async def test_a_worker_that_goes_away_takes_its_devices_with_it() -> None:
    primary, (one, two), links = await joined(2)
    one.hub.register(1, Connection())
    two.hub.register(2, Connection())
    await settle()
    assert len(primary.hub.directory) == 2
    primary.hub.detach(links[0])
    primary.hub.detach(links[0])  # as a restart that failed does: nothing more
    links[0].close()
    assert not primary.hub.is_connected(1) and primary.hub.is_connected(2)
    assert await primary.hub.send_command(device(1), b"x", "") is False
    await primary.hub.device_changed(2)  # the others are still told
    await settle()
    assert two.forgotten == [2] and one.forgotten == []


async def test_metrics_are_asked_of_a_worker() -> None:
    _, _, links = await joined(1)
    answer = await links[0].ask(links[0].peer, CollectMetrics())
    assert answer == Metrics([["ironcore_test", "counter", "help", []]])


async def test_a_message_the_other_side_does_not_take_is_answered_with_an_error() -> None:
    from ironcore.bridge.ipc import RemoteError

    _, (one,), links = await joined(1)
    assert links[0].channel is not None and one.primary.channel is not None
    with pytest.raises(RemoteError, match="ready from the primary is not for the hub"):
        await links[0].channel.request(Ready(SERVER))
    with pytest.raises(RemoteError, match="collect_metrics from MQTT worker 1 is not for the hub"):
        await one.primary.channel.request(CollectMetrics())
    # Both channels live on.
    one.primary.send(Forget(one.hub.origin, 5))
    await settle()
    assert one.primary.channel.closed.done() is False


async def test_a_change_made_in_the_primary_is_forgotten_by_every_worker() -> None:
    primary, (one, two), _ = await joined(2)
    primary.hub.forget_device(21)  # a key rotation step on one of the primary's own connections
    await settle()
    assert primary.forgotten == [21]
    assert one.forgotten == [21] and two.forgotten == [21]


async def test_catching_up_reaches_every_worker_and_connection() -> None:
    primary, (one, two), _ = await joined(2)
    here, on_one = Connection(), Connection()
    primary.hub.register(1, here)
    one.hub.register(2, on_one)
    await settle()
    await primary.hub.catch_up()
    await settle()
    assert here.caught_up == 1 and on_one.caught_up == 1
    assert primary.forgotten == ["all"] and one.forgotten == ["all"] and two.forgotten == ["all"]
    assert primary.refreshes == 1 and one.refreshes == 1 and two.refreshes == 1


@dataclass
class Recorder:
    """A transport to other servers that keeps what it is given to send."""

    name: str = "the bus"
    peers: Peers = Peers.SERVERS
    sent: list[Message] = field(default_factory=list)

    def send(self, message: Message) -> None:
        self.sent.append(message)

    async def ask(self, holder: str, request: Message) -> Answer | None:
        return None


async def test_what_a_server_holds_includes_its_workers_devices() -> None:
    primary, (one, _), _ = await joined(2)
    primary.hub.register(1, Connection())
    one.hub.register(2, Connection())
    await settle()
    bus = Recorder()
    primary.hub.attach(bus)
    await primary.hub.joined(bus, recovering=False)
    hello, holding = bus.sent
    assert hello == Hello(SERVER)
    assert isinstance(holding, Holding) and holding.first and holding.last
    assert {num_id for num_id, _ in holding.devices} == {1, 2}
