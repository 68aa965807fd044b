"""Failed authentication slowed per client address: the core (`Backoff`, sans-IO: it is told
the time) and the authenticator every adapter calls through (`Throttled`).

An address may fail `free` times (a credential that is not valid; a call without any guesses
nothing and is not counted); each failure after that shuts it out for twice as long as
the one before (`base`, `2 * base`, ... up to `cap` seconds). While shut out, its calls are
refused before their token is looked at, valid or not, so a guesser learns nothing from the
answers it gets meanwhile (REST: 429 with Retry-After; gRPC: RESOURCE_EXHAUSTED). A success
forgets the address's failures, and so does `forget` seconds without one. Other addresses are
never touched: a storm from one leaves every other caller served as before.

IPv6 addresses count by their /64 (one host holds a whole /64 and may pick any of it); memory
is bounded by `max_addresses`, forgetting the address whose last failure is oldest first.

Which address a call comes from is what the adapter says (`client_address` around the call):
the TCP peer, or the client a PROXY protocol header or a trusted proxy's X-Forwarded-For names.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ironcore import logs
from ironcore.access.callers import TokenAuthenticator
from ironcore.access.roles import Caller
from ironcore.errors import ResourceExhausted, Unauthenticated

log = logging.getLogger(__name__)
_throttled = logs.RateLimited(log, 60.0)

# The client address of the call being authenticated, set by its adapter (`client_address`);
# empty when the adapter knows none, which is then never slowed.
_client: contextvars.ContextVar[str] = contextvars.ContextVar("client_address", default="")


def client_address(address: str) -> None:
    """Say which client address the calls authenticated from here on in this task (an ASGI
    request's, a gRPC call's) come from."""
    _client.set(address)


def current_client_address() -> str:
    """The client address its adapter said this task's call comes from ("" if none)."""
    return _client.get()


def grpc_peer_address(peer: str) -> str:
    """The address of a gRPC peer string (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`); "" for
    one that names none (`unix:...`)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return ""


@dataclass
class _Record:
    failures: int
    last: float
    until: float


class Backoff:
    """Failures per client address, and how long each must wait before it is heard again."""

    def __init__(
        self,
        free: int = 5,
        base: float = 1.0,
        cap: float = 60.0,
        forget: float = 600.0,
        max_addresses: int = 10_000,
    ) -> None:
        if free < 0 or base <= 0 or cap < base or forget <= 0 or max_addresses < 1:
            raise ValueError("free >= 0, 0 < base <= cap, forget > 0 and max_addresses >= 1")
        self.free = free
        self.base = base
        self.cap = cap
        self.forget = forget
        self.max_addresses = max_addresses
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def wait(self, address: str, now: float) -> float:
        """Seconds `address` must still wait before a call of its is heard; 0 if none."""
        record = self._record(address, now)
        return max(0.0, record.until - now) if record is not None else 0.0

    def failed(self, address: str, now: float) -> float:
        """Record a failed authentication from `address`; the seconds it must now wait."""
        key = _key(address)
        record = self._record(address, now)
        if record is None:
            record = _Record(0, now, now)
        self._records.pop(key, None)
        record.failures += 1
        record.last = now
        beyond = record.failures - self.free
        if beyond > 0:
            # 2 ** beyond overflows a float long before a storm ends: stop doubling at the cap.
            doublings = min(beyond - 1, math.ceil(math.log2(self.cap / self.base)))
            record.until = now + min(self.cap, self.base * 2**doublings)
        self._records[key] = record
        while len(self._records) > self.max_addresses:
            self._records.popitem(last=False)
        return max(0.0, record.until - now)

    def succeeded(self, address: str) -> None:
        """A valid credential from `address`: its failures are forgotten."""
        self._records.pop(_key(address), None)

    def failures(self, address: str, now: float) -> int:
        """Failures in a row from `address` not yet forgotten."""
        record = self._record(address, now)
        return record.failures if record is not None else 0

    def _record(self, address: str, now: float) -> _Record | None:
        key = _key(address)
        record = self._records.get(key)
        if record is not None and now - record.last > self.forget and now >= record.until:
            del self._records[key]
            return None
        return record


def _key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Throttled:
    """An authenticator that slows failures per client address (`Backoff`): a call from an
    address that must wait is refused (ResourceExhausted, with the seconds to wait) before its
    credential is looked at; a failed one counts against its address; a valid one clears it."""

    def __init__(
        self,
        inner: TokenAuthenticator,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.backoff = backoff or Backoff()
        self.clock = clock

    async def caller(self, authorization: str) -> Caller:
        address = _client.get()
        if not address or not authorization.strip():
            # No credential is no guess: it learns nothing, so it costs nothing.
            return await self.inner.caller(authorization)
        now = self.clock()
        wait = self.backoff.wait(address, now)
        if wait > 0:
            raise Slowed(wait)
        try:
            caller = await self.inner.caller(authorization)
        except Unauthenticated:
            wait = self.backoff.failed(address, now)
            if wait > 0:
                _throttled.warning(
                    f"storm {_key(address)}",
                    "failed authentications from %s: %d in a row; its calls are refused for %.0f s",
                    address,
                    self.backoff.failures(address, now),
                    wait,
                )
            raise
        self.backoff.succeeded(address)
        return caller

    def forget(self) -> None:
        """What the inner authenticator cached is forgotten (a token was revoked)."""
        self.inner.forget()

    async def invalidated(self) -> None:
        """A credential was revoked or changed: `TokenAuthenticator.invalidated`."""
        await self.inner.invalidated()


class Slowed(ResourceExhausted):
    """A call refused because its address must still wait `retry_after` seconds."""

    def __init__(self, wait: float) -> None:
        self.retry_after = math.ceil(wait)
        super().__init__(
            f"Too many failed authentications from this address; retry in {self.retry_after} s"
        )
