"""Writers of one SQLite file take turns across processes, queued by the kernel.

SQLite's own busy handler polls: a writer that finds the database locked sleeps 1, 2, 5, 10 ms
and so on before it tries again. With several processes group-committing to one file (the MQTT
bridge's worker processes appending events) most waits oversleep the commit they wait for. An
`flock(2)` on a file beside the database queues the writers instead: the next one wakes the
moment the lock is released. Within a process, `Database.write` already lets one writer at a
time reach this lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path


class WriterLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    async def acquire(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        waiting = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, self._fd, fcntl.LOCK_EX))
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            # The thread goes on waiting; whatever it gets must be given back.
            waiting.add_done_callback(self._release_if_acquired)
            raise

    def hold(self) -> None:
        """`acquire` for a thread of its own: blocks until the lock is this process's."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _release_if_acquired(self, waiting: asyncio.Future[None]) -> None:
        if not waiting.cancelled() and waiting.exception() is None:
            self.release()

    def close(self) -> None:
        os.close(self._fd)
