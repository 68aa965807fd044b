"""Which other servers are alive, as far as this one hears them over the bus.

Every server says `Heartbeat` (with its lease) a few times per lease; anything else it says
counts too. A server not heard for its lease is taken as gone, and the devices it held as not
connected: a server that was SIGKILLed, or cut off from NATS, never says that its devices left.
The lease is the sender's, so servers with different settings still judge each other right.

While this server's own connection to NATS is down it hears nobody, which says nothing of the
others: `renew_all` gives each a fresh lease once the connection is back, and the caller checks
`expired` only while connected.

A server taken as gone may only have been slow (its event loop stalled past its lease): when it
is heard again, `heard` says so, and the caller asks it what it holds.

Plain data on a caller's clock (monotonic seconds), like `directory.Directory`.
"""

from __future__ import annotations


class Leases:
    def __init__(self, default: float) -> None:
        """`default`: the lease of a server heard before its first heartbeat."""
        self.default = default
        self._until: dict[str, float] = {}
        self._lease: dict[str, float] = {}
        self._gone: set[str] = set()  # a few bytes per server that ever expired

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, origin: object) -> bool:
        return origin in self._until

    def heard(self, origin: str, now: float, lease: float | None = None) -> bool:
        """`origin` said something at `now`; `lease` if it said how long it may stay silent.
        True if it had been taken as gone."""
        back = origin in self._gone
        self._gone.discard(origin)
        if lease is not None:
            self._lease[origin] = lease
        self._until[origin] = now + self._lease.get(origin, self.default)
        return back

    def renew_all(self, now: float) -> None:
        for origin in self._until:
            self._until[origin] = now + self._lease.get(origin, self.default)

    def expired(self, now: float) -> list[str]:
        """The servers not heard for their lease, each said once."""
        gone = [origin for origin, until in self._until.items() if until < now]
        for origin in gone:
            del self._until[origin]
            self._lease.pop(origin, None)
            self._gone.add(origin)
        return gone
