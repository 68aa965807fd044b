"""A NATS JetStream sink: topics whose events go to a JetStream stream instead of the
embedded log.

A topic `projects/{p}/topics/{t}` publishes to the subject `ironcore.{p}.{t}` (dots in ids are
escaped, since a dot separates subject tokens) in a stream of its own, with the Cloud IoT Core
attributes as message headers. An event is acknowledged to the device only after JetStream's
publish acknowledgement, i.e. after the stream has stored it.
"""

from __future__ import annotations

import hashlib
import logging

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError

from ironcore.errors import Unavailable

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT_SECONDS = 5.0


def _token(value: str) -> str:
    return value.replace("%", "%25").replace(".", "%2E")


def subject(topic: str) -> str:
    """`projects/p/topics/t` → `ironcore.p.t`."""
    _, project, _, topic_id = topic.split("/")
    return f"ironcore.{_token(project)}.{_token(topic_id)}"


def stream_name(topic: str) -> str:
    # Stream names allow fewer characters than topic ids; a digest keeps them unique and valid.
    return "ironcore-" + hashlib.sha256(topic.encode()).hexdigest()[:20]


class JetStreamSink:
    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Client | None = None
        self._js: JetStreamContext | None = None

    async def start(self) -> None:
        self._client = await nats.connect(self.url, name="ironcore", max_reconnect_attempts=-1)
        self._js = self._client.jetstream()
        log.info("connected to NATS at %s", self.url)

    async def ensure_stream(self, topic: str) -> None:
        js = self._context()
        try:
            await js.add_stream(
                name=stream_name(topic), subjects=[subject(topic)], description=topic
            )
        except BadRequestError as error:
            # Already there with this configuration: JetStream answers "stream name already in use".
            if "already in use" not in str(error.description):
                raise Unavailable(
                    f"JetStream refused the stream for {topic}: {error.description}"
                ) from None
        except NatsError as error:
            raise Unavailable(f"JetStream is unavailable: {error}") from None

    async def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> None:
        """Return once JetStream has stored the message; Unavailable if it did not."""
        js = self._context()
        try:
            await js.publish(
                subject(topic), data, timeout=PUBLISH_TIMEOUT_SECONDS, headers=attributes
            )
        except NatsError as error:
            raise Unavailable(f"JetStream did not store the event: {error}") from None

    def _context(self) -> JetStreamContext:
        if self._js is None:
            raise Unavailable("NATS is not connected")
        return self._js

    async def close(self) -> None:
        if self._client is not None:
            await self._client.drain()
