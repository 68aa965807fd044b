"""Simulated devices under fault: each publishes QoS 1 events with payloads of its own, one at a
time, listens for its config and commands, and reconnects whenever its connection breaks or is
refused; the test thread meanwhile stops, kills and starts servers. What was acknowledged is
then checked against the event log and a pull subscription created before the load; what the
devices received, against what was sent to them (`tests.ops.orders`).

The devices are the fleet simulator's (`ironcore.simulator.device`: one event loop, no thread
per device), run on an event loop in a thread of its own.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
import time
from collections import Counter
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

from ironcore.simulator.device import DeviceRefused, SimulatedDevice, Stats, connect
from tests.bridge.devices import PROJECT, client_id, create_device, make_jwt, new_key
from tests.conftest import Server, wait_for
from tests.keys import PrivateKey

# Per device: a device waits this long after each PUBACK (300 devices: ~600 events/s at most).
PAUSE_SECONDS = 0.5
# A device that gets no PUBACK this long treats its connection as broken.
PUBACK_SECONDS = 10.0
RECONNECT_SECONDS = 0.2


@dataclass(frozen=True)
class Seen:
    """The devices at one moment: which are connected, the command payloads they received, and
    the last config payload each received."""

    connected: set[str]
    commands: set[bytes]
    configs: dict[str, bytes]


@dataclass
class Load:
    host: str
    port: int
    ca_file: Path
    registry: str
    keys: dict[str, PrivateKey]
    acknowledged: set[bytes] = field(default_factory=set)
    # When each device last got a PUBACK (time.monotonic()).
    last_ack: dict[str, float] = field(default_factory=dict)
    connects: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    # The devices with a live connection (CONNACK 0 and not closed since).
    connected: set[str] = field(default_factory=set)
    # Command payloads the devices received, and the last config payload each received.
    commands: set[bytes] = field(default_factory=set)
    configs: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, SimulatedDevice] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=PUBACK_SECONDS + 10)
        assert not self._thread.is_alive(), "the simulated devices did not stop"

    def acked(self) -> set[bytes]:
        with self._lock:
            return set(self.acknowledged)

    def wait_all_acked_since(
        self, since: float, timeout: float = 30, but: Collection[str] = ()
    ) -> None:
        """Until every device (`but` those) got a PUBACK after `since`: each is connected
        somewhere again."""

        def behind() -> list[str]:
            with self._lock:
                return [d for d in self.keys if d not in but and self.last_ack.get(d, 0.0) <= since]

        wait_for(lambda: not behind(), timeout, what="every device to publish again")

    def wait_acked(self, count: int, timeout: float = 30) -> None:
        wait_for(lambda: len(self.acked()) >= count, timeout, what=f"{count} acknowledgements")

    async def _run(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        await asyncio.gather(*(self._device(d, k, context) for d, k in self.keys.items()))

    def seen(self) -> Seen:
        with self._lock:
            return Seen(set(self.connected), set(self.commands), dict(self.configs))

    def _config(self, device_id: str, payload: bytes) -> None:
        with self._lock:
            self.configs[device_id] = payload

    def _command(self, _topic: str, payload: bytes) -> None:
        with self._lock:
            self.commands.add(payload)

    def _gone(self, device_id: str, device: SimulatedDevice, _: object) -> None:
        with self._lock:
            if self._live.get(device_id) is device:
                del self._live[device_id]
                self.connected.discard(device_id)

    async def _device(self, device_id: str, key: PrivateKey, context: ssl.SSLContext) -> None:
        stats = Stats()
        sent = 0
        while not self._stopping.is_set():
            try:
                device = await asyncio.wait_for(
                    connect(
                        self.host,
                        self.port,
                        context,
                        client_id(self.registry, device_id),
                        device_id,
                        make_jwt(key),
                        stats,
                        on_config=partial(self._config, device_id),
                        on_command=self._command,
                    ),
                    PUBACK_SECONDS,
                )
            except (OSError, DeviceRefused, TimeoutError):
                # Refused (CONNACK 3 while a server stops, 5 once blocked), reset, or nobody
                # listening.
                self.refusals[device_id] += 1
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            self.connects[device_id] += 1
            closed = asyncio.ensure_future(device.wait_closed())
            with self._lock:
                self._live[device_id] = device
                self.connected.add(device_id)
            closed.add_done_callback(partial(self._gone, device_id, device))
            try:
                while not self._stopping.is_set() and not closed.done():
                    payload = f"{self.registry}/{device_id}/{sent}".encode()
                    sent += 1
                    await asyncio.wait_for(device.publish_event(payload), PUBACK_SECONDS)
                    with self._lock:
                        self.acknowledged.add(payload)
                        self.last_ack[device_id] = time.monotonic()
                    await asyncio.sleep(PAUSE_SECONDS)
            except (ConnectionError, TimeoutError):
                pass  # broken: connect again
            finally:
                device.close()


def create_devices(front: Server, registry: str, count: int) -> dict[str, PrivateKey]:
    keys = {f"load-{i}": new_key() for i in range(count)}
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda item: create_device(front, registry, *item), keys.items()))
    return keys


def subscribe(front: Server, name: str, topic: str = "events") -> None:
    response = httpx.put(
        f"{front.url}/v1/projects/{PROJECT}/subscriptions/{name}",
        json={"topic": f"projects/{PROJECT}/topics/{topic}"},
        headers={"Authorization": f"Bearer {front.token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def drain(front: Server, name: str) -> Counter[bytes]:
    """Pull and acknowledge everything the subscription holds: how often each payload came."""
    url = f"{front.url}/v1/projects/{PROJECT}/subscriptions/{name}"
    headers = {"Authorization": f"Bearer {front.token}"}
    delivered: Counter[bytes] = Counter()
    with httpx.Client(headers=headers, timeout=30) as api:
        while True:
            pulled = api.post(f"{url}:pull", json={"maxMessages": 1000, "returnImmediately": True})
            assert pulled.status_code == 200, pulled.text
            received = pulled.json().get("receivedMessages", [])
            if not received:
                return delivered
            delivered.update(base64.b64decode(m["message"]["data"]) for m in received)
            acked = api.post(f"{url}:acknowledge", json={"ackIds": [m["ackId"] for m in received]})
            assert acked.status_code == 200, acked.text


def check_durable(acked: set[bytes], logged: set[bytes], delivered: Counter[bytes]) -> None:
    """Every acknowledged event is in the log and was delivered once to the subscription."""
    missing = acked - logged
    assert not missing, (
        f"{len(missing)} acknowledged events are not in the log: {sorted(missing)[:5]}"
    )
    undelivered = acked - set(delivered)
    assert not undelivered, (
        f"{len(undelivered)} acknowledged events never reached the subscription: "
        f"{sorted(undelivered)[:5]}"
    )
    twice = {payload: n for payload, n in delivered.items() if n > 1}
    assert not twice, f"{len(twice)} events were delivered more than once: {list(twice)[:5]}"
    assert set(delivered) <= logged, "the subscription delivered events that are not in the log"
