"""Routing rules: which topic an event or a state notification goes to, with which attributes.

A registry's `eventNotificationConfigs` decide: the first entry whose `subfolderMatches` equals
the event's subfolder exactly, else the first entry without `subfolderMatches`. The message
carries Cloud IoT Core's attributes, so consumers written for Pub/Sub read it unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from ironcore.errors import FailedPrecondition, Unavailable
from ironcore.registry.names import RegistryName
from ironcore.registry.resources import Device, DeviceRegistry
from ironcore.registry.store.pubsub import PubSubStore
from ironcore.routing.log import EventLog
from ironcore.routing.nats import JetStreamSink

# A topic's backend is fixed when it is created; this only bounds how long a deleted and
# re-created topic keeps its old backend in other processes.
BACKEND_CACHE_SECONDS = 5.0


def event_topic(registry: DeviceRegistry, subfolder: str) -> str | None:
    fallback = None
    for config in registry.event_notification_configs:
        if config.subfolder_matches:
            if config.subfolder_matches == subfolder:
                return config.pubsub_topic_name
        elif fallback is None:
            fallback = config.pubsub_topic_name
    return fallback


def attributes(name: RegistryName, device: Device, subfolder: str = "") -> dict[str, str]:
    out = {
        "deviceId": device.id,
        "deviceNumId": str(device.num_id),
        "deviceRegistryId": name.registry,
        "deviceRegistryLocation": name.location.location,
        "projectId": name.project,
    }
    if subfolder:
        out["subFolder"] = subfolder
    return out


class Router:
    """Routes events and state notifications to their topic's backend: the embedded log, or a
    JetStream stream for topics created with backend "nats"."""

    def __init__(
        self,
        log: EventLog,
        topics: PubSubStore | None = None,
        nats: JetStreamSink | None = None,
    ) -> None:
        self.log = log
        self.topics = topics
        self.nats = nats
        self._backends: dict[str, tuple[str, float]] = {}
        self._loading: dict[str, asyncio.Future[str]] = {}

    async def _deliver(self, topic: str, data: bytes, attributes: dict[str, str]) -> None:
        if await self._backend(topic) == "nats":
            if self.nats is None:
                raise Unavailable(
                    f"Topic {topic} is backed by NATS, but ironcore has no --nats-url"
                )
            await self.nats.publish(topic, data, attributes)
        else:
            await self.log.append(topic, data, attributes)

    async def _backend(self, topic: str) -> str:
        cached = self._backends.get(topic)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        # One lookup per topic at a time: the events that arrive while it runs wait for it
        # instead of each querying the store (at thousands of events a second they piled up).
        loading = self._loading.get(topic)
        if loading is None:
            loading = asyncio.ensure_future(self._load_backend(topic))
            self._loading[topic] = loading
            loading.add_done_callback(lambda _: self._loading.pop(topic, None))
        return await asyncio.shield(loading)

    async def _load_backend(self, topic: str) -> str:
        found = await self.topics.get_topic(topic) if self.topics is not None else None
        backend = found.backend if found is not None else "embedded"
        self._backends[topic] = (backend, time.monotonic() + BACKEND_CACHE_SECONDS)
        return backend

    def submit_event(
        self,
        name: RegistryName,
        registry: DeviceRegistry,
        device: Device,
        subfolder: str,
        payload: bytes,
    ) -> Awaitable[object]:
        """Start publishing an event and return what to await for its durability (a future,
        without a task per event once the topic's backend is cached)."""
        topic = self._topic(name, registry, subfolder)
        attrs = attributes(name, device, subfolder)
        cached = self._backends.get(topic)
        if cached is not None and cached[1] > time.monotonic():
            if cached[0] == "embedded":
                return self.log.submit(topic, payload, attrs)
            if self.nats is not None:
                return self.nats.submit(topic, payload, attrs)
        return asyncio.ensure_future(self._deliver(topic, payload, attrs))

    async def publish_event(
        self,
        name: RegistryName,
        registry: DeviceRegistry,
        device: Device,
        subfolder: str,
        payload: bytes,
    ) -> None:
        """Return once the event is durably accepted; FailedPrecondition without a topic."""
        await self.submit_event(name, registry, device, subfolder, payload)

    @staticmethod
    def _topic(name: RegistryName, registry: DeviceRegistry, subfolder: str) -> str:
        topic = event_topic(registry, subfolder)
        if not topic:
            raise FailedPrecondition(
                f"Registry {name} has no event notification config for "
                f"{'subfolder ' + repr(subfolder) if subfolder else 'events'}; "
                "telemetry cannot be published"
            )
        return topic

    async def notify_state(
        self, name: RegistryName, registry: DeviceRegistry, device: Device, payload: bytes
    ) -> None:
        """State notifications are best effort: without a state topic there is nothing to do."""
        config = registry.state_notification_config
        if config is not None and config.pubsub_topic_name:
            await self._deliver(config.pubsub_topic_name, payload, attributes(name, device))
