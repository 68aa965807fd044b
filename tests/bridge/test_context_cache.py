"""The device-context cache in process: its bounds, and who makes it forget."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ironcore.bridge.cluster.forgetting import ForgettingRotationStore
from ironcore.bridge.cluster.hub import ClusterHub
from ironcore.bridge.devices import ContextCache, DeviceAuthenticator, DeviceContext, DeviceRefused
from ironcore.registry.names import DeviceRef, LocationName, RegistryName
from ironcore.registry.resources import (
    Device,
    DeviceCredential,
    DeviceRegistry,
    HttpConfig,
    HttpState,
    LogLevel,
    PublicKeyCredential,
    PublicKeyFormat,
)
from ironcore.registry.rotation import Rotations
from ironcore.registry.service import DeviceManager
from tests.bridge.devices import PROJECT, make_jwt, new_key
from tests.keys import PrivateKey, public_pem

NAME = RegistryName(LocationName(PROJECT, "us-central1"), "reg")


def context(device_id: str, num_id: int) -> DeviceContext:
    return DeviceContext(NAME, DeviceRegistry(id="reg"), Device(id=device_id, num_id=num_id))


def by_id(device_id: str) -> DeviceRef:
    return DeviceRef(NAME, device_id, None)


def test_least_recently_used_go_beyond_the_size() -> None:
    cache = ContextCache(size=2, seconds=60)
    for n, device_id in enumerate(("dev-a", "dev-b")):
        cache.put(by_id(device_id), context(device_id, n + 1), cache.generation)
    assert cache.get(by_id("dev-a")) is not None  # dev-b is now the least recently used
    cache.put(by_id("dev-c"), context("dev-c", 3), cache.generation)
    assert len(cache) == 2
    assert cache.get(by_id("dev-b")) is None
    assert cache.get(by_id("dev-a")) is not None and cache.get(by_id("dev-c")) is not None


def test_entries_expire() -> None:
    cache = ContextCache(size=10, seconds=0)
    cache.put(by_id("dev-a"), context("dev-a", 1), cache.generation)
    assert cache.get(by_id("dev-a")) is None
    assert len(cache) == 0


def test_forget_drops_every_ref_of_the_device_and_stale_loads() -> None:
    cache = ContextCache(size=10, seconds=60)
    numeric = DeviceRef(NAME, None, 7)
    cache.put(by_id("dev-a"), context("dev-a", 7), cache.generation)
    cache.put(numeric, context("dev-a", 7), cache.generation)
    cache.put(by_id("dev-b"), context("dev-b", 8), cache.generation)
    cache.forget_device(7)
    assert cache.get(by_id("dev-a")) is None and cache.get(numeric) is None
    assert cache.get(by_id("dev-b")) is not None

    # A load that started before a change must not land in the cache after it.
    started = cache.generation
    cache.forget_device(8)
    cache.put(by_id("dev-b"), context("dev-b", 8), started)
    assert cache.get(by_id("dev-b")) is None

    cache.put(by_id("dev-b"), context("dev-b", 8), cache.generation)
    cache.forget_all()
    assert len(cache) == 0


def test_devices_of_a_registry_share_its_object_while_it_is_unchanged() -> None:
    cache = ContextCache(size=10, seconds=60)
    cache.put(by_id("dev-a"), context("dev-a", 1), cache.generation)
    cache.put(by_id("dev-b"), context("dev-b", 2), cache.generation)
    first, second = cache.get(by_id("dev-a")), cache.get(by_id("dev-b"))
    assert first is not None and second is not None and first.registry is second.registry

    changed = DeviceContext(
        NAME, DeviceRegistry(id="reg", log_level=LogLevel.DEBUG), Device(id="dev-c", num_id=3)
    )
    cache.put(by_id("dev-c"), changed, cache.generation)
    third = cache.get(by_id("dev-c"))
    assert third is not None and third.registry.log_level == LogLevel.DEBUG


def test_a_size_of_zero_caches_nothing() -> None:
    cache = ContextCache(size=0, seconds=60)
    cache.put(by_id("dev-a"), context("dev-a", 1), cache.generation)
    assert cache.get(by_id("dev-a")) is None


@dataclass
class Wired:
    """A manager, authenticator and hub joined as `runtime.parts` joins them."""

    manager: DeviceManager
    authenticator: DeviceAuthenticator
    hub: ClusterHub
    num_id: int


async def setup(unwired: DeviceManager, key: PrivateKey) -> Wired:
    """dev-a, with one key, authenticated once (so cached)."""
    authenticator = DeviceAuthenticator(unwired.store, cache=ContextCache(100, 60))
    hub = ClusterHub("server", authenticator)
    manager = DeviceManager(unwired.store, unwired.clock, links=hub, topics=unwired.topics)
    await manager.create_registry(NAME.location, DeviceRegistry(id="reg"))
    created = await manager.create_device(
        NAME,
        Device(
            id="dev-a",
            credentials=[
                DeviceCredential(
                    public_key=PublicKeyCredential(
                        format=PublicKeyFormat.ES256_PEM, key=public_pem(key)
                    )
                )
            ],
        ),
    )
    await authenticator.authenticate(by_id("dev-a"), make_jwt(key), "http")
    assert authenticator.cache is not None and len(authenticator.cache) == 1
    return Wired(manager, authenticator, hub, created.num_id)


async def test_the_manager_changes_reach_the_cache(manager: DeviceManager) -> None:
    key = new_key()
    wired = await setup(manager, key)
    manager, authenticator = wired.manager, wired.authenticator
    await manager.update_device(by_id("dev-a"), Device(blocked=True), "blocked")
    with pytest.raises(DeviceRefused) as refused:
        await authenticator.authenticate(by_id("dev-a"), make_jwt(key), "http")
    assert refused.value.reason == "blocked"

    await manager.update_device(by_id("dev-a"), Device(blocked=False), "blocked")
    await authenticator.authenticate(by_id("dev-a"), make_jwt(key), "http")
    disabled = DeviceRegistry(http_config=HttpConfig(http_enabled_state=HttpState.HTTP_DISABLED))
    await manager.update_registry(NAME, disabled, "httpConfig")
    with pytest.raises(DeviceRefused) as refused:
        await authenticator.authenticate(by_id("dev-a"), make_jwt(key), "http")
    assert refused.value.reason == "http_disabled"


async def test_key_rotation_writes_reach_the_cache(manager: DeviceManager) -> None:
    key = new_key()
    wired = await setup(manager, key)
    # As `runtime.parts.device_side` builds them.
    rotations = Rotations(ForgettingRotationStore(manager.store, wired.hub.forget_device))
    await rotations.start(wired.num_id)
    assert wired.authenticator.cache is not None and len(wired.authenticator.cache) == 0


async def test_a_refusal_is_checked_against_the_database(manager: DeviceManager) -> None:
    """A key added where this process does not hear of it (another process) is accepted at
    once: a cached context that refuses is read again before the device is refused."""
    key, added = new_key(), new_key()
    authenticator = (await setup(manager, key)).authenticator
    record = await manager.device_record(by_id("dev-a"))
    device = record.device.model_copy(deep=True)
    device.credentials.append(
        DeviceCredential(
            public_key=PublicKeyCredential(format=PublicKeyFormat.ES256_PEM, key=public_pem(added))
        )
    )
    # No ConnectedDevices call, as in another process.
    await manager.store.devices.update_device(device)
    authenticated = await authenticator.authenticate(by_id("dev-a"), make_jwt(added), "http")
    assert len(authenticated.context.device.credentials) == 2
