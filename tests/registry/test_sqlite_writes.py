"""SQLite writes across processes: writers queue on `WriterLock` (an flock beside the database),
and the event log appends through `SqliteAppender`."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import text

from ironcore.registry.store import Store
from ironcore.registry.store.writer_lock import WriterLock


async def test_a_second_holder_waits_until_the_first_releases(tmp_path: Path) -> None:
    # Two opens of one file contend like two processes: flock belongs to the open file.
    first, second = WriterLock(tmp_path / "lock"), WriterLock(tmp_path / "lock")
    await first.acquire()
    waiting = asyncio.ensure_future(second.acquire())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    first.release()
    await asyncio.wait_for(waiting, 5)
    second.release()
    first.close()
    second.close()


async def test_a_cancelled_wait_gives_back_what_it_gets(tmp_path: Path) -> None:
    first, second, third = (WriterLock(tmp_path / "lock") for _ in range(3))
    await first.acquire()
    waiting = asyncio.ensure_future(second.acquire())
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    first.release()
    # The abandoned wait's thread takes the lock and hands it straight back.
    await asyncio.wait_for(third.acquire(), 5)
    third.release()
    for lock in (first, second, third):
        lock.close()


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from ironcore.registry.store import Store

    async def main(url, tag, batches):
        store = await Store.open(url)
        try:
            for n in range(batches):
                await store.bridge.append_events([(tag, b"x", "{}", n) for _ in range(50)])
        finally:
            await store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


async def test_processes_appending_at_once_lose_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ironcore.db'}"
    store = await Store.open(url)  # migrated before the writers start
    writers = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, url, f"w{n}", "300")
        for n in range(3)
    ]
    try:
        ours = 0
        # This process keeps writing for as long as any other does.
        while any(writer.returncode is None for writer in writers):
            await store.bridge.append_events([("primary", b"y", "{}", 0) for _ in range(50)])
            ours += 50
        assert [await writer.wait() for writer in writers] == [0, 0, 0]
        async with store.read() as conn:
            query = text("SELECT topic, count(*) FROM events GROUP BY topic")
            rows: dict[str, int] = dict((await conn.execute(query)).all())
        assert rows == {"primary": ours, "w0": 15_000, "w1": 15_000, "w2": 15_000}
    finally:
        for writer in writers:
            if writer.returncode is None:
                writer.kill()
        await store.close()


@pytest.mark.parametrize("count", [1, 199, 200, 201, 450, 2000])
async def test_appends_keep_every_row_in_order_across_statement_boundaries(
    tmp_path: Path, count: int
) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'ironcore.db'}")
    try:
        rows = [
            (f"t{n % 3}", bytes([n % 256]) * (n % 7), f'{{"n":"{n}"}}', n) for n in range(count)
        ]
        await store.bridge.append_events(rows)
        await store.bridge.append_events(rows[:1])
        async with store.read() as conn:
            query = text("SELECT topic, data, attributes, publish_time FROM events ORDER BY pk")
            stored = [tuple(row) for row in (await conn.execute(query)).all()]
        assert stored == [*rows, rows[0]]
    finally:
        await store.close()


async def test_a_failed_append_writes_nothing_and_the_next_one_works(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'ironcore.db'}")
    try:
        good = [("t", b"x", "{}", n) for n in range(450)]
        bad = [*good[:300], (None, b"x", "{}", 0), *good[300:]]  # topic is NOT NULL
        with pytest.raises(sqlite3.IntegrityError):
            await store.bridge.append_events(bad)  # type: ignore[arg-type]
        await store.bridge.append_events(good)
        async with store.read() as conn:
            count = (await conn.execute(text("SELECT count(*) FROM events"))).scalar()
        assert count == 450
        # The lock was given back: another writer of the file gets it at once.
        other = WriterLock(tmp_path / "ironcore.db-writer.lock")
        await asyncio.wait_for(other.acquire(), 1)
        other.release()
        other.close()
    finally:
        await store.close()


async def test_the_wal_is_checkpointed_by_the_appender(tmp_path: Path) -> None:
    from ironcore.registry.store.sqlite_append import CHECKPOINT_EVERY

    database = tmp_path / "ironcore.db"
    store = await Store.open(f"sqlite:///{database}")
    try:
        rows = [("t", b"x" * 200, "{}", n) for n in range(500)]
        for _ in range(CHECKPOINT_EVERY - 1):
            await store.bridge.append_events(rows)
        # Until a checkpoint, the events are only in the WAL, not in the database file.
        before = database.stat().st_size
        assert before < 100_000
        await store.bridge.append_events(rows)
        assert database.stat().st_size > before + CHECKPOINT_EVERY * 500 * 200
    finally:
        await store.close()
