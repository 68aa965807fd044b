"""What every process of an ironcore server sets up the same way: its event loop and the
garbage collector's tuning."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from contextlib import suppress


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
