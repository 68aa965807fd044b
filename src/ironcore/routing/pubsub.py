"""The embedded Pub/Sub service: Cloud Pub/Sub's v1 resources and rules over the event log.

Topics and subscriptions keep Pub/Sub's names (`projects/{p}/topics/{t}`,
`projects/{p}/subscriptions/{s}`) and JSON shapes, so consumers written for Pub/Sub's REST API
read ironcore's events with a changed endpoint. Delivery is at least once: a pulled message
comes back after its ack deadline unless it was acknowledged.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from prometheus_client import Counter

from ironcore import limits
from ironcore.errors import FailedPrecondition, InvalidArgument, NotFound
from ironcore.registry.names import is_valid_project
from ironcore.registry.store.pubsub import (
    Delivered,
    LeaseChange,
    PubSubStore,
    Subscription,
    Topic,
)
from ironcore.registry.store.schema import from_us
from ironcore.registry.wire import format_timestamp
from ironcore.routing.leases import LeaseWriter
from ironcore.routing.nats import JetStreamSink
from ironcore.routing.sealing import Sealer, is_sealed

# Pub/Sub's bounds on the ack deadline, in seconds.
ACK_DEADLINE_MIN, ACK_DEADLINE_MAX, ACK_DEADLINE_DEFAULT = 10, 600, 10
MAX_PULL_MESSAGES = 1000
MAX_PUBLISH_MESSAGES = 1000
BACKENDS = ("embedded", "nats")
# Pulls of every kind (REST, gRPC Pull, StreamingPull): messages handed out, acks received.
MESSAGES = Counter(
    "ironcore_pubsub_messages_total",
    "Pub/Sub messages delivered by pulls (REST, gRPC Pull, StreamingPull) and acks received",
    ["event"],
)
_DELIVERED, _ACKED = MESSAGES.labels("delivered"), MESSAGES.labels("acked")


def topic_name(project: str, topic: str) -> str:
    _check(project, topic, "topic")
    return f"projects/{project}/topics/{topic}"


def subscription_name(project: str, subscription: str) -> str:
    _check(project, subscription, "subscription")
    return f"projects/{project}/subscriptions/{subscription}"


def parse_topic(name: str, field: str) -> str:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != "topics":
        raise InvalidArgument.field(
            field, f"{name[:100]!r} is not projects/{{project}}/topics/{{topic}}"
        )
    return topic_name(parts[1], parts[3])


def parse_subscription(name: str, field: str) -> str:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != "subscriptions":
        raise InvalidArgument.field(
            field, f"{name[:100]!r} is not projects/{{project}}/subscriptions/{{subscription}}"
        )
    return subscription_name(parts[1], parts[3])


def _check(project: str, resource: str, kind: str) -> None:
    # Pub/Sub's ids follow the same rule as registry and device ids.
    if not is_valid_project(project):
        raise InvalidArgument.field("name", f"invalid project id {project[:60]!r}")
    if not limits.is_valid_id(resource):
        raise InvalidArgument.field(
            "name",
            f"invalid {kind} id {resource[:60]!r}: 3-255 of [a-zA-Z0-9-._~%+], from a letter",
        )


class PubSub:
    def __init__(
        self,
        store: PubSubStore,
        clock: Callable[[], float] = time.time,
        nats: JetStreamSink | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        """`sealer` seals push subscriptions' signing secrets in the database (a server's
        always does); without one they are stored in clear."""
        self.store = store
        self.clock = clock
        self.nats = nats
        self.sealer = sealer
        # Acknowledgements and deadline changes, committed together as they come.
        self.leases = LeaseWriter(store)

    def _now_us(self) -> int:
        return int(self.clock() * 1_000_000)

    async def create_topic(self, name: str, backend: str = "embedded") -> Topic:
        if backend not in BACKENDS:
            raise InvalidArgument.field("backend", f"must be one of {', '.join(BACKENDS)}")
        if backend == "nats":
            if self.nats is None:
                raise FailedPrecondition("NATS-backed topics need ironcore started with --nats-url")
            await self.nats.ensure_stream(name)
        return await self.store.create_topic(name, backend, self._now_us())

    async def ensure_topics(self, names: Sequence[str]) -> None:
        for name in names:
            await self.store.ensure_topic(
                parse_topic(name, "pubsub_topic_name"), "embedded", self._now_us()
            )

    async def get_topic(self, name: str) -> Topic:
        topic = await self.store.get_topic(name)
        if topic is None:
            raise NotFound(f"Topic {name} not found")
        return topic

    async def list_topics(self, project: str) -> list[Topic]:
        return await self.store.list_topics(f"projects/{project}/topics/")

    async def delete_topic(self, name: str) -> None:
        await self.store.delete_topic(name)

    async def publish(
        self, name: str, messages: Sequence[tuple[bytes, dict[str, str]]]
    ) -> list[str]:
        if not messages:
            raise InvalidArgument.field("messages", "at least one message is required")
        if len(messages) > MAX_PUBLISH_MESSAGES:
            raise InvalidArgument.field("messages", f"at most {MAX_PUBLISH_MESSAGES} per request")
        await self.get_topic(name)
        ids = await self.store.publish(name, messages, self._now_us())
        return [str(i) for i in ids]

    async def create_subscription(
        self,
        name: str,
        topic: str,
        ack_deadline_seconds: int = 0,
        push_endpoint: str = "",
        dead_letter_topic: str = "",
        max_delivery_attempts: int = 0,
    ) -> Subscription:
        topic = parse_topic(topic, "topic")
        if (await self.get_topic(topic)).backend != "embedded":
            raise FailedPrecondition(
                f"Topic {topic} is backed by NATS JetStream; consume it with a JetStream consumer"
            )
        deadline = ack_deadline_seconds or ACK_DEADLINE_DEFAULT
        if not ACK_DEADLINE_MIN <= deadline <= ACK_DEADLINE_MAX:
            raise InvalidArgument.field(
                "ack_deadline_seconds", f"must be between {ACK_DEADLINE_MIN} and {ACK_DEADLINE_MAX}"
            )
        if push_endpoint and not re.match(r"https?://[^/\s]+", push_endpoint):
            raise InvalidArgument.field("push_config.push_endpoint", "must be an http(s) URL")
        if dead_letter_topic:
            dead_letter_topic = parse_topic(
                dead_letter_topic, "dead_letter_policy.dead_letter_topic"
            )
            await self.get_topic(dead_letter_topic)
            max_delivery_attempts = max_delivery_attempts or 5
            if not 5 <= max_delivery_attempts <= 100:
                raise InvalidArgument.field(
                    "dead_letter_policy.max_delivery_attempts", "must be between 5 and 100"
                )
        elif max_delivery_attempts:
            raise InvalidArgument.field(
                "dead_letter_policy.dead_letter_topic", "is required with max_delivery_attempts"
            )
        subscription = Subscription(
            name=name,
            topic=topic,
            ack_deadline_seconds=deadline,
            push_endpoint=push_endpoint,
            # The webhook's HMAC key: generated here, shown once at creation (see routing.push).
            push_secret=secrets.token_urlsafe(32) if push_endpoint else "",
            dead_letter_topic=dead_letter_topic,
            max_delivery_attempts=max_delivery_attempts,
        )
        stored = subscription
        if self.sealer is not None and subscription.push_secret:
            stored = replace(subscription, push_secret=self.sealer.seal(subscription.push_secret))
        await self.store.create_subscription(stored, self._now_us())
        return subscription

    def push_secret(self, subscription: Subscription) -> str:
        """A push subscription's signing secret in clear, as read from the database."""
        if self.sealer is None:
            return subscription.push_secret
        return self.sealer.open(subscription.push_secret)

    async def seal_push_secrets(self) -> int:
        """Seal the signing secrets stored in clear (by a server before sealing existed);
        returns how many."""
        if self.sealer is None:
            return 0
        sealed = 0
        for subscription in await self.store.list_subscriptions(""):
            if subscription.push_secret and not is_sealed(subscription.push_secret):
                value = self.sealer.seal(subscription.push_secret)
                if await self.store.replace_push_secret(
                    subscription.name, subscription.push_secret, value
                ):
                    sealed += 1
        return sealed

    async def get_subscription(self, name: str) -> Subscription:
        subscription = await self.store.get_subscription(name)
        if subscription is None:
            raise NotFound(f"Subscription {name} not found")
        return subscription

    async def list_subscriptions(self, project: str) -> list[Subscription]:
        return await self.store.list_subscriptions(f"projects/{project}/subscriptions/")

    async def delete_subscription(self, name: str) -> None:
        await self.store.delete_subscription(name)

    async def pull(
        self, name: str, max_messages: int, ack_deadline_seconds: int = 0
    ) -> list[Delivered]:
        """Lease up to `max_messages` for `ack_deadline_seconds` (0: the subscription's)."""
        if not 1 <= max_messages <= MAX_PULL_MESSAGES:
            raise InvalidArgument.field(
                "max_messages", f"must be between 1 and {MAX_PULL_MESSAGES}"
            )
        delivered = await self.store.pull(name, max_messages, self._now_us(), ack_deadline_seconds)
        _DELIVERED.inc(len(delivered))
        return delivered

    async def acknowledge(self, name: str, ack_ids: Sequence[str]) -> None:
        await self.leases.change(LeaseChange(name, _event_ids(ack_ids), None))
        _ACKED.inc(len(ack_ids))

    async def modify_ack_deadline(self, name: str, ack_ids: Sequence[str], seconds: int) -> None:
        if not 0 <= seconds <= ACK_DEADLINE_MAX:
            raise InvalidArgument.field(
                "ack_deadline_seconds", f"must be between 0 and {ACK_DEADLINE_MAX}"
            )
        deadline = self._now_us() + seconds * 1_000_000
        await self.leases.change(LeaseChange(name, _event_ids(ack_ids), deadline))


def _event_ids(ack_ids: Sequence[str]) -> list[int]:
    if not ack_ids:
        raise InvalidArgument.field("ack_ids", "at least one ack id is required")
    out = []
    for ack_id in ack_ids:
        if not ack_id.isdigit() or len(ack_id) > 20:
            raise InvalidArgument.field(
                "ack_ids", f"{ack_id[:40]!r} is not an ack id this server issued"
            )
        out.append(int(ack_id))
    return out


def message_wire(message: Delivered) -> dict[str, Any]:
    """A PubsubMessage as Pub/Sub's REST API writes it."""
    out: dict[str, Any] = {
        "data": base64.b64encode(message.data).decode(),
        "messageId": str(message.event_pk),
        "publishTime": format_timestamp(from_us(message.publish_time)),
    }
    if message.attributes:
        out["attributes"] = message.attributes
    return out


def subscription_wire(subscription: Subscription) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": subscription.name,
        "topic": subscription.topic,
        "ackDeadlineSeconds": subscription.ack_deadline_seconds,
        "pushConfig": {"pushEndpoint": subscription.push_endpoint}
        if subscription.push_endpoint
        else {},
    }
    if subscription.dead_letter_topic:
        out["deadLetterPolicy"] = {
            "deadLetterTopic": subscription.dead_letter_topic,
            "maxDeliveryAttempts": subscription.max_delivery_attempts,
        }
    return out
