"""Which process or server serves each connected device, and since when.

A holder is an origin id (`cluster.messages`): this process, one of this server's MQTT workers,
or another server. One device has one holder at most; a device connecting somewhere else takes
it over, and the caller tells the holder it displaced to close its connection. Between servers
the newer connection wins: a claim is turned down when the device is held since later.

The directory is plain data, read and changed by `cluster.hub.ClusterHub` only; it knows
nothing of connections or transports.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    holder: str
    since: float  # when the device connected, on the holder's clock


class Directory:
    def __init__(self) -> None:
        self._entries: dict[int, Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, num_id: object) -> bool:
        return num_id in self._entries

    def __iter__(self) -> Iterator[int]:
        return iter(self._entries)

    def get(self, num_id: int) -> Entry | None:
        return self._entries.get(num_id)

    def newer_than(self, num_id: int, since: float) -> bool:
        """Whether the device is held since later than `since`: a claim from then loses."""
        entry = self._entries.get(num_id)
        return entry is not None and entry.since > since

    def take(self, num_id: int, holder: str, since: float) -> Entry | None:
        """`holder` serves the device from `since` on; the entry it replaces, if any."""
        previous = self._entries.get(num_id)
        self._entries[num_id] = Entry(holder, since)
        return previous

    def release(self, num_id: int, holder: str) -> bool:
        """The device left `holder`: forgotten if `holder` still held it (not if it moved)."""
        entry = self._entries.get(num_id)
        if entry is None or entry.holder != holder:
            return False
        del self._entries[num_id]
        return True

    def held_by(self, holders: Container[str]) -> list[tuple[int, Entry]]:
        """The devices held by any of `holders`, with their entries."""
        return [(num_id, e) for num_id, e in self._entries.items() if e.holder in holders]

    def drop_holder(self, holder: str) -> list[int]:
        """`holder` is gone (a worker that exited, a server whose lease expired): the devices
        it held, now held by nobody."""
        gone = [num_id for num_id, entry in self._entries.items() if entry.holder == holder]
        for num_id in gone:
            del self._entries[num_id]
        return gone
