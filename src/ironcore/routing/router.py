"""Routing rules: which topic an event or a state notification goes to, with which attributes.

A registry's `eventNotificationConfigs` decide: the first entry whose `subfolderMatches` equals
the event's subfolder exactly, else the first entry without `subfolderMatches`. The message
carries Cloud IoT Core's attributes, so consumers written for Pub/Sub read it unchanged.
"""

from __future__ import annotations

from ironcore.errors import FailedPrecondition
from ironcore.registry.names import RegistryName
from ironcore.registry.resources import Device, DeviceRegistry
from ironcore.routing.log import EventLog


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
    def __init__(self, log: EventLog) -> None:
        self.log = log

    async def publish_event(
        self,
        name: RegistryName,
        registry: DeviceRegistry,
        device: Device,
        subfolder: str,
        payload: bytes,
    ) -> None:
        """Return once the event is durably accepted; FailedPrecondition without a topic."""
        topic = event_topic(registry, subfolder)
        if not topic:
            raise FailedPrecondition(
                f"Registry {name} has no event notification config for "
                f"{'subfolder ' + repr(subfolder) if subfolder else 'events'}; "
                "telemetry cannot be published"
            )
        await self.log.append(topic, payload, attributes(name, device, subfolder))

    async def notify_state(
        self, name: RegistryName, registry: DeviceRegistry, device: Device, payload: bytes
    ) -> None:
        """State notifications are best effort: without a state topic there is nothing to do."""
        config = registry.state_notification_config
        if config is not None and config.pubsub_topic_name:
            await self.log.append(config.pubsub_topic_name, payload, attributes(name, device))
