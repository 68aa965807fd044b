"""The event log's appends to a SQLite file (and the Pub/Sub's acknowledgements): one thread
call per batch, holding the write lock only while SQLite works.

Measured with three MQTT processes appending to one file (docs/benchmarks.md, session 3):

- Through aiosqlite, each `await` inside the transaction (BEGIN, the insert, COMMIT) came back
  only when the busy event loop got round to it, and the lock was held meanwhile: ~15 ms per
  2,000 rows, and the lock was held nearly all the time. Here the whole transaction (taking the
  cross-process lock, BEGIN, insert, COMMIT, giving the lock back) is one call in one thread.
- `executemany` gives up the GIL around every row and must win it back from the event loop
  each time; rows go in as multi-row INSERTs of `ROWS_PER_STATEMENT` instead (one step each).
- A commit that crosses the WAL's auto-checkpoint threshold copies the WAL into the database
  while holding the lock. This connection checkpoints instead, passively, after every
  `CHECKPOINT_EVERY` commits and after giving the lock back.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

from ironcore.registry.store.writer_lock import WriterLock

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = tuple[str, bytes, str, int]  # topic, data, attributes (JSON text), publish time (µs)
# 4 parameters a row: 800 in all, under SQLite's oldest limit of 999 per statement.
ROWS_PER_STATEMENT = 200
CHECKPOINT_EVERY = 8
_COLUMNS = "INSERT INTO events (topic, data, attributes, publish_time) VALUES "
# One row: also what an in-memory database (which has no appender) runs through aiosqlite.
APPEND_ONE = _COLUMNS + "(?, ?, ?, ?)"
_APPEND_MANY = _COLUMNS + ",".join(["(?, ?, ?, ?)"] * ROWS_PER_STATEMENT)


class SqliteAppender:
    def __init__(self, path: str, lock: WriterLock) -> None:
        self.lock = lock
        # Used by one thread at a time: `Store` lets one append run at once.
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA synchronous=FULL")  # acknowledged means durable
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._commits = 0

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on this connection in one write transaction, in one thread call; its
        result once committed. The Pub/Sub's acknowledgements take this path too
        (`registry.store.pubsub`), for the same reasons as appends. A cancelled caller does
        not stop the thread, which commits (or rolls back) and gives the lock back on its
        own."""
        return await asyncio.to_thread(self._transaction, work)

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        self.lock.hold()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        finally:
            self.lock.release()
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as error:  # the events are committed; the next one tries again
                log.warning("could not checkpoint the event log's WAL: %s", error)
        return result

    def close(self) -> None:
        self._conn.close()


def insert_events(conn: sqlite3.Connection, rows: Sequence[Row]) -> None:
    whole = len(rows) - len(rows) % ROWS_PER_STATEMENT
    for start in range(0, whole, ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        conn.execute(_APPEND_MANY, [value for row in chunk for value in row])
    conn.executemany(APPEND_ONE, rows[whole:])
