"""The metrics every ironcore process shares: the HTTP request counters that both HTTP
adapters (the admin API and the HTTP device bridge) count into, the connections every listener
(HTTP and MQTT) refused, and the merge of the MQTT
worker processes' figures into the primary's /metrics.

The adapters' own metrics live with them (`bridge.metrics`); this module imports nothing of
ironcore, so neither adapter needs the other for its metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.metrics_core import Metric

REQUESTS = Counter(
    "ironcore_api_requests_total", "Admin and device HTTP requests", ["method", "code"]
)
LATENCY = Histogram(
    "ironcore_api_request_seconds",
    "Admin and device HTTP request latency",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

REFUSED = Counter(
    "ironcore_connections_refused_total",
    "Connections a listener refused or closed to keep the process serving, by reason: full (at "
    "the listener's connection cap), evicted (the connection longest waiting on its client, "
    "closed to make room for a new one), header_timeout, body_timeout",
    ["listener", "reason"],
)


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
