"""The database under every store: connections, transactions and migrations, on SQLite
(embedded) or PostgreSQL.

SQLAlchemy Core, async. Each store method is one transaction (`write()` or `read()`), so a
request that fails changes nothing. SQLite allows one writer at a time; writes are serialized by
a lock in the process instead of retrying on "database is locked", and the writers of several
processes sharing a file queue on an flock beside it (writer_lock.py).

A storage fault (the database unreachable, its disk full) leaves every transaction, append
and ping as `Unavailable` or `ResourceExhausted` (faults.py), whatever the driver raised. A
SQLite file and its WAL and shared-memory files are private to the server's user (0600): they
hold configs, admin token hashes and telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Self, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ironcore.errors import ResourceExhausted
from ironcore.registry.store import audit
from ironcore.registry.store.faults import storage_fault
from ironcore.registry.store.sqlite_append import SqliteAppender, insert_events
from ironcore.registry.store.writer_lock import WriterLock

_MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every ironcore process sharing a database.
_MIGRATION_LOCK_ID = 0x1C0E
# The files of a SQLite database: SQLite makes the WAL and shared-memory files with the mode
# of the database file, so making that one 0600 keeps all three private.
_SQLITE_SUFFIXES = ("", "-wal", "-shm")
_PRIVATE_FILE_MODE = 0o600

log = logging.getLogger(__name__)
T = TypeVar("T")


def database_url(url: str) -> str:
    """Turn a user's database URL into the async driver's."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


class Database:
    def __init__(
        self,
        engine: AsyncEngine,
        loop_reads: Engine | None = None,
        writer_lock: WriterLock | None = None,
        appender: SqliteAppender | None = None,
        thread_writes: Engine | None = None,
    ) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock()
        # SQLite files only: writers of other processes queue on it (see writer_lock.py).
        self._writer_lock = writer_lock
        # ...and append events through a connection of their own (see sqlite_append.py).
        self.appender = appender
        # SQLite files only: reads run on the event loop's thread (see _LoopConnection)...
        self._loop_reads = loop_reads
        # ...and `write_sync` runs a whole transaction in one thread call.
        self._thread_writes = thread_writes
        # ...and the bridges' device lookup, once per device connection or request, goes
        # straight to a driver connection of its own: through SQLAlchemy's Core the lookup cost
        # four times SQLite's work.
        self.device_reads = loop_reads.raw_connection() if loop_reads is not None else None
        # The last write that failed because the disk was full (and when, time.monotonic()),
        # until a write succeeds again.
        self.disk_full: ResourceExhausted | None = None
        self.disk_full_at = 0.0
        # Counts the IAM policies this process wrote, so that its policy index
        # (`access.policies`) reads them again at once rather than at its next poll.
        self.policy_writes = 0

    def policies_changed(self) -> None:
        self.policy_writes += 1

    @classmethod
    async def open(cls, url: str, schema: str | None = None) -> Self:
        """Connect, bring the schema up to date, and return the database.

        `schema` (PostgreSQL only) puts every table in that schema, which is created if it
        does not exist; tests use it to keep runs apart.
        """
        url = database_url(url)
        connect_args: dict[str, Any] = {}
        if schema and url.startswith("postgresql"):
            connect_args["server_settings"] = {"search_path": schema}
        # Parameters carry token hashes and sealed secrets: never in a log, at any level.
        engine = create_async_engine(
            url, connect_args=connect_args, hide_parameters=True, **_pool_options(url)
        )
        if engine.dialect.name == "sqlite":
            if engine.url.database and "memory" not in url:
                private_files(Path(engine.url.database))
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        elif schema:
            async with engine.begin() as conn:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        async with engine.begin() as conn:
            await conn.run_sync(_migrate)
        loop_reads = None
        if engine.dialect.name == "sqlite" and "memory" not in url:
            loop_reads = create_engine(
                url.replace("sqlite+aiosqlite://", "sqlite://", 1),
                # A read that never awaits anything but its own statements holds its
                # connection without yielding, so one connection serves every read (and one
                # the device lookups); more are opened only for a caller that awaits something
                # else inside read().
                pool_size=2,
                max_overflow=-1,
                connect_args={"check_same_thread": False},
                hide_parameters=True,
            )
            event.listen(loop_reads, "connect", _sqlite_read_pragmas)
            # One connection: `write_sync` runs in this process's turn among its writers.
            thread_writes = create_engine(
                url.replace("sqlite+aiosqlite://", "sqlite://", 1),
                pool_size=1,
                max_overflow=0,
                connect_args={"check_same_thread": False},
                hide_parameters=True,
            )
            event.listen(thread_writes, "connect", _sqlite_pragmas)
            database = engine.url.database
            assert database is not None
            lock = WriterLock(Path(f"{database}-writer.lock"))
            return cls(engine, loop_reads, lock, SqliteAppender(database, lock), thread_writes)
        return cls(engine, loop_reads)

    async def close(self) -> None:
        if self.device_reads is not None:
            self.device_reads.close()
        if self._writer_lock is not None:
            self._writer_lock.close()
        if self.appender is not None:
            self.appender.close()
        if self._loop_reads is not None:
            self._loop_reads.dispose()
        if self._thread_writes is not None:
            self._thread_writes.dispose()
        await self.engine.dispose()

    async def ping(self) -> None:
        """Run a trivial query on a pool connection; Unavailable when the database is
        unreachable."""
        with self.faults():
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

    @contextlib.contextmanager
    def faults(self) -> Iterator[None]:
        """Raise a storage fault inside as Unavailable or ResourceExhausted (faults.py), and
        keep the last disk-full fault until a write succeeds."""
        try:
            yield
        except Exception as error:
            fault = storage_fault(error)
            if fault is None:
                raise
            if isinstance(fault, ResourceExhausted):
                self.disk_full, self.disk_full_at = fault, time.monotonic()
            raise fault from error

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; on SQLite, writers take turns (one writer at a time). While
        an actor acts (audit.py), the transaction carries its audit entry."""
        with self.faults():
            if self.is_sqlite:
                async with self._sqlite_writer(), self.engine.begin() as conn:
                    yield conn
                    entry = await audit.record_change(conn)
            else:
                async with self.engine.begin() as conn:
                    yield conn
                    entry = await audit.record_change(conn)
        self.disk_full = None
        if entry is not None:
            audit.logged(entry)

    async def write_sync(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one write transaction, as `write()` does (the audit entry included),
        with a synchronous connection; its result once committed.

        On a SQLite file the whole transaction (the statements, the audit entry, the commit and
        its fsync) is one call in a thread, where `write()` hands each statement to aiosqlite's
        thread and back: three or four hand-offs a statement, each a futex and an event-loop
        wake-up, and they were most of what separated CreateDevice from its SQL. Elsewhere
        `work` runs through `write()`'s connection (`run_sync`).
        """
        if self._thread_writes is None:
            async with self.write() as conn:
                return await conn.run_sync(work)
        with self.faults():
            async with self._sqlite_writer():
                # The thread copies this task's context, and so the acting call (audit.py).
                result, entry = await _to_the_end(asyncio.to_thread(self._thread_transaction, work))
        self.disk_full = None
        if entry is not None:
            audit.logged(entry)
        return result

    def _thread_transaction(
        self, work: Callable[[Connection], T]
    ) -> tuple[T, dict[str, Any] | None]:
        assert self._thread_writes is not None
        with self._thread_writes.begin() as conn:
            result = work(conn)
            entry = audit.record_change_sync(conn)
        return result, entry

    @contextlib.asynccontextmanager
    async def _sqlite_writer(self) -> AsyncIterator[None]:
        """This process's turn to write, then (a file database) this process's turn among
        every process writing to the file."""
        async with self._write_lock:
            if self._writer_lock is None:
                yield
                return
            await self._writer_lock.acquire()
            try:
                yield
            finally:
                self._writer_lock.release()

    async def append_sqlite(self, rows: Sequence[tuple[str, bytes, str, int]]) -> None:
        """Append events through the appender's own connection (a SQLite file only), in this
        process's turn among its writers; the appender takes the file's lock in its thread."""
        await self.write_sqlite(partial(insert_events, rows=rows))

    async def write_sqlite(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one write transaction on the appender's connection (a SQLite file
        only), in one thread call, in this process's turn among its writers."""
        assert self.appender is not None
        with self.faults():
            async with self._write_lock:
                result = await self.appender.run(work)
        self.disk_full = None
        return result

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (autocommit-free; nothing it does is committed)."""
        with self.faults():
            if self._loop_reads is not None:
                with self._loop_reads.connect() as sync_conn:
                    yield _LoopConnection(sync_conn)  # type: ignore[misc]
                return
            async with self.engine.connect() as conn:
                yield conn


async def _to_the_end(call: Awaitable[T]) -> T:
    """`call`'s result. A caller cancelled meanwhile still waits for it to end before it is
    cancelled: a thread cannot be stopped, and the writers' turn is held until it ends."""
    running = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait({running})
        raise


class _LoopConnection:
    """The part of AsyncConnection that reads use, over a plain SQLite connection, run on the
    event loop's thread.

    A point read takes microseconds in SQLite (WAL readers never wait for the writer), far less
    than handing the query to aiosqlite's thread and back: through SQLAlchemy that is five
    hand-offs per query (cursor, execute, fetchall, close, rollback), each a futex wake-up and
    a loop wake-up, and they were most of GetDevice's CPU time.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.execute(statement, parameters)

    async def scalar(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.scalar(statement, parameters)


def private_files(database: Path) -> None:
    """Make a SQLite database's files readable by the server's user alone: create the database
    file 0600 if it is not there yet, and take group and other access away from the files of
    one made before (logged)."""
    if not database.exists():
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT, _PRIVATE_FILE_MODE))
    for suffix in _SQLITE_SUFFIXES:
        path = Path(f"{database}{suffix}")
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            path.chmod(mode & 0o700)
            log.warning("%s was mode %04o; made it %04o", path, mode, mode & 0o700)


def _sqlite_read_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # This connection only reads, and it runs on the event loop: never let it write, and
    # never let it wait long for a lock (WAL readers only wait during recovery).
    cursor.execute("PRAGMA query_only=ON")
    cursor.execute("PRAGMA busy_timeout=1000")
    cursor.close()


# SQLite connections in the pool. Each aiosqlite connection is a thread; more of them only add
# GIL contention, since the one writer is serialized anyway and reads take microseconds.
_SQLITE_POOL_SIZE = 4


def _pool_options(url: str) -> dict[str, Any]:
    """Pool settings per database.

    PostgreSQL: ping a connection before handing it out, so a restarted database costs one
    failed ping instead of a failed request. SQLite (a file database): a fixed pool without
    pre-ping or overflow. A file connection cannot go stale, and overflow connections were
    opened and closed again under load (a new thread, PRAGMAs and schema read each time).
    """
    if not url.startswith("sqlite"):
        return {"pool_pre_ping": True}
    if ":memory:" in url or "mode=memory" in url:
        return {}  # SQLAlchemy picks a static pool: one shared in-memory database
    return {"pool_size": _SQLITE_POOL_SIZE, "max_overflow": 0}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; FULL makes every commit survive power loss,
    # because an acknowledged write must be durable.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _migrate(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
