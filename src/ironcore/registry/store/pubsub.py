"""SQL of the embedded Pub/Sub: topics, subscriptions, and at-least-once delivery by leases.

A subscription is a cursor into the event log plus the leases of messages handed out and not
yet acknowledged. A pull first hands out leases whose deadline passed (redelivery), then new
events after the cursor; an acknowledgement deletes leases. Nothing is copied per subscription
when an event is appended, so a topic with many subscriptions costs no more to publish to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ironcore.errors import AlreadyExists, NotFound
from ironcore.registry.store.database import Database
from ironcore.registry.store.schema import events, subscription_leases, subscriptions, topics


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
class Delivered:
    event_pk: int
    topic: str
    data: bytes
    attributes: dict[str, str]
    publish_time: int
    attempt: int


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

    # Subscriptions

    async def create_subscription(self, subscription: Subscription, now_us: int) -> None:
        """Create a subscription that receives what is published from now on."""
        async with self.db.write() as conn:
            last = await conn.scalar(select(func.max(events.c.pk)))
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
                        cursor=last or 0,
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

    async def delete_subscription(self, name: str) -> None:
        async with self.db.write() as conn:
            pk = await conn.scalar(select(subscriptions.c.pk).where(subscriptions.c.name == name))
            if pk is None:
                raise NotFound(f"Subscription {name} not found")
            await conn.execute(
                delete(subscription_leases).where(subscription_leases.c.subscription_pk == pk)
            )
            await conn.execute(delete(subscriptions).where(subscriptions.c.pk == pk))

    # Delivery

    async def pull(self, name: str, max_messages: int, now_us: int) -> list[Delivered]:
        """Lease up to `max_messages`: expired leases first, then new events.

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
            deadline = now_us + sub.ack_deadline_seconds * 1_000_000
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
                fresh = (
                    (
                        await conn.execute(
                            select(events.c.pk)
                            .where(events.c.topic == sub.topic, events.c.pk > sub.cursor)
                            .order_by(events.c.pk)
                            .limit(room)
                        )
                    )
                    .scalars()
                    .all()
                )
                if fresh:
                    await conn.execute(
                        insert(subscription_leases),
                        [
                            {
                                "subscription_pk": sub.pk,
                                "event_pk": pk,
                                "deadline": deadline,
                                "attempts": 1,
                            }
                            for pk in fresh
                        ],
                    )
                    await conn.execute(
                        update(subscriptions)
                        .where(subscriptions.c.pk == sub.pk)
                        .values(cursor=fresh[-1])
                    )
                    attempts.update(dict.fromkeys(fresh, 1))
            if not attempts:
                return []
            rows = await conn.execute(
                select(events).where(events.c.pk.in_(list(attempts))).order_by(events.c.pk)
            )
            delivered = [_delivered(row, attempts[row.pk]) for row in rows]
            gone = set(attempts) - {d.event_pk for d in delivered}
            if gone:
                # Past retention: the events are deleted, so are their leases.
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
        async with self.db.write() as conn:
            pk = await conn.scalar(select(subscriptions.c.pk).where(subscriptions.c.name == name))
            if pk is None:
                raise NotFound(f"Subscription {name} not found")
            await conn.execute(
                delete(subscription_leases).where(
                    subscription_leases.c.subscription_pk == pk,
                    subscription_leases.c.event_pk.in_(list(event_pks)),
                )
            )

    async def modify_ack_deadline(
        self, name: str, event_pks: Sequence[int], deadline_us: int
    ) -> None:
        async with self.db.write() as conn:
            pk = await conn.scalar(select(subscriptions.c.pk).where(subscriptions.c.name == name))
            if pk is None:
                raise NotFound(f"Subscription {name} not found")
            await conn.execute(
                update(subscription_leases)
                .where(
                    subscription_leases.c.subscription_pk == pk,
                    subscription_leases.c.event_pk.in_(list(event_pks)),
                )
                .values(deadline=deadline_us)
            )

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

    async def read_after(self, topic: str, after: int, limit: int) -> list[Delivered]:
        """Events of a topic after `after` (for live tails, which keep no cursor)."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(events)
                .where(events.c.topic == topic, events.c.pk > after)
                .order_by(events.c.pk)
                .limit(limit)
            )
            return [_delivered(row, 1) for row in rows]

    async def last_event_pk(self) -> int:
        async with self.db.read() as conn:
            return int(await conn.scalar(select(func.max(events.c.pk))) or 0)

    async def expire(self, before_us: int) -> int:
        """Delete events published before `before_us` (retention); returns how many."""
        async with self.db.write() as conn:
            result = await conn.execute(delete(events).where(events.c.publish_time < before_us))
            return int(result.rowcount or 0)


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
    )
