"""Group commit of acknowledgements and deadline changes (`routing.leases`), on SQLite and
PostgreSQL: changes that arrive together share one transaction, with the result of applying
them one by one; a commit that fails fails every change in it and changes nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from sqlalchemy import text

from ironcore.errors import IronCoreError, NotFound
from ironcore.registry.store import Store
from ironcore.registry.store.pubsub import LeaseChange, PubSubStore, Subscription
from ironcore.routing.leases import LeaseWriter

TOPIC = "projects/p/topics/leases"
SUBSCRIPTION = "projects/p/subscriptions/leases"
OTHER = "projects/p/subscriptions/other"
DEADLINE_US = 10_000_000  # the subscription's ack deadline
NOW_US = 1_000_000_000_000


class CountingStore(PubSubStore):
    """The real store, keeping the batches `change_leases` was given."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.batches: list[list[LeaseChange]] = []

    async def change_leases(self, changes: Sequence[LeaseChange]) -> list[bool]:
        self.batches.append(list(changes))
        return await super().change_leases(changes)


async def leased(store: PubSubStore, count: int) -> list[int]:
    """Publish `count` messages to a new subscription and lease them all at NOW_US."""
    await store.create_topic(TOPIC, "embedded", 1)
    for name in (SUBSCRIPTION, OTHER):
        await store.create_subscription(Subscription(name, TOPIC, 10, "", "", "", 0), 1)
    await store.publish(TOPIC, [(b"m%d" % i, {}) for i in range(count)], 2)
    return sorted(await pull_until(store, SUBSCRIPTION, count, NOW_US))


async def pull_until(store: PubSubStore, name: str, count: int, now_us: int) -> list[int]:
    """Pull until `count` messages came. On the shared PostgreSQL server an event is
    deliverable once every older transaction there ended (`registry.store.pubsub`), which
    other sessions' transactions may delay for a moment."""
    got: list[int] = []
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        got += [m.event_pk for m in await store.pull(name, 1000, now_us)]
        if len(got) < count:
            await asyncio.sleep(0.05)
    assert len(got) == count, got
    return got


async def test_concurrent_changes_share_one_commit_in_order(store: Store) -> None:
    pubsub = CountingStore(store)
    a, b, c, d, e, f = await leased(pubsub, 6)
    writer = LeaseWriter(pubsub)
    far = NOW_US + 600_000_000
    changes = [
        LeaseChange(SUBSCRIPTION, [a], None),  # acked
        LeaseChange(SUBSCRIPTION, [b], far),  # extended...
        LeaseChange(SUBSCRIPTION, [b], NOW_US),  # ...then nacked: redelivered
        LeaseChange(SUBSCRIPTION, [c], NOW_US),  # nacked...
        LeaseChange(SUBSCRIPTION, [c], far),  # ...then extended: not redelivered
        LeaseChange(SUBSCRIPTION, [d], far),  # extended, then acked: gone
        LeaseChange(SUBSCRIPTION, [d], None),
        LeaseChange(SUBSCRIPTION, [e], None),  # acked, then extended: gone
        LeaseChange(SUBSCRIPTION, [e], far),
    ]
    await asyncio.gather(*(writer.change(change) for change in changes))
    assert pubsub.batches == [changes]

    # Past the first deadline, only what was nacked and what nobody touched comes back.
    later = NOW_US + DEADLINE_US + 1
    assert sorted(await pull_until(pubsub, SUBSCRIPTION, 2, later)) == [b, f]
    # Changes queued while a commit is in flight share the next one.
    first = asyncio.gather(writer.change(LeaseChange(SUBSCRIPTION, [b], None)))
    await asyncio.sleep(0)
    await asyncio.gather(
        writer.change(LeaseChange(SUBSCRIPTION, [f], None)),
        writer.change(LeaseChange(SUBSCRIPTION, [c], far + 1)),
    )
    await first
    assert [len(batch) for batch in pubsub.batches[1:]] == [1, 2]
    # Past the extension, the extended one comes back, and nothing acknowledged ever.
    assert await pubsub.pull(SUBSCRIPTION, 1000, far) == []
    assert await pull_until(pubsub, SUBSCRIPTION, 1, far + 1) == [c]


async def test_a_missing_subscription_fails_only_its_change(store: Store) -> None:
    pubsub = CountingStore(store)
    a, b = await leased(pubsub, 2)
    writer = LeaseWriter(pubsub)
    results = await asyncio.gather(
        writer.change(LeaseChange(SUBSCRIPTION, [a], None)),
        writer.change(LeaseChange("projects/p/subscriptions/missing", [b], None)),
        return_exceptions=True,
    )
    assert len(pubsub.batches) == 1
    assert results[0] is None
    assert isinstance(results[1], NotFound) and "missing" in results[1].message
    assert await pull_until(pubsub, SUBSCRIPTION, 1, NOW_US + DEADLINE_US + 1) == [b]


async def test_a_commit_failing_midway_fails_every_waiter_and_changes_nothing(
    store: Store,
) -> None:
    pubsub = CountingStore(store)
    a, b, c = await leased(pubsub, 3)
    # A real failure inside the transaction, after the deadline change of `b` and on the
    # acknowledgement of `c` (the delete of `a` and `c` is one statement).
    async with store.write() as conn:
        if store.is_sqlite:
            await conn.execute(
                text(
                    "CREATE TRIGGER fail_ack BEFORE DELETE ON subscription_leases "
                    f"WHEN OLD.event_pk = {c} BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
                )
            )
        else:
            await conn.execute(
                text(
                    "CREATE FUNCTION fail_ack() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"IF OLD.event_pk = {c} THEN RAISE EXCEPTION 'injected fault'; END IF; "
                    "RETURN OLD; END $$"
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER fail_ack BEFORE DELETE ON subscription_leases "
                    "FOR EACH ROW EXECUTE FUNCTION fail_ack()"
                )
            )
    writer = LeaseWriter(pubsub)
    far = NOW_US + 600_000_000
    results = await asyncio.gather(
        writer.change(LeaseChange(SUBSCRIPTION, [a], None)),
        writer.change(LeaseChange(SUBSCRIPTION, [b], far)),
        writer.change(LeaseChange(SUBSCRIPTION, [c], None)),
        return_exceptions=True,
    )
    assert len(pubsub.batches) == 1
    for result in results:
        assert isinstance(result, IronCoreError), result
        assert "injected fault" in result.message
    assert len({id(result) for result in results}) == 3  # one error each
    # Nothing was acknowledged or extended: all three come back after the first deadline.
    later = NOW_US + DEADLINE_US + 1
    assert sorted(await pull_until(pubsub, SUBSCRIPTION, 3, later)) == [a, b, c]
    # The writer goes on: the next commit succeeds.
    await writer.change(LeaseChange(SUBSCRIPTION, [a, b], None))
    assert await pull_until(pubsub, SUBSCRIPTION, 1, later + DEADLINE_US + 1) == [c]


@pytest.mark.databases("sqlite")
async def test_many_ids_go_in_several_statements(store: Store) -> None:
    """More ids than one statement takes (SQLite's 999 parameters) in one batch."""
    pubsub = PubSubStore(store)
    ids = await leased(pubsub, 2500)
    writer = LeaseWriter(pubsub)
    await asyncio.gather(
        writer.change(LeaseChange(SUBSCRIPTION, ids[:2000], NOW_US + 600_000_000)),
        writer.change(LeaseChange(SUBSCRIPTION, ids[1000:], None)),
    )
    later = NOW_US + DEADLINE_US + 1
    assert await pubsub.pull(SUBSCRIPTION, 1000, later) == []
    assert sorted(await pull_until(pubsub, SUBSCRIPTION, 1000, NOW_US + 600_000_001)) == ids[:1000]
