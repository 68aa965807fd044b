"""SQL of the embedded Pub/Sub: topics, subscriptions, and at-least-once delivery by leases.

A subscription is a cursor into the event log plus the leases of messages handed out and not
yet acknowledged. A pull first hands out leases whose deadline passed (redelivery), then new
events after the cursor; an acknowledgement deletes leases. Nothing is copied per subscription
when an event is appended, so a topic with many subscriptions costs no more to publish to.

Positions. A cursor may only move over a prefix of the log that can no longer change. On
PostgreSQL an event's id (`pk`) is handed out at insert and becomes visible at commit, so with
several writing processes (servers, `--mqtt-workers`, `topics:publish` beside MQTT) ids commit
out of order: a reader that saw id 11 committed and moved its cursor there skipped id 10,
committed a moment later, for good (issue 13: 0.1-1 % of events under load). So on PostgreSQL
an event also records its transaction's id (`xid`, the column's default
`pg_current_xact_id()`), the log's order is (xid, pk), and readers take only events whose
transaction is older than every transaction still in flight:
`xid < pg_snapshot_xmin(pg_current_snapshot())`, in the same statement (so the same snapshot)
that reads them. Every transaction below that horizon has ended, and a new transaction always
gets a larger id, so the events below it are final: a cursor (xid, pk) moved over them leaves
no gap, whatever order ids were handed out in. (Filtering by the horizon but ordering by `pk`
alone would not do: xid 100 begins, xid 101 inserts pk 5, xid 100 inserts pk 6 and commits;
below the horizon 101 is pk 6, and pk 5 commits later with a smaller id.)

Why this and not the alternatives:
- It costs the append path little: one bigint per row from a column default, no lock, no
  extra statement or round trip; the index (topic, xid, pk) replaces (topic, pk) and serves
  the reads (an index-only scan, no sort). Two processes appending through
  `BridgeStore.append_events`, 2 shared cores, medians of 5 runs before -> after: batches of 20
  13.4k -> 15.4k events/s, batches of 200 53.9k -> 46.6k; single connection interleaved,
  medians of 6: 10.4k -> 8.9k and 40.2k -> 45.0k. Run-to-run spread was +-30 %, so no
  throughput cost above the noise. In CPU, which noise moves less: two servers taking MQTT
  QoS 1 into one schema spend about 16 % more PostgreSQL CPU per event than before the fix,
  8 % more server and PostgreSQL CPU together (docs/benchmarks.md, issue 13 defect 1).
- Serialising appends (an advisory lock per database or topic and a commit-ordered sequence)
  would queue every process's group commit behind every other's fsync.
- Copying each event into a per-subscription table at append would make publishing cost grow
  with the number of subscriptions, which this design avoids.
The price: delivery waits for the oldest write transaction in flight anywhere on the
PostgreSQL server (xids are server-wide, any database), so a long-running write transaction,
a session idle in a transaction that wrote, or a prepared transaction delays delivery (never
loses it): set `idle_in_transaction_session_timeout` on a shared server. A pull only sees events
of transactions older than its own row lock; the next pull gets the rest.
A new subscription (or tail) starts at the horizon, so it may also get the few events that
committed just before it was created, from transactions still younger than the oldest in
flight.

SQLite has one writer at a time: ids are taken and committed under the write lock, so they
commit in order; `xid` is 0 there and readers order by `pk` alone.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Text,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError

from ironcore.errors import AlreadyExists, NotFound
from ironcore.registry.store.database import Database
from ironcore.registry.store.policies import delete_policy
from ironcore.registry.store.schema import events, subscription_leases, subscriptions, topics

# Event ids in one statement's IN list at most: under SQLite's oldest limit of 999 parameters.
IDS_PER_STATEMENT = 900


@dataclass(frozen=True)
class Topic:
    name: str
    backend: str


@dataclass(frozen=True)
class Subscription:
    name: str
    topic: str
    ack_deadline_seconds: int
    push_endpoint: str
    push_secret: str
    dead_letter_topic: str
    max_delivery_attempts: int


@dataclass(frozen=True)
class LeaseChange:
    """An acknowledgement (`deadline_us` None: the leases are deleted) or a new deadline for
    leases of one subscription."""

    subscription: str
    event_pks: Sequence[int]
    deadline_us: int | None


Position = tuple[int, int]
"""A place in the event log, (xid, pk); see the module's docstring. Events after it are new."""


@dataclass(frozen=True)
class Delivered:
    event_pk: int
    topic: str
    data: bytes
    attributes: dict[str, str]
    publish_time: int
    attempt: int
    xid: int = 0

    @property
    def position(self) -> Position:
        """Where a reader that has seen this event goes on from."""
        return (self.xid, self.event_pk)


class PubSubStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Topics

    async def create_topic(self, name: str, backend: str, now_us: int) -> Topic:
        async with self.db.write() as conn:
            try:
                await conn.execute(
                    insert(topics).values(name=name, backend=backend, created_at=now_us)
                )
            except IntegrityError:
                raise AlreadyExists(f"Topic {name} already exists") from None
        return Topic(name, backend)

    async def ensure_topic(self, name: str, backend: str, now_us: int) -> None:
        """Create the topic unless it exists (events name their topic before anyone created it)."""
        async with self.db.write() as conn:
            if await conn.scalar(select(topics.c.pk).where(topics.c.name == name)) is None:
                await conn.execute(
                    insert(topics).values(name=name, backend=backend, created_at=now_us)
                )

    async def get_topic(self, name: str) -> Topic | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(topics).where(topics.c.name == name))).first()
        return Topic(row.name, row.backend) if row else None

    async def list_topics(self, prefix: str) -> list[Topic]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(topics).where(topics.c.name.startswith(prefix)).order_by(topics.c.name)
            )
            return [Topic(row.name, row.backend) for row in rows]

    async def delete_topic(self, name: str) -> None:
        """Delete a topic; its subscriptions stay (as in Pub/Sub) but receive nothing new."""
        async with self.db.write() as conn:
            result = await conn.execute(delete(topics).where(topics.c.name == name))
            if not result.rowcount:
                raise NotFound(f"Topic {name} not found")
            await conn.execute(delete_policy(name))
        self.db.policies_changed()

    # Subscriptions

    async def create_subscription(self, subscription: Subscription, now_us: int) -> None:
        """Create a subscription that receives what is published from now on."""
        async with self.db.write() as conn:
            start = await self._now(conn)
            try:
                await conn.execute(
                    insert(subscriptions).values(
                        name=subscription.name,
                        topic=subscription.topic,
                        ack_deadline_seconds=subscription.ack_deadline_seconds,
                        push_endpoint=subscription.push_endpoint,
                        push_secret=subscription.push_secret,
                        dead_letter_topic=subscription.dead_letter_topic,
                        max_delivery_attempts=subscription.max_delivery_attempts,
                        cursor_xid=start[0],
                        cursor=start[1],
                        created_at=now_us,
                    )
                )
            except IntegrityError:
                raise AlreadyExists(f"Subscription {subscription.name} already exists") from None

    async def get_subscription(self, name: str) -> Subscription | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(subscriptions).where(subscriptions.c.name == name))
            ).first()
        return _subscription(row) if row else None

    async def list_subscriptions(self, prefix: str) -> list[Subscription]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(subscriptions)
                .where(subscriptions.c.name.startswith(prefix))
                .order_by(subscriptions.c.name)
            )
            return [_subscription(row) for row in rows]

    async def replace_push_secret(self, name: str, old: str, new: str) -> bool:
        """Store `new` as subscription `name`'s push secret if it is still `old` (another
        server may have replaced it meanwhile); whether it was."""
        async with self.db.write() as conn:
            result = await conn.execute(
                update(subscriptions)
                .where(subscriptions.c.name == name, subscriptions.c.push_secret == old)
                .values(push_secret=new)
            )
            return bool(result.rowcount)

    async def delete_subscription(self, name: str) -> None:
        async with self.db.write() as conn:
            pk = await conn.scalar(select(subscriptions.c.pk).where(subscriptions.c.name == name))
            if pk is None:
                raise NotFound(f"Subscription {name} not found")
            await conn.execute(
                delete(subscription_leases).where(subscription_leases.c.subscription_pk == pk)
            )
            await conn.execute(delete(subscriptions).where(subscriptions.c.pk == pk))
            await conn.execute(delete_policy(name))
        self.db.policies_changed()

    # Delivery

    async def pull(
        self, name: str, max_messages: int, now_us: int, ack_deadline_seconds: int = 0
    ) -> list[Delivered]:
        """Lease up to `max_messages`: expired leases first, then new events; each for
        `ack_deadline_seconds`, or the subscription's deadline when 0.

        A message whose lease expired `max_delivery_attempts` times goes to the subscription's
        dead-letter topic instead of being delivered again.
        """
        async with self.db.write() as conn:
            query = select(subscriptions).where(subscriptions.c.name == name)
            if not self.db.is_sqlite:
                query = query.with_for_update()
            sub = (await conn.execute(query)).first()
            if sub is None:
                raise NotFound(f"Subscription {name} not found")
            seconds = ack_deadline_seconds or sub.ack_deadline_seconds
            deadline = now_us + seconds * 1_000_000
            expired = (
                await conn.execute(
                    select(subscription_leases.c.event_pk, subscription_leases.c.attempts)
                    .where(
                        subscription_leases.c.subscription_pk == sub.pk,
                        subscription_leases.c.deadline <= now_us,
                    )
                    .order_by(subscription_leases.c.event_pk)
                    .limit(max_messages)
                )
            ).all()
            attempts: dict[int, int] = {}
            dead: list[int] = []
            for row in expired:
                if sub.max_delivery_attempts and row.attempts >= sub.max_delivery_attempts:
                    dead.append(row.event_pk)
                else:
                    attempts[row.event_pk] = row.attempts + 1
            if attempts:
                await conn.execute(
                    update(subscription_leases)
                    .where(
                        subscription_leases.c.subscription_pk == sub.pk,
                        subscription_leases.c.event_pk.in_(list(attempts)),
                    )
                    .values(deadline=deadline, attempts=subscription_leases.c.attempts + 1)
                )
            if dead:
                await self._dead_letter(conn, sub, dead, now_us)
            room = max_messages - len(attempts)
            if room > 0:
                new = (
                    await conn.execute(
                        self._after(
                            select(events.c.xid, events.c.pk),
                            sub.topic,
                            (sub.cursor_xid, sub.cursor),
                        ).limit(room)
                    )
                ).all()
                fresh = [row.pk for row in new]
                if fresh:
                    # One INSERT ... SELECT, not a row at a time: SQLite's executemany gives
                    # up the GIL around every row and waits to win it back from the event
                    # loop, holding the one writer meanwhile.
                    await conn.execute(
                        insert(subscription_leases).from_select(
                            ["subscription_pk", "event_pk", "deadline", "attempts"],
                            select(
                                literal(sub.pk), events.c.pk, literal(deadline), literal(1)
                            ).where(events.c.pk.in_(fresh)),
                        )
                    )
                    await conn.execute(
                        update(subscriptions)
                        .where(subscriptions.c.pk == sub.pk)
                        .values(cursor_xid=new[-1].xid, cursor=new[-1].pk)
                    )
                    attempts.update(dict.fromkeys(fresh, 1))
            if not attempts:
                return []
        # The leased events are read once the leases are committed: an event does not change
        # once written, and SQLite's one writer (acks wait for it) is not held while a
        # thousand rows are read and decoded.
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(events)
                .where(events.c.pk.in_(list(attempts)))
                .order_by(events.c.xid, events.c.pk)
            )
            delivered = [_delivered(row, attempts[row.pk]) for row in rows]
        gone = set(attempts) - {d.event_pk for d in delivered}
        if gone:
            # Past retention: the events are deleted, so are their leases.
            async with self.db.write() as conn:
                await conn.execute(
                    delete(subscription_leases).where(
                        subscription_leases.c.subscription_pk == sub.pk,
                        subscription_leases.c.event_pk.in_(list(gone)),
                    )
                )
        return delivered

    async def _dead_letter(self, conn: Any, sub: Any, event_pks: list[int], now_us: int) -> None:
        if sub.dead_letter_topic:
            rows = await conn.execute(select(events).where(events.c.pk.in_(event_pks)))
            copies = [
                {
                    "topic": sub.dead_letter_topic,
                    "data": row.data,
                    "attributes": {**dict(row.attributes), "sourceSubscription": sub.name},
                    "publish_time": now_us,
                }
                for row in rows
            ]
            if copies:
                await conn.execute(insert(events), copies)
        await conn.execute(
            delete(subscription_leases).where(
                subscription_leases.c.subscription_pk == sub.pk,
                subscription_leases.c.event_pk.in_(event_pks),
            )
        )

    async def acknowledge(self, name: str, event_pks: Sequence[int]) -> None:
        await self._change_one(LeaseChange(name, event_pks, None))

    async def modify_ack_deadline(
        self, name: str, event_pks: Sequence[int], deadline_us: int
    ) -> None:
        await self._change_one(LeaseChange(name, event_pks, deadline_us))

    async def _change_one(self, change: LeaseChange) -> None:
        if not (await self.change_leases([change]))[0]:
            raise NotFound(f"Subscription {change.subscription} not found")

    async def change_leases(self, changes: Sequence[LeaseChange]) -> list[bool]:
        """Apply acknowledgements and deadline changes, of any subscriptions, in one
        transaction; per change, whether its subscription exists (nothing is changed for one
        that does not).

        The result is the same as applying them one by one in their order: deadline changes
        keep their order (the last one of a lease wins), and acknowledgements go last, since
        a deleted lease stays deleted whatever came before or after it.

        On a SQLite file the transaction is one call in the appender's thread
        (`sqlite_append`): through aiosqlite each statement of it, and BEGIN and COMMIT, came
        back only when the busy event loop got round to it, holding the one writer meanwhile.
        """
        names = sorted({change.subscription for change in changes})
        if self.db.appender is not None:
            # Shielded, as the event log's appends: this process's writers wait for the thread
            # even if the caller stops waiting, since the thread goes on holding the lock.
            found = await asyncio.shield(
                self.db.write_sqlite(partial(_change_leases_sqlite, names, changes))
            )
        else:
            async with self.db.write() as conn:
                rows = await conn.execute(
                    select(subscriptions.c.name, subscriptions.c.pk).where(
                        subscriptions.c.name.in_(names)
                    )
                )
                found = {row.name: row.pk for row in rows}
                deadlines, acked = _lease_statements(changes, found)
                for pk, deadline_us, chunk in deadlines:
                    await conn.execute(
                        update(subscription_leases)
                        .where(
                            subscription_leases.c.subscription_pk == pk,
                            subscription_leases.c.event_pk.in_(chunk),
                        )
                        .values(deadline=deadline_us)
                    )
                for pk, chunk in acked:
                    await conn.execute(
                        delete(subscription_leases).where(
                            subscription_leases.c.subscription_pk == pk,
                            subscription_leases.c.event_pk.in_(chunk),
                        )
                    )
        return [change.subscription in found for change in changes]

    async def publish(
        self, topic: str, messages: Sequence[tuple[bytes, dict[str, str]]], now_us: int
    ) -> list[int]:
        """Append messages to a topic in one transaction; their event ids, in order."""
        if not messages:
            return []
        rows = [
            {"topic": topic, "data": data, "attributes": attributes, "publish_time": now_us}
            for data, attributes in messages
        ]
        async with self.db.write() as conn:
            # One statement for the batch (SQLAlchemy's "insertmanyvalues"), not a round trip
            # to the database thread per message; the ids come back in the messages' order.
            result = await conn.execute(
                insert(events).returning(events.c.pk, sort_by_parameter_order=True), rows
            )
            return [int(pk) for pk in result.scalars()]

    async def read_after(self, topic: str, after: Position, limit: int) -> list[Delivered]:
        """Events of a topic after `after` (for live tails, which keep no cursor); go on from
        the last one's `position`."""
        async with self.db.read() as conn:
            rows = await conn.execute(self._after(select(events), topic, after).limit(limit))
            return [_delivered(row, 1) for row in rows]

    async def last_position(self) -> Position:
        """Where a reader of what is published from now on starts."""
        async with self.db.read() as conn:
            return await self._now(conn)

    def _after(self, query: Any, topic: str, after: Position) -> Any:
        """`query` narrowed to the final events of `topic` after `after`, in log order."""
        if self.db.is_sqlite:
            return query.where(events.c.topic == topic, events.c.pk > after[1]).order_by(
                events.c.pk
            )
        return query.where(
            events.c.topic == topic,
            tuple_(events.c.xid, events.c.pk) > tuple_(*after),
            events.c.xid < _horizon(),
        ).order_by(events.c.xid, events.c.pk)

    async def _now(self, conn: Any) -> Position:
        if self.db.is_sqlite:
            return (0, int(await conn.scalar(select(func.max(events.c.pk))) or 0))
        return (int(await conn.scalar(select(_horizon()))), 0)

    async def expire(self, before_us: int) -> int:
        """Delete events published before `before_us` (retention); returns how many."""
        async with self.db.write() as conn:
            result = await conn.execute(delete(events).where(events.c.publish_time < before_us))
            return int(result.rowcount or 0)


def _lease_statements(
    changes: Sequence[LeaseChange], found: dict[str, int]
) -> tuple[list[tuple[int, int, Sequence[int]]], list[tuple[int, Sequence[int]]]]:
    """What `change_leases` runs, in order: deadline changes (subscription pk, deadline, event
    ids), consecutive ones to the same deadline merged, then acknowledgements (subscription
    pk, event ids); at most `IDS_PER_STATEMENT` ids each. Changes of subscriptions missing
    from `found` (name -> pk) are left out."""
    runs: list[tuple[int, int, list[int]]] = []
    acked: dict[int, set[int]] = {}
    for change in changes:
        pk = found.get(change.subscription)
        if pk is None:
            continue
        if change.deadline_us is None:
            acked.setdefault(pk, set()).update(change.event_pks)
        elif runs and runs[-1][:2] == (pk, change.deadline_us):
            runs[-1][2].extend(change.event_pks)
        else:
            runs.append((pk, change.deadline_us, list(change.event_pks)))
    deadlines = [(pk, when, chunk) for pk, when, ids in runs for chunk in _chunks(ids)]
    acks = [(pk, chunk) for pk, ids in acked.items() for chunk in _chunks(sorted(ids))]
    return deadlines, acks


def _chunks(event_pks: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(event_pks), IDS_PER_STATEMENT):
        yield event_pks[start : start + IDS_PER_STATEMENT]


def _change_leases_sqlite(
    names: Sequence[str], changes: Sequence[LeaseChange], conn: sqlite3.Connection
) -> dict[str, int]:
    """`change_leases` on the appender's connection, in its transaction."""
    found = dict(
        conn.execute(
            f"SELECT name, pk FROM subscriptions WHERE name IN ({_marks(len(names))})", names
        ).fetchall()
    )
    deadlines, acked = _lease_statements(changes, found)
    for pk, deadline_us, chunk in deadlines:
        conn.execute(
            "UPDATE subscription_leases SET deadline = ? WHERE subscription_pk = ? "
            f"AND event_pk IN ({_marks(len(chunk))})",
            [deadline_us, pk, *chunk],
        )
    for pk, chunk in acked:
        conn.execute(
            "DELETE FROM subscription_leases WHERE subscription_pk = ? "
            f"AND event_pk IN ({_marks(len(chunk))})",
            [pk, *chunk],
        )
    return found


def _marks(count: int) -> str:
    return ",".join("?" * count)


def _subscription(row: Any) -> Subscription:
    return Subscription(
        name=row.name,
        topic=row.topic,
        ack_deadline_seconds=row.ack_deadline_seconds,
        push_endpoint=row.push_endpoint,
        push_secret=row.push_secret,
        dead_letter_topic=row.dead_letter_topic,
        max_delivery_attempts=row.max_delivery_attempts,
    )


def _delivered(row: Any, attempt: int) -> Delivered:
    return Delivered(
        event_pk=row.pk,
        topic=row.topic,
        data=bytes(row.data),
        attributes=dict(row.attributes),
        publish_time=row.publish_time,
        attempt=attempt,
        xid=row.xid,
    )


def _horizon() -> ColumnElement[int]:
    """PostgreSQL: the id of the oldest transaction in flight; every event of an older one is
    final (committed or rolled back)."""
    xmin = func.pg_snapshot_xmin(func.pg_current_snapshot())
    return cast(cast(xmin, Text), BigInteger)
