"""`PrimaryHub` and `WorkerHub` joined by real `ipc.Channel`s in one event loop.

The links are recorders standing in for MQTT connections (the real connections across real
processes are tested in test_workers.py); what is tested here is the directory: who is told to
close an older connection, where commands and key questions go, who hears of changes, and what
the primary forgets when a worker goes away.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

from ironcore.bridge.ipc import Channel
from ironcore.bridge.process_hub import TAKEN_OVER, PrimaryHub, WorkerChanges, WorkerHub
from ironcore.registry.names import RegistryName
from ironcore.registry.resources import Device, DeviceConfig

REGISTRY = RegistryName.parse("project", "us-central1", "registry")


@dataclass
class Link:
    """Records what the hub asks of a connection."""

    registry_name: RegistryName = REGISTRY
    fingerprint: str = "fp"
    kicked: list[tuple[int, str]] = field(default_factory=list)
    configs: list[tuple[int, int, bytes]] = field(default_factory=list)
    commands: list[tuple[int, str, bytes]] = field(default_factory=list)
    revalidated: list[int | None] = field(default_factory=list)
    rotations: list[int] = field(default_factory=list)
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


class Forgetting:
    """A worker's authenticator, as far as `Changes` uses it."""

    def __init__(self) -> None:
        self.forgotten: list[int | str] = []

    def forget_device(self, num_id: int) -> None:
        self.forgotten.append(num_id)

    def forget_all(self) -> None:
        self.forgotten.append("all")


class WorkerSide:
    def __init__(self) -> None:
        from ironcore.bridge.changes import Changes

        self.hub = WorkerHub()
        self.authenticator = Forgetting()
        self.revocation_refreshes = 0
        self.changes = WorkerChanges(
            self.hub,
            Changes(self.hub, self.authenticator),  # type: ignore[arg-type]
            self._refresh,
            lambda: [["ironcore_test", "counter", "help", []]],
        )

    async def _refresh(self) -> None:
        self.revocation_refreshes += 1


async def joined(count: int) -> tuple[PrimaryHub, list[WorkerSide], list[Channel]]:
    primary = PrimaryHub()
    workers, channels = [], []
    for index in range(1, count + 1):
        ours, theirs = socket.socketpair()
        worker = WorkerSide()
        channel = await Channel.open(ours, primary.handler(index), f"worker {index}")
        primary.attach(index, channel)
        worker.hub.channel = await Channel.open(theirs, worker.changes.handle, "primary")
        workers.append(worker)
        channels.append(channel)
    return primary, workers, channels


async def settle() -> None:
    """Let frames cross the socket pairs both ways."""
    for _ in range(20):
        await asyncio.sleep(0.002)


def device(num_id: int) -> Device:
    return Device(id=f"d{num_id}", num_id=num_id)


async def test_a_device_moving_between_processes_closes_the_older_connection() -> None:
    primary, (one, two), _ = await joined(2)
    on_one, on_two, on_primary, on_one_again = Link(), Link(), Link(), Link()

    one.hub.register(7, on_one)
    await settle()
    assert primary.is_connected(7)
    two.hub.register(7, on_two)
    await settle()
    assert on_one.kicked == [(7, TAKEN_OVER)]
    assert not one.hub.is_connected(7) and two.hub.is_connected(7)

    primary.register(7, on_primary)  # the primary's own listener
    await settle()
    assert on_two.kicked == [(7, TAKEN_OVER)] and not two.hub.is_connected(7)

    one.hub.register(7, on_one_again)
    await settle()
    assert on_primary.kicked == [(7, TAKEN_OVER)] and not primary.link(7)
    assert on_one.kicked == [(7, TAKEN_OVER)]  # the first connection was not told twice
    assert len(primary) == 1


async def test_a_kicked_connection_going_away_late_does_not_unregister_the_new_one() -> None:
    primary, (one, two), _ = await joined(2)
    old, new = Link(), Link()
    one.hub.register(3, old)
    await settle()
    two.hub.register(3, new)
    await settle()
    one.hub.unregister(3, old)  # the kicked connection closing: nothing left to report
    await settle()
    assert primary.is_connected(3)
    two.hub.unregister(3, new)
    await settle()
    assert not primary.is_connected(3) and len(primary) == 0


async def test_commands_and_key_questions_go_to_the_process_serving_the_device() -> None:
    primary, (_, two), _ = await joined(2)
    link = Link(fingerprint="abc")
    two.hub.register(9, link)
    await settle()
    assert await primary.send_command(device(9), b"\x00\xffbinary", "sys") is True
    assert link.commands == [(9, "sys", b"\x00\xffbinary")]
    assert await primary.key_in_use(9) == "abc"

    link.subscribed = False
    assert await primary.send_command(device(9), b"x", "") is False
    assert await primary.send_command(device(10), b"x", "") is False  # nobody serves 10
    assert await primary.key_in_use(10) is None


async def test_changes_reach_every_worker_and_the_serving_one_acts() -> None:
    primary, (one, two), _ = await joined(2)
    link = Link()
    two.hub.register(4, link)
    await settle()

    await primary.config_changed(4, DeviceConfig(version=3, binary_data=b"\x01cfg"))
    await primary.device_changed(4)
    await primary.rotation_changed(4)
    await primary.registry_changed(REGISTRY)
    await settle()
    assert link.configs == [(4, 3, b"\x01cfg")]
    assert link.revalidated == [4, None]
    assert link.rotations == [4]
    for worker in (one, two):
        # Each worker forgets what it cached, whether or not it serves the device.
        assert worker.authenticator.forgotten == [4, 4, 4, "all"]
        assert worker.revocation_refreshes == 1


async def test_a_workers_own_change_is_forgotten_everywhere_else() -> None:
    primary, (one, two), _ = await joined(2)
    forgotten: list[int] = []
    primary.forget = forgotten.append
    assert one.hub.channel is not None
    one.hub.channel.send("forget", 12)
    await settle()
    assert forgotten == [12]
    assert two.authenticator.forgotten == [12] and one.authenticator.forgotten == []


async def test_a_worker_that_goes_away_takes_its_devices_with_it() -> None:
    primary, (one, two), channels = await joined(2)
    one.hub.register(1, Link())
    two.hub.register(2, Link())
    await settle()
    assert len(primary) == 2
    primary.detach(1)
    channels[0].close()
    assert not primary.is_connected(1) and primary.is_connected(2)
    assert await primary.send_command(device(1), b"x", "") is False
    await primary.device_changed(2)  # the others are still told
    await settle()
    assert two.authenticator.forgotten == [2]


async def test_metrics_are_asked_of_a_worker() -> None:
    _, _, channels = await joined(1)
    assert await channels[0].request("metrics") == [["ironcore_test", "counter", "help", []]]


async def test_an_unknown_message_is_answered_with_an_error() -> None:
    from ironcore.bridge.ipc import RemoteError

    primary, (one,), channels = await joined(1)
    try:
        await channels[0].request("no-such-thing")
    except RemoteError as error:
        assert "unknown message 'no-such-thing'" in str(error)
    else:
        raise AssertionError("an unknown message was accepted")
    assert one.hub.channel is not None
    try:
        await one.hub.channel.request("nonsense")
    except RemoteError as error:
        assert "unknown message 'nonsense' from worker 1" in str(error)
    else:
        raise AssertionError("an unknown message was accepted")
    assert primary is not None


async def test_a_change_made_in_the_primary_is_forgotten_by_every_worker() -> None:
    primary, (one, two), _ = await joined(2)
    forgotten: list[int] = []
    primary.forget = forgotten.append
    primary.forget_device(21)  # a key rotation step on one of the primary's own connections
    await settle()
    assert forgotten == [21]
    assert one.authenticator.forgotten == [21] and two.authenticator.forgotten == [21]
