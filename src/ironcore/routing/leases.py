"""Group commit of the embedded Pub/Sub's acknowledgements and ack-deadline changes.

`google-cloud-pubsub`'s subscriber acknowledges in many small unary calls (at most 100 ids
each, one call at a time per process, the next only once the last returned), besides a
deadline change for every batch it receives, and REST consumers and push delivery add theirs:
one transaction each made them wait on one another's commits, and on SQLite's one writer. Here
every change that arrives while a commit is in flight, from any stream, call or subscription,
shares the next commit (as the event log's appends do, `routing.log`), so a client waits for
at most the commit in flight and its own.

A change's caller returns once its commit did: an acknowledged lease is deleted for good before
the client hears so. A commit that fails fails every change in it with the store's error, and
changes nothing (one transaction); a change for a subscription that does not exist fails alone
with NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import logging

from ironcore.errors import NotFound
from ironcore.logs import RateLimited
from ironcore.registry.store.pubsub import LeaseChange, PubSubStore
from ironcore.routing.log import fail_waiters

log = logging.getLogger(__name__)
failures = RateLimited(log)
# Event ids in one commit at most; the rest wait for the next.
MAX_BATCH_IDS = 20_000


class LeaseWriter:
    def __init__(self, store: PubSubStore) -> None:
        self.store = store
        self._pending: list[tuple[LeaseChange, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def change(self, change: LeaseChange) -> None:
        """Return once `change` is committed; raise NotFound for a subscription that does not
        exist, or the store's error (Unavailable, ResourceExhausted) if the commit failed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((change, future))
        if self._task is None or self._task.done():
            # Not the caller's task: a caller that stops waiting does not stop the commit of
            # the others' changes.
            self._task = asyncio.create_task(self._run(), name="pubsub-leases")
        await future

    async def _run(self) -> None:
        while self._pending:
            batch = self._take()
            try:
                found = await self.store.change_leases([change for change, _ in batch])
            except Exception as error:  # the database failed: every waiter hears of it
                failure = fail_waiters([future for _, future in batch], error, "Pub/Sub store")
                failures.error(
                    failure.code.name,
                    "commit of %d acknowledgements or deadline changes failed: %s",
                    len(batch),
                    failure,
                )
                continue
            for (change, future), exists in zip(batch, found, strict=True):
                if future.done():  # its caller stopped waiting
                    continue
                if exists:
                    future.set_result(None)
                else:
                    future.set_exception(NotFound(f"Subscription {change.subscription} not found"))

    def _take(self) -> list[tuple[LeaseChange, asyncio.Future[None]]]:
        """The oldest pending changes, up to `MAX_BATCH_IDS` event ids (at least one change)."""
        ids = count = 0
        for change, _ in self._pending:
            if count and ids + len(change.event_pks) > MAX_BATCH_IDS:
                break
            ids += len(change.event_pks)
            count += 1
        batch, self._pending = self._pending[:count], self._pending[count:]
        return batch
