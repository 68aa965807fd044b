"""Webhook delivery for push subscriptions, in Cloud Pub/Sub's push format.

Each message is POSTed as `{"message": {data, attributes, messageId, publishTime},
"subscription": name}` with an `X-Ironcore-Signature: sha256=<hex>` header, the HMAC-SHA256 of
the body under the subscription's signing secret, so the receiver can tell it came from
ironcore. A 2xx answer acknowledges the message; anything else (or no answer) leaves it leased
and it is tried again after an exponential backoff. After the subscription's
`maxDeliveryAttempts` it goes to the dead-letter topic (the pull path does that).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time

import httpx

from ironcore.logs import RateLimited
from ironcore.registry.store.pubsub import Delivered, Subscription
from ironcore.routing.pubsub import PubSub, message_wire

log = logging.getLogger(__name__)
# Failures repeat every round while the database (or an endpoint) is away.
failures = RateLimited(log)
SIGNATURE_HEADER = "X-Ironcore-Signature"
# Messages leased per subscription per round, and sent at once.
BATCH = 64
# How often the set of push subscriptions is read again, and how often idle ones are polled.
REFRESH_SECONDS = 5.0
POLL_SECONDS = 0.25
REQUEST_TIMEOUT_SECONDS = 10.0
# Backoff between attempts: 0.5 s, 1 s, 2 s, … up to a minute.
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 60.0


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff(attempt: int) -> float:
    return float(min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1)))


class PushDelivery:
    def __init__(self, pubsub: PubSub) -> None:
        self.pubsub = pubsub
        self._client = httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="push-delivery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._client.aclose()

    async def _run(self) -> None:
        subscriptions: list[Subscription] = []
        refreshed = 0.0
        while True:
            if time.monotonic() - refreshed > REFRESH_SECONDS:
                try:
                    subscriptions = [
                        s for s in await self.pubsub.store.list_subscriptions("") if s.push_endpoint
                    ]
                except Exception as error:  # the database is away; try again next round
                    failures.warning("list", "could not read push subscriptions: %s", error)
                refreshed = time.monotonic()
            busy = False
            for subscription in subscriptions:
                try:
                    busy |= await self.deliver_once(subscription)
                except Exception as error:  # one subscription's trouble must not stop the others
                    failures.warning(
                        subscription.name,
                        "push delivery for %s failed: %s",
                        subscription.name,
                        error,
                    )
            if not busy:
                await asyncio.sleep(POLL_SECONDS)

    async def deliver_once(self, subscription: Subscription) -> bool:
        """Lease a batch and POST it; True when there was anything to send."""
        messages = await self.pubsub.pull(subscription.name, BATCH)
        if not messages:
            return False
        results = await asyncio.gather(*(self._post(subscription, m) for m in messages))
        delivered = [str(m.event_pk) for m, ok in zip(messages, results, strict=True) if ok]
        if delivered:
            await self.pubsub.acknowledge(subscription.name, delivered)
        for message, ok in zip(messages, results, strict=True):
            if not ok:
                await self.pubsub.store.modify_ack_deadline(
                    subscription.name,
                    [message.event_pk],
                    int((self.pubsub.clock() + backoff(message.attempt)) * 1_000_000),
                )
        return True

    async def _post(self, subscription: Subscription, message: Delivered) -> bool:
        body = json.dumps(
            {"message": message_wire(message), "subscription": subscription.name}
        ).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self.pubsub.push_secret(subscription), body),
        }
        try:
            response = await self._client.post(
                subscription.push_endpoint, content=body, headers=headers
            )
        except httpx.HTTPError as error:
            log.info("push to %s failed: %s", subscription.push_endpoint, error)
            return False
        if 200 <= response.status_code < 300:
            return True
        log.info("push to %s answered %d", subscription.push_endpoint, response.status_code)
        return False
