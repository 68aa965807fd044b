"""The device channel's state rate, in process: one update per device per interval, a sooner
one waiting for its turn, a second waiting one refused. The bridges' end-to-end tests see the
same rule through their wires (test_http_bridge.py, test_mqtt_bridge.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from ironcore import limits
from ironcore.bridge.channel import StateTurns
from ironcore.errors import ResourceExhausted

INTERVAL = limits.STATE_UPDATE_INTERVAL_SECONDS


async def test_a_sooner_state_waits_for_its_turn() -> None:
    turns = StateTurns()
    await turns.take(1)
    first = time.monotonic()
    await turns.take(2)  # another device's turn is its own
    assert time.monotonic() - first < INTERVAL
    await turns.take(1)
    assert time.monotonic() - first >= INTERVAL


async def test_one_state_may_wait_per_device() -> None:
    turns = StateTurns()
    await turns.take(1)
    waiting = asyncio.ensure_future(turns.take(1))
    await asyncio.sleep(0)
    assert not waiting.done()
    with pytest.raises(ResourceExhausted, match="already waiting"):
        await turns.take(1)
    await turns.take(2)
    await waiting
    # Once its update went, the device's next one waits again rather than being refused.
    again = asyncio.ensure_future(turns.take(1))
    await asyncio.sleep(0)
    assert not again.done()
    await again


async def test_a_cancelled_wait_frees_the_turn() -> None:
    turns = StateTurns()
    await turns.take(1)
    waiting = asyncio.ensure_future(turns.take(1))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # The device is not left "waiting" for good: its next update waits, it is not refused.
    await turns.take(1)
