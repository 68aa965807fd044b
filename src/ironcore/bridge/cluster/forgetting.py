"""What a change makes a process forget: the one place cached device contexts are dropped.

Every change reaches it, wherever it was made: the device manager, revocations and firmware
rollouts of this process (through the hub), the other processes of this server and the other
servers (through the hub's transports), and key rotation steps, whose writes bypass the
manager (`ForgettingRotationStore`, which makes each write a `Forget` change of the hub).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ironcore.bridge.cluster.messages import Change, RegistryChanged
from ironcore.registry.provenance import Provenance
from ironcore.registry.store import Store
from ironcore.registry.store.rotation import RotationStore


class Caches(Protocol):
    """What a process caches about devices (`bridge.devices.DeviceAuthenticator`)."""

    def forget_device(self, num_id: int) -> None: ...

    def forget_all(self) -> None: ...


def forget(caches: Caches, change: Change) -> None:
    """Drop what `change` made stale, before anything acts on the change."""
    if isinstance(change, RegistryChanged):
        caches.forget_all()  # every device of the registry, and the registry itself
    else:
        caches.forget_device(change.num_id)


class ForgettingRotationStore(RotationStore):
    """A rotation adds, expires and removes credentials: each write is a change of the device
    (whether or not the write won its compare-and-set, which costs one read at most).

    `forget` is the hub's `forget_device`: this process forgets, and so do the others."""

    def __init__(self, store: Store, forget: Callable[[int], None]) -> None:
        super().__init__(store)
        self.forget = forget

    async def write(
        self,
        num_id: int,
        expected_id: str | None,
        rotation: dict[str, Any],
        credentials: list[dict[str, Any]] | None = None,
        added: dict[str, Provenance] | None = None,
    ) -> bool:
        try:
            return await super().write(num_id, expected_id, rotation, credentials, added)
        finally:
            self.forget(num_id)
