"""What /readyz checks in a primary (api/ops.py): the database answers, its disk has room, the
MQTT listeners accept. A component is a name and an async check; `checks` gives this process's,
and a part added to the process (the bus) adds its own to the mapping.
"""

from __future__ import annotations

import shutil
import time
from functools import partial
from pathlib import Path

from ironcore.api.ops import ReadinessCheck
from ironcore.bridge.cluster.bus import Bus
from ironcore.bridge.mqtt.server import MqttBridge
from ironcore.errors import ResourceExhausted
from ironcore.registry.store import Store
from ironcore.settings import Settings

# Below this much free space where ironcore writes, the server says it is not ready, before
# writes start failing: a SQLite commit (its WAL) and a firmware image need room.
DISK_FREE_MIN_BYTES = 4 * 1024 * 1024
# How long a write that failed for want of space keeps the disk "not ready" when no write has
# succeeded since: a server taken out of a load balancer gets few writes to prove the disk is
# back, and the database's own disk (PostgreSQL's) cannot be measured from here.
DISK_FULL_HOLD_SECONDS = 30.0


def checks(
    settings: Settings, store: Store, bridge: MqttBridge, bus: Bus | None = None
) -> dict[str, ReadinessCheck]:
    """The primary's components: `database` (a ping), `disk` (the data directory, and a SQLite
    file's directory if elsewhere), `mqtt` (the bridge's listeners) and, with `--bus`, `bus`
    (connected to NATS, so hearing and reaching the other servers)."""
    directories = [settings.data_dir]
    if store.is_sqlite and store.engine.url.database and store.appender is not None:
        directories.append(Path(store.engine.url.database).parent)
    found: dict[str, ReadinessCheck] = {
        "database": store.ping,
        "disk": partial(disk, store, directories),
        "mqtt": bridge.listening,
    }
    if bus is not None:
        found["bus"] = bus.check
    return found


async def disk(store: Store, directories: list[Path]) -> None:
    """Ready unless a write failed for want of space in the last DISK_FULL_HOLD_SECONDS (and
    none succeeded since), or a directory ironcore writes to has less than DISK_FREE_MIN_BYTES
    free."""
    if (
        store.disk_full is not None
        and time.monotonic() - store.disk_full_at < DISK_FULL_HOLD_SECONDS
    ):
        raise store.disk_full
    for directory in dict.fromkeys(directories):
        free = shutil.disk_usage(directory).free
        if free < DISK_FREE_MIN_BYTES:
            raise ResourceExhausted(
                f"only {free} bytes free in {directory}; ready needs {DISK_FREE_MIN_BYTES}"
            )
