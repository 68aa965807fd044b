"""Config acknowledgements written behind in batches (`bookkeeping.ConfigAcks`), on SQLite and
PostgreSQL: what the API reports afterwards, the flush at shutdown, nothing lost across batches
or a failed commit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from ironcore.bridge import bookkeeping
from ironcore.bridge.bookkeeping import Bookkeeper, ConfigAcks
from ironcore.registry.names import DeviceRef, LocationName, RegistryName
from ironcore.registry.resources import Device, DeviceRegistry
from ironcore.registry.service import DeviceManager
from ironcore.registry.store import Store
from ironcore.registry.store.bridge import BridgeStore
from ironcore.registry.store.schema import to_us
from tests.conftest import Clock

LOCATION = LocationName.parse("p1", "us-central1")
REGISTRY = RegistryName(LOCATION, "reg-acks")


async def make_devices(manager: DeviceManager, count: int) -> list[int]:
    await manager.create_registry(LOCATION, DeviceRegistry(id=REGISTRY.registry))
    out = []
    for i in range(count):
        out.append((await manager.create_device(REGISTRY, Device(id=f"dev-{i}"))).num_id)
    return out


def ref(device: str) -> DeviceRef:
    return DeviceRef(REGISTRY, device, None)


def at(seconds: float) -> int:
    return to_us(datetime(2026, 1, 2, tzinfo=UTC)) + int(seconds * 1_000_000)


async def acked(manager: DeviceManager, device: str) -> dict[str, object]:
    """deviceAckTime per config version, and the device's own ack fields, as the API has them."""
    wire = await manager.get_device(ref(device))
    versions = await manager.list_config_versions(ref(device), 0)
    return {
        "versions": {c.version: c.device_ack_time for c in versions},
        "config": wire["config"].get("deviceAckTime"),
        "last": wire["lastConfigAckTime"],
    }


async def test_acks_are_recorded_as_the_api_reports_them(
    manager: DeviceManager, store: Store, clock: Clock
) -> None:
    (num_id,) = await make_devices(manager, 1)
    await manager.modify_config(ref("dev-0"), 0, b"v2")
    bookkeeper = Bookkeeper(store)
    # Version 1 acknowledged late (after version 2 was written), then version 2.
    bookkeeper.config_acked(num_id, 1, at(1))
    bookkeeper.config_acked(num_id, 2, at(2))
    await bookkeeper.close()
    got = await acked(manager, "dev-0")
    assert got["versions"] == {
        2: datetime(2026, 1, 2, 0, 0, 2, tzinfo=UTC),
        1: datetime(2026, 1, 2, 0, 0, 1, tzinfo=UTC),
    }
    # The device's config is version 2: its ack time is version 2's, not version 1's.
    assert got["config"] == "2026-01-02T00:00:02Z"
    assert got["last"] == "2026-01-02T00:00:02Z"


async def test_an_ack_of_a_superseded_version_leaves_the_current_one_unacknowledged(
    manager: DeviceManager, store: Store, clock: Clock
) -> None:
    (num_id,) = await make_devices(manager, 1)
    await manager.modify_config(ref("dev-0"), 0, b"v2")
    acks = ConfigAcks(store)
    acks.record(num_id, 1, at(5))
    await acks.close()
    got = await acked(manager, "dev-0")
    assert got["versions"] == {2: None, 1: datetime(2026, 1, 2, 0, 0, 5, tzinfo=UTC)}
    assert got["config"] is None
    assert got["last"] == "2026-01-02T00:00:05Z"


async def test_acks_are_written_without_close_by_the_background_commit(
    manager: DeviceManager, store: Store
) -> None:
    num_ids = await make_devices(manager, 3)
    acks = ConfigAcks(store)
    for i, num_id in enumerate(num_ids):
        acks.record(num_id, 1, at(i))

    async def all_recorded() -> bool:
        for i in range(3):
            if (await acked(manager, f"dev-{i}"))["config"] is None:
                return False
        return True

    for _ in range(200):
        if await all_recorded():
            break
        await asyncio.sleep(0.05)
    assert await all_recorded()
    await acks.close()


async def test_nothing_is_lost_across_batches(
    manager: DeviceManager, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    num_ids = await make_devices(manager, 7)
    # Batches of 3, so 7 acknowledgements take three transactions.
    monkeypatch.setattr(bookkeeping, "ACK_BATCH_MAX", 3)
    acks = ConfigAcks(store)
    for i, num_id in enumerate(num_ids):
        acks.record(num_id, 1, at(i))
    await acks.close()
    for i in range(7):
        assert (await acked(manager, f"dev-{i}"))["last"] == f"2026-01-02T00:00:0{i}Z"


class FailingOnce(BridgeStore):
    """The real bridge writes, whose first acknowledgement commit fails as a lost database
    would."""

    failed = 0

    async def ack_configs(self, acks: Sequence[tuple[int, int, int]]) -> None:
        if not self.failed:
            self.failed = len(acks)
            raise OSError("database unreachable")
        await super().ack_configs(acks)


async def test_a_failed_commit_is_kept_and_written_later(
    manager: DeviceManager, store: Store
) -> None:
    num_ids = await make_devices(manager, 2)
    failing = store.bridge = FailingOnce(store)
    acks = ConfigAcks(store)
    acks.record(num_ids[0], 1, at(1))
    for _ in range(200):
        if failing.failed:
            break
        await asyncio.sleep(0.02)
    assert failing.failed == 1
    acks.record(num_ids[1], 1, at(2))
    await acks.close()
    assert (await acked(manager, "dev-0"))["config"] == "2026-01-02T00:00:01Z"
    assert (await acked(manager, "dev-1"))["config"] == "2026-01-02T00:00:02Z"
