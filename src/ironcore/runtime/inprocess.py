"""The admin API alone, in process, over a device manager someone else built: for tests and
tools that call it through ASGI. No bridge, no hub, no data directory; the manager's own links
(if any) hear of changes, revocations included.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI

from ironcore.access.tokens import AdminTokens
from ironcore.api.app import create_app
from ironcore.api.ops import ReadinessCheck
from ironcore.firmware.rollout import Firmware
from ironcore.registry.revocation import Revocations, RevokedSigners
from ironcore.registry.rotation import Rotations
from ironcore.registry.service import DeviceManager
from ironcore.registry.store.firmware import FirmwareStore
from ironcore.registry.store.pubsub import PubSubStore
from ironcore.registry.store.rotation import RotationStore
from ironcore.routing.pubsub import PubSub


def admin_api(
    manager: DeviceManager,
    firmware: Firmware | None = None,
    readiness: Mapping[str, ReadinessCheck] | None = None,
) -> FastAPI:
    """The admin API over `manager` (its store and clock), with services of its own. Without
    `firmware`, one with no image directory, which refuses to store or serve images; without
    `readiness`, /readyz checks the database alone."""
    store, clock = manager.store, manager.clock
    return create_app(
        manager,
        AdminTokens(store, clock),
        PubSub(PubSubStore(store)),
        Revocations(store, RevokedSigners(store), clock, manager.links),
        Rotations(RotationStore(store), clock),
        firmware or Firmware(FirmwareStore(store), manager, None),
        readiness=readiness,
    )
