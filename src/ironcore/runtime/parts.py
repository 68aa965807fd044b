"""The parts of a server process, built from its settings by constructor arguments, each after
what it needs:

    Storage     store ─► event log, JetStream sink
    DeviceSide  revoked signers ─► authenticator (+ context cache) ─► cluster hub ─► rotations
                (whose writes tell the hub) ─► device channel (router, bookkeeping)
    Services    Pub/Sub ─► device manager (tells the hub) ─► admin tokens, revocations (refresh
                the revoked signers, tell the hub), firmware

A primary builds all three; an MQTT worker the first two. `close` ends a process in the one
order that loses nothing.

There is no cycle left to wire after construction. The hub forgets cached contexts in the
authenticator, and the authenticator checks revoked signers, but what tells the hub of a
revocation (`Revocations`, over the hub) is a separate object from the snapshot the
authenticator checks (`RevokedSigners`, under it). The hub's transports and the hub do need
each other (a transport carries what the hub sends; the hub applies what the transport
receives): a transport is built first and given to the hub, and gets the hub's `receive` when
it is started (`Bus.start`, `ChannelTransport.open`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import make_url

from ironcore.access.tokens import AdminTokens
from ironcore.bridge.bookkeeping import Bookkeeper
from ironcore.bridge.channel import DeviceChannel
from ironcore.bridge.cluster.forgetting import ForgettingRotationStore
from ironcore.bridge.cluster.hub import ClusterHub
from ironcore.bridge.cluster.transport import Transport
from ironcore.bridge.devices import (
    CONTEXT_CACHE_SECONDS,
    CONTEXT_CACHE_SIZE,
    ContextCache,
    DeviceAuthenticator,
)
from ironcore.bridge.mqtt.server import Listener, MqttBridge
from ironcore.firmware.rollout import Firmware
from ironcore.registry.revocation import Revocations, RevokedSigners
from ironcore.registry.rotation import Rotations
from ironcore.registry.service import DeviceManager
from ironcore.registry.store import Store
from ironcore.registry.store.faults import storage_fault
from ironcore.registry.store.firmware import FirmwareStore
from ironcore.registry.store.pubsub import PubSubStore
from ironcore.routing.log import EventLog
from ironcore.routing.nats import JetStreamSink
from ironcore.routing.pubsub import PubSub
from ironcore.routing.router import Router
from ironcore.routing.sealing import Sealer
from ironcore.runtime.process import CannotStart
from ironcore.settings import Settings


@dataclass(frozen=True)
class Storage:
    """What a process writes through: its store connections, its event log (group commits of
    its own) and, with `--nats-url`, its JetStream sink (not yet started)."""

    store: Store
    events: EventLog
    sink: JetStreamSink | None

    @classmethod
    async def open(cls, settings: Settings) -> Storage:
        """CannotStart, naming the fault, when the database cannot be reached or written (a
        supervisor starts the process again; a traceback would only bury the reason)."""
        try:
            store = await Store.open(
                settings.effective_database_url, settings.database_schema or None
            )
        except Exception as error:
            fault = storage_fault(error)
            if fault is None:
                raise
            where = make_url(settings.effective_database_url).render_as_string(hide_password=True)
            raise CannotStart(f"the database cannot be used ({where}): {fault.message}") from None
        store.audit.limit_denials(settings.audit_denials_per_minute)
        sink = JetStreamSink(settings.nats_url) if settings.nats_url else None
        return cls(store, EventLog(store), sink)

    async def close(self) -> None:
        """The events still pending committed, then the connections let go of."""
        await self.events.close()
        if self.sink is not None:
            await self.sink.close()
        await self.store.close()


@dataclass(frozen=True)
class DeviceSide:
    """What the device bridges of a process share."""

    revoked: RevokedSigners
    authenticator: DeviceAuthenticator
    hub: ClusterHub
    rotations: Rotations
    channel: DeviceChannel


def device_side(storage: Storage, origin: str, transports: Sequence[Transport] = ()) -> DeviceSide:
    """The device side of process `origin` (a server id, or a worker id), whose hub reaches the
    other processes over `transports` (not yet started: give them `hub.receive`)."""
    store = storage.store
    revoked = RevokedSigners(store)
    # The cached device contexts are safe because every change in this process goes through
    # the hub (or the rotation store that tells it), which forgets them here first.
    authenticator = DeviceAuthenticator(
        store, revoked=revoked, cache=ContextCache(CONTEXT_CACHE_SIZE, CONTEXT_CACHE_SECONDS)
    )
    hub = ClusterHub(
        origin, authenticator, refresh_revocations=revoked.refresh, transports=transports
    )
    rotations = Rotations(ForgettingRotationStore(store, hub.forget_device))
    router = Router(storage.events, PubSubStore(store), storage.sink)
    channel = DeviceChannel(authenticator, router, Bookkeeper(store), rotations)
    return DeviceSide(revoked, authenticator, hub, rotations, channel)


@dataclass(frozen=True)
class Services:
    """The service and core layers of a primary, built once: what its adapters are given."""

    manager: DeviceManager
    tokens: AdminTokens
    pubsub: PubSub
    revocations: Revocations
    rotations: Rotations
    firmware: Firmware


def services(
    storage: Storage, devices: DeviceSide, firmware_directory: Path, sealer: Sealer | None = None
) -> Services:
    """A primary's services over its storage, telling its hub of every change; push
    subscriptions' signing secrets sealed by `sealer`."""
    store = storage.store
    pubsub = PubSub(PubSubStore(store), nats=storage.sink, sealer=sealer)
    manager = DeviceManager(store, links=devices.hub, topics=pubsub)
    return Services(
        manager=manager,
        tokens=AdminTokens(store, manager.clock),
        pubsub=pubsub,
        revocations=Revocations(store, devices.revoked, manager.clock, devices.hub),
        # The bridges' own: a rotation step taken over the API reaches every cache too.
        rotations=devices.rotations,
        firmware=Firmware(FirmwareStore(store), manager, firmware_directory),
    )


def listeners(settings: Settings) -> list[Listener]:
    """The MQTT bridge's listeners: its TLS ports, and the plaintext one if asked for; all of
    them behind a PROXY protocol balancer with --mqtt-proxy-protocol, which needs
    --trusted-proxies to say whose headers to believe (CannotStart without)."""
    proxied = settings.mqtt_proxy_protocol
    if proxied and not settings.trusted_proxies:
        raise CannotStart(
            "--mqtt-proxy-protocol needs --trusted-proxies naming the load balancers' addresses: "
            "a PROXY protocol header names the client, and is believed only from them"
        )
    found = [
        Listener(settings.mqtt_host, port, tls=True, proxy_protocol=proxied)
        for port in (settings.mqtt_port, settings.mqtt_second_port)
        if port
    ]
    if settings.insecure_mqtt_port:
        found.append(
            Listener(
                settings.mqtt_host, settings.insecure_mqtt_port, tls=False, proxy_protocol=proxied
            )
        )
    return found


async def close(bridge: MqttBridge | None, devices: DeviceSide | None, storage: Storage) -> None:
    """The end of a process: devices told goodbye, then their bookkeeping and last
    acknowledgements written, then the events still pending committed, then the connections
    let go of, in that order."""
    if bridge is not None:
        await bridge.stop()
    if devices is not None:
        await devices.channel.bookkeeper.close()
    await storage.close()
