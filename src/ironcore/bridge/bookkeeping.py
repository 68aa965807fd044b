"""Device bookkeeping written behind: the `last*` times and the `lastErrorStatus` the device
bridges maintain, and the devices' config acknowledgements.

A PINGREQ or an event must not wait for a database write, and ten thousand devices must not
cost ten thousand transactions a second; updates are merged in memory (latest wins per device
and field) and flushed in one transaction about once a second. While the database is out of
reach (or its disk full) they are kept, newer values first, and written once it is back: a
device disconnected by the outage gets its lastErrorStatus then.

Config acknowledgements are group-committed by `ConfigAcks`: a config pushed to a fleet comes
back as thousands of PUBACKs within milliseconds, and one write transaction each (SQLite has one
writer) made the acknowledgements, not the delivery, the limit of a fan-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ironcore.logs import RateLimited
from ironcore.registry.store import Store

log = logging.getLogger(__name__)
# Both retry every second or so while the database is away: one line per cause now and then.
failures = RateLimited(log)
FLUSH_SECONDS = 1.0
# How long the first acknowledgement of a batch waits for others to join its transaction.
ACK_GATHER_SECONDS = 0.05
# After a failed commit, the acknowledgements are kept and tried again this much later.
ACK_RETRY_SECONDS = 1.0
# Acknowledgements in one transaction at most; a larger backlog is committed in several.
ACK_BATCH_MAX = 5000


class ConfigAcks:
    """Config acknowledgements (device, version, time), committed in batches: each is written
    within ACK_GATHER_SECONDS plus one commit while the database is up, kept and retried while
    it is not, and written at `close`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: dict[tuple[int, int], int] = {}
        self._wakeup = asyncio.Event()
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def record(self, num_id: int, version: int, at_us: int) -> None:
        """The device acknowledged config `version` at `at_us` (µs since the epoch)."""
        self._pending[(num_id, version)] = at_us
        self._wakeup.set()
        if self._task is None and not self._closed.is_set():
            self._task = asyncio.create_task(self._run(), name="config-acks")

    async def _run(self) -> None:
        # Never cancelled: a commit cut short would lose the batch it had taken.
        while not self._closed.is_set():
            await self._wakeup.wait()
            await asyncio.sleep(ACK_GATHER_SECONDS)
            self._wakeup.clear()
            if not await self._commit():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), ACK_RETRY_SECONDS)
                self._wakeup.set()

    async def _commit(self) -> bool:
        """Write what is pending; False (and everything kept) when the database failed."""
        while self._pending:
            keys = list(self._pending)[:ACK_BATCH_MAX]
            batch = {key: self._pending.pop(key) for key in keys}
            try:
                await self.store.bridge.ack_configs([(n, v, at) for (n, v), at in batch.items()])
            except Exception as error:  # the database is down: keep them for the next try
                failures.warning(
                    "acks", "could not record %d config acknowledgements: %s", len(batch), error
                )
                for key, at in batch.items():
                    self._pending.setdefault(key, at)
                return False
        return True

    async def close(self) -> None:
        """Write what is pending, then stop."""
        self._closed.set()
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if not await self._commit():
            log.error("lost %d config acknowledgements at shutdown", len(self._pending))


class Bookkeeper:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.config_acks = ConfigAcks(store)
        self._pending: dict[int, dict[str, int | str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def touch(self, num_id: int, field: str, value: int | str) -> None:
        """Record `field` (a devices column such as last_event_time) for a device."""
        self._pending.setdefault(num_id, {})[field] = value
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bookkeeping")

    def config_acked(self, num_id: int, version: int, at_us: int) -> None:
        """The device acknowledged config `version`; recorded with the next batch."""
        self.config_acks.record(num_id, version, at_us)

    def error(self, num_id: int, code: int, message: str, now_us: int) -> None:
        """Record why a device was refused or disconnected (its lastErrorStatus); written behind
        like the times, since a fleet that drops off at once would otherwise queue thousands
        of write transactions."""
        self.touch(num_id, "last_error_code", code)
        self.touch(num_id, "last_error_message", message[:1000])
        self.touch(num_id, "last_error_time", now_us)

    async def flush(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            await self.store.bridge.update_device_times(batch)
        except Exception as error:  # kept for the next flush; it never blocks devices
            failures.warning(
                "times", "could not write bookkeeping for %d devices: %s", len(batch), error
            )
            for num_id, fields in batch.items():
                self._pending[num_id] = {**fields, **self._pending.get(num_id, {})}

    async def _run(self) -> None:
        # Never cancelled: a flush cut short would lose the batch it had taken.
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), FLUSH_SECONDS)
            await self.flush()

    async def close(self) -> None:
        """Write what is pending (bookkeeping and config acknowledgements), then stop."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        await self.flush()
        await self.config_acks.close()
