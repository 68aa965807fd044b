"""Device bookkeeping written behind: the `last*` times and the `lastErrorStatus` the MQTT
bridge maintains.

A PINGREQ or an event must not wait for a database write, and ten thousand devices must not
cost ten thousand transactions a second; updates are merged in memory (latest wins per device
and field) and flushed in one transaction about once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ironcore.registry.store import Store

log = logging.getLogger(__name__)
FLUSH_SECONDS = 1.0


class Bookkeeper:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: dict[int, dict[str, int | str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def touch(self, num_id: int, field: str, value: int | str) -> None:
        """Record `field` (a devices column such as last_event_time) for a device."""
        self._pending.setdefault(num_id, {})[field] = value
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bookkeeping")

    def error(self, num_id: int, code: int, message: str, now_us: int) -> None:
        """Record why a device was refused or disconnected (its lastErrorStatus); written behind
        like the times, since a fleet that drops off at once would otherwise queue thousands
        of write transactions."""
        fields = self._pending.setdefault(num_id, {})
        fields["last_error_code"] = code
        fields["last_error_message"] = message[:1000]
        fields["last_error_time"] = now_us
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bookkeeping")

    async def flush(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            await self.store.update_device_times(batch)
        except Exception as error:  # lost bookkeeping is logged; it never blocks devices
            log.warning("could not write bookkeeping for %d devices: %s", len(batch), error)

    async def _run(self) -> None:
        # Never cancelled: a flush cut short would lose the batch it had taken.
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), FLUSH_SECONDS)
            await self.flush()

    async def close(self) -> None:
        """Write what is pending, then stop."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        await self.flush()
