"""Prometheus metrics of the device bridges (served on the admin API's /metrics)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

CONNECTED = Gauge(
    "ironcore_mqtt_connected_devices", "Devices connected over MQTT (incl. via gateways)"
)
CONNECTIONS = Gauge("ironcore_mqtt_connections", "Open MQTT network connections")
CONNECTS = Counter("ironcore_mqtt_connects_total", "MQTT CONNECTs by result", ["result"])
AUTH_FAILURES = Counter(
    "ironcore_device_auth_failures_total", "Refused device authentications", ["bridge", "reason"]
)
MESSAGES_IN = Counter("ironcore_mqtt_messages_in_total", "PUBLISHes from devices", ["kind"])
MESSAGES_OUT = Counter("ironcore_mqtt_messages_out_total", "PUBLISHes to devices", ["kind"])
PUBACK_LATENCY = Histogram(
    "ironcore_mqtt_puback_seconds",
    "From a QoS 1 PUBLISH to its PUBACK, including the durable append; one observation per "
    "acknowledgement write, of the oldest PUBLISH it acknowledges",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
CONFIG_ACKS = Counter("ironcore_mqtt_config_acks_total", "Config versions acknowledged by devices")
WRITE_PAUSED = Gauge(
    "ironcore_mqtt_write_paused_connections",
    "MQTT connections holding back what they send: the device does not read it (the "
    "transport's buffer is past its high-water mark)",
)
DISCONNECTS = Counter("ironcore_mqtt_disconnects_total", "MQTT disconnects by reason", ["reason"])


# Several processes (`--mqtt-workers`): each worker sends its own figures, the primary adds them
# to its own on /metrics. A family is (name, type, help, samples); a sample (name, labels,
# value). Counters' `_created` timestamps are not added up: the primary's own stand.
Snapshot = list[list[Any]]


def snapshot() -> Snapshot:
    """This process's ironcore metrics, as data."""
    return [
        [
            family.name,
            family.type,
            family.documentation,
            [
                [sample.name, sample.labels, sample.value]
                for sample in family.samples
                if not sample.name.endswith("_created")
            ],
        ]
        for family in REGISTRY.collect()
        if family.name.startswith("ironcore_")
    ]


class Merged:
    """The process's registry with the workers' snapshots added in, for `generate_latest`."""

    def __init__(self, snapshots: list[Snapshot]) -> None:
        self.snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        added: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        described: dict[str, tuple[str, str]] = {}
        for families in self.snapshots:
            for name, kind, documentation, samples in families:
                described.setdefault(name, (kind, documentation))
                sums = added.setdefault(name, {})
                for sample_name, labels, value in samples:
                    key = (sample_name, tuple(sorted(labels.items())))
                    sums[key] = sums.get(key, 0.0) + value
        for family in REGISTRY.collect():
            sums = added.pop(family.name, {})
            if not sums:
                yield family
                continue
            merged = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                merged.add_sample(sample.name, sample.labels, sample.value + sums.pop(key, 0.0))
            for (sample_name, labels), value in sums.items():
                merged.add_sample(sample_name, dict(labels), value)
            yield merged
        for name, sums in added.items():
            kind, documentation = described[name]
            merged = Metric(name, documentation, kind)
            for (sample_name, labels), value in sums.items():
                merged.add_sample(sample_name, dict(labels), value)
            yield merged
