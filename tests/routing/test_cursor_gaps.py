"""Issue 13, defect 1: a pull subscription and a live tail get every committed event exactly
once while several processes write the event log.

On PostgreSQL an event's id is handed out at insert and becomes visible at commit, so with
several writers ids commit out of order. Writers here are separate processes that append
through the store (the bridges' path) and, half of the time, through a transaction held open
with sleeps inside (the same INSERT, a slow commit), in batches of varying size, while this
process pulls and acknowledges and tails the topic. Afterwards every event in the log must have
been delivered to the subscription and to the tail, once each.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter

import pytest

from ironcore.registry.store import Store
from ironcore.registry.store.pubsub import PubSubStore, Subscription
from tests.conftest import Database

TOPIC = "projects/p/topics/gaps"
SUBSCRIPTION = "projects/p/subscriptions/gaps"
WRITERS = 3
EVENTS_PER_WRITER = 2000
# After the writers exit, how long the readers may take to catch up.
DRAIN_SECONDS = 10.0

WRITER = """
import asyncio, random, sys, time

import asyncpg

from ironcore.registry.store import Store
from ironcore.registry.store.bridge import _APPEND_POSTGRESQL


async def main(url: str, schema: str, topic: str, writer: int, count: int) -> None:
    rng = random.Random(writer)
    store = await Store.open(url, schema)
    raw = await asyncpg.connect(url, server_settings={"search_path": schema})
    sent = 0
    while sent < count:
        n = min(count - sent, rng.choice([1, 1, 2, 3, 10, 50, 200]))
        now = time.time_ns() // 1000
        rows = [(topic, f"{writer}:{sent + i}".encode(), "{}", now) for i in range(n)]
        sent += n
        await asyncio.sleep(rng.random() * 0.02)  # so that the readers keep up, at the head
        if rng.random() < 0.5:
            await store.bridge.append_events(rows)
            continue
        # A slow transaction: ids allocated now, committed milliseconds later.
        async with raw.transaction():
            half = n // 2
            if half:
                await raw.executemany(_APPEND_POSTGRESQL, rows[:half])
            await asyncio.sleep(rng.random() * 0.02)
            await raw.executemany(_APPEND_POSTGRESQL, rows[half:])
            await asyncio.sleep(rng.random() * 0.02)
    await raw.close()
    await store.close()


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
"""


def _now_us() -> int:
    return time.time_ns() // 1000


@pytest.mark.databases("postgresql")
async def test_concurrent_writers_skip_nothing(database: Database, store: Store) -> None:
    assert database.schema is not None
    pubsub = PubSubStore(store)
    await pubsub.create_topic(TOPIC, "embedded", _now_us())
    await pubsub.create_subscription(
        Subscription(SUBSCRIPTION, TOPIC, 600, "", "", "", 0), _now_us()
    )
    tail_start = await pubsub.last_position()

    writers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WRITER,
            database.url,
            database.schema,
            TOPIC,
            str(i),
            str(EVENTS_PER_WRITER),
        )
        for i in range(WRITERS)
    ]
    expected = WRITERS * EVENTS_PER_WRITER
    pulled: list[int] = []
    tailed: list[int] = []
    writers_done = asyncio.Event()

    async def pull() -> None:
        deadline = None
        while len(set(pulled)) < expected:
            got = await pubsub.pull(SUBSCRIPTION, 1000, _now_us())
            if got:
                pulled.extend(message.event_pk for message in got)
                await pubsub.acknowledge(SUBSCRIPTION, [message.event_pk for message in got])
                continue
            if writers_done.is_set():
                deadline = deadline or time.monotonic() + DRAIN_SECONDS
                if time.monotonic() > deadline:
                    return
            await asyncio.sleep(0.002)

    async def tail() -> None:
        after, deadline = tail_start, None
        while len(set(tailed)) < expected:
            got = await pubsub.read_after(TOPIC, after, 500)
            if got:
                tailed.extend(message.event_pk for message in got)
                after = got[-1].position
                continue
            if writers_done.is_set():
                deadline = deadline or time.monotonic() + DRAIN_SECONDS
                if time.monotonic() > deadline:
                    return
            await asyncio.sleep(0.002)

    readers = asyncio.gather(pull(), tail())
    for process in writers:
        assert await asyncio.wait_for(process.wait(), 90) == 0
    writers_done.set()
    await asyncio.wait_for(readers, 60)

    async with store.read() as conn:
        from sqlalchemy import select

        from ironcore.registry.store.schema import events

        logged = set(
            (await conn.execute(select(events.c.pk).where(events.c.topic == TOPIC))).scalars()
        )
    assert len(logged) == expected
    problems = []
    for name, delivered in (("pull", pulled), ("tail", tailed)):
        duplicates = sum(n - 1 for n in Counter(delivered).values())
        missing = logged - set(delivered)
        if missing or duplicates:
            problems.append(
                f"{name}: {len(missing)} of {expected} committed events never delivered, "
                f"{duplicates} delivered twice"
            )
    assert not problems, problems


async def test_upgrade_keeps_each_subscription_in_place(database: Database) -> None:
    """Migration 0006 gives existing events and cursors one transaction id: a subscription
    goes on after the same event as before the upgrade."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import Connection, insert, text
    from sqlalchemy.ext.asyncio import create_async_engine

    from ironcore.registry.store import database as database_module
    from ironcore.registry.store.schema import events, topics

    def to_0005(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(database_module._MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "0005")

    url = database_module.database_url(database.url)
    args = {"server_settings": {"search_path": database.schema}} if database.schema else {}
    engine = create_async_engine(url, connect_args=args)
    async with engine.begin() as conn:
        if database.schema:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{database.schema}"'))
        await conn.run_sync(to_0005)
        await conn.execute(insert(topics).values(name=TOPIC, backend="embedded", created_at=0))
        pks = [
            (
                await conn.execute(
                    insert(events)
                    .values(topic=TOPIC, data=b"old", attributes={}, publish_time=0)
                    .returning(events.c.pk)
                )
            ).scalar_one()
            for _ in range(5)
        ]
        # The table as it was at 0005, without cursor_xid.
        await conn.execute(
            text(
                "INSERT INTO subscriptions (name, topic, ack_deadline_seconds, push_endpoint,"
                " push_secret, dead_letter_topic, max_delivery_attempts, cursor, created_at)"
                " VALUES (:name, :topic, 10, '', '', '', 0, :cursor, 0)"
            ),
            {"name": SUBSCRIPTION, "topic": TOPIC, "cursor": pks[2]},
        )
    await engine.dispose()

    store = await Store.open(database.url, database.schema)
    try:
        pubsub = PubSubStore(store)
        assert [m.event_pk for m in await pubsub.pull(SUBSCRIPTION, 100, _now_us())] == pks[3:]
        new = await pubsub.publish(TOPIC, [(b"new", {})], _now_us())
        assert [m.event_pk for m in await pubsub.pull(SUBSCRIPTION, 100, _now_us())] == new
    finally:
        await store.close()
