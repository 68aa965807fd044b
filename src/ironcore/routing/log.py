"""The embedded event log: a durable append with group commit.

Every append waits until its row is committed, but appends that arrive while a commit is in
flight share the next one, so durability costs one transaction per batch rather than one fsync
per event. This is what lets the bridge PUBACK only after an event is durable without capping
the fleet at the disk's fsync rate.

A commit that fails fails every append waiting on it, with the store's error (UNAVAILABLE for
a database out of reach, RESOURCE_EXHAUSTED for a full disk): no event of the batch is
acknowledged, and the next batch tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from ironcore.errors import IronCoreError, Unavailable
from ironcore.logs import RateLimited
from ironcore.registry.store import Store

log = logging.getLogger(__name__)
# One line per kind of failure every few seconds: a database outage fails every commit.
failures = RateLimited(log)
# Rows in one transaction at most; a larger backlog is committed in several.
MAX_BATCH = 2000


def fail_waiters(
    futures: Iterable[asyncio.Future[Any]], error: Exception, what: str
) -> IronCoreError:
    """Fail the waiters of a commit that failed with `error`: the store's error, or
    UNAVAILABLE naming `what` for one it did not classify. Returns that error."""
    failure = (
        error
        if isinstance(error, IronCoreError)
        else Unavailable(f"The {what} is unavailable: {error}")
    )
    for future in futures:
        if not future.done():
            # One each: an exception raised in many tasks gathers all their tracebacks.
            future.set_exception(type(failure)(failure.message))
    return failure


class EventLog:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[tuple[tuple[str, bytes, str, int], asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def append(self, topic: str, data: bytes, attributes: str) -> None:
        """Return once the event is committed; raise the store's error (Unavailable,
        ResourceExhausted) if it could not be."""
        await self.submit(topic, data, attributes)

    def submit(self, topic: str, data: bytes, attributes: str) -> asyncio.Future[None]:
        """Queue an event (its attributes as JSON text) for the next commit; the future
        resolves once it is committed."""
        if self._closed:
            raise Unavailable("the event log is shutting down")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-log")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(((topic, data, attributes, time.time_ns() // 1000), future))
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        while not self._closed or self._pending:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    await self.store.bridge.append_events([row for row, _ in batch])
                except Exception as error:  # the database failed: every waiter hears of it
                    failure = fail_waiters([future for _, future in batch], error, "event log")
                    failures.error(
                        failure.code.name,
                        "event log commit of %d events failed, none acknowledged: %s",
                        len(batch),
                        failure,
                    )
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def close(self) -> None:
        """Commit what is pending, then stop."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
