"""What every process of an ironcore server sets up the same way: its event loop, the
garbage collector's tuning, its open-file limit and how many connections each of its
listeners may hold within it."""

from __future__ import annotations

import asyncio
import gc
import resource
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from ironcore.settings import Settings

# With no hard limit, the soft one is raised to this (Linux's default fs.nr_open).
UNLIMITED_OPEN_FILES = 1_048_576


class CannotStart(Exception):
    """Something the server needs is not there; the message says what. Exit status 1."""


def tune_gc() -> None:
    """Every event allocates a few short-lived objects (a row, a future, attributes) while the
    process holds many long-lived ones (connections, sessions, parsed keys). With the default
    thresholds, generation-0 collections keep walking that heap: moving what start-up made to
    the permanent generation and collecting less often measured +30-50 % QoS 1 events/s
    (docs/benchmarks.md, MQTT finding 1). Reference cycles are still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    with suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop
    return None


def raise_open_files() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (often 1,024 soft for 524,288 hard): every
    connection is a file descriptor. Returns the soft limit (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = UNLIMITED_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if wanted <= soft:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, wanted


@dataclass(frozen=True)
class Budget:
    """The connections a process's listeners may hold: each HTTP listener `http`, the MQTT
    listeners together `mqtt`. Derived, they add up to at most the open-file limit less the
    reserve, so that a flood on one listener leaves the others, the database and the bus
    their descriptors."""

    open_files: int
    reserve: int
    http_listeners: int
    http: int
    mqtt: int

    @classmethod
    def of(cls, settings: Settings, open_files: int, http_listeners: int) -> Budget:
        reserve = settings.open_files_reserve or max(64, open_files // 10)
        usable = max(open_files - reserve, 2 * (http_listeners + 1))
        http = settings.http_max_connections or usable // 10
        mqtt = settings.mqtt_max_connections or usable - http * http_listeners
        return cls(open_files, reserve, http_listeners, http, mqtt)

    @property
    def overcommitted(self) -> bool:
        """Whether the caps the operator set add up to more than the limit less the reserve."""
        return self.http * self.http_listeners + self.mqtt > self.open_files - self.reserve
