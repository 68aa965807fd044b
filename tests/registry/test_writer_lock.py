"""SQLite writers of several processes queue on `WriterLock` (an flock beside the database)."""

from __future__ import annotations

import asyncio
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
                await store.append_events([(tag, b"x", "{}", n) for _ in range(50)])
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
            await store.append_events([("primary", b"y", "{}", 0) for _ in range(50)])
            ours += 50
        assert [await writer.wait() for writer in writers] == [0, 0, 0]
        async with store.read() as conn:
            query = text("SELECT topic, count(*) FROM events GROUP BY topic")
            rows = dict((await conn.execute(query)).all())
        assert rows == {"primary": ours, "w0": 15_000, "w1": 15_000, "w2": 15_000}
    finally:
        for writer in writers:
            if writer.returncode is None:
                writer.kill()
        await store.close()
