"""The HTTP servers of a primary (the admin API, the HTTP device bridge): uvicorn, with the
deadlines and the connection cap uvicorn lacks.

uvicorn closes a kept-alive connection that stays idle (`timeout_keep_alive`), but nothing
else: a client that connects and sends nothing, or half a request head, or a body a byte at a
time, holds its connection (a file descriptor) for ever, and enough of them leave the process
none for the database, the MQTT bridge or the next API call. An ASGI middleware cannot help:
it runs once the head is complete. So the protocol itself (`GuardedHttp`, over uvicorn's
httptools protocol) keeps the time:

- the head of a request must be complete `header_timeout` seconds after the connection opened
  (or the previous response went out);
- its body must keep coming: no pause longer than `body_timeout`, and on average at least
  `body_min_rate` bytes a second after a grace of `body_timeout` (time the server is not
  reading, its buffer full, does not count);
- a listener holds at most `max_connections`. At the cap, the connection that has waited
  longest on its client (head or body still to come, or idle between requests) is closed to
  make room; when every connection is the server's to answer, the new one gets a 503.

Every connection closed or refused this way is counted in `ironcore_connections_refused_total`
and logged, at most once per ten seconds per listener and reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ironcore import logs, metrics

log = logging.getLogger("ironcore.http")
_throttled = logs.RateLimited(log)
_FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 52\r\n"
    b"retry-after: 1\r\nconnection: close\r\n\r\n"
    b"ironcore: too many connections on this port; retry\r\n"
)


@dataclass(frozen=True)
class Limits:
    max_connections: int
    header_timeout: float
    body_timeout: float
    body_min_rate: int


@dataclass
class Guard:
    """What the connections of one listener share: its limits, its name in metrics and logs,
    and the connections waiting on their clients, longest waiting first."""

    name: str
    limits: Limits
    waiting: dict[GuardedHttp, None] = field(default_factory=dict)

    def refused(self, reason: str, peer: object) -> None:
        metrics.REFUSED.labels(self.name, reason).inc()
        _throttled.warning(
            f"{self.name} {reason}",
            "%s: closed or refused a connection from %s (%s); limits: %d connections, "
            "head within %gs, body at %d B/s after %gs",
            self.name,
            peer,
            reason,
            self.limits.max_connections,
            self.limits.header_timeout,
            self.limits.body_min_rate,
            self.limits.body_timeout,
        )


# What a connection waits for: the client's head, the client's body, or the server's answer.
_HEAD, _BODY, _ANSWER = range(3)


class GuardedHttp(HttpToolsProtocol):
    def __init__(self, *args: Any, guard: Guard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self._refused = False
        self._timer: asyncio.TimerHandle | None = None
        self._phase = _HEAD
        self._since = 0.0
        self._last = 0.0
        self._body = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        guard = self.guard
        if len(self.connections) >= guard.limits.max_connections:
            oldest = next(iter(guard.waiting), None)
            if oldest is None:
                self._refused = True
                guard.refused("full", transport.get_extra_info("peername"))
                transport.write(_FULL)
                transport.close()
                return
            oldest._drop("evicted")
        super().connection_made(transport)
        self._wait_for_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm()
        self.guard.waiting.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._phase = _BODY
        self._since = self._last = self.loop.time()
        self._body = 0
        self._arm(self._since + self.guard.limits.body_timeout)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._body += len(body)
        self._last = self.loop.time()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = _ANSWER
        self._disarm()
        self.guard.waiting.pop(self, None)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._phase == _ANSWER:
            self._wait_for_head()

    def shutdown(self) -> None:
        # A connection waiting for a head has nothing in flight. Closed, a TLS one would wait
        # for its client's close_notify, which an idle pooled client never sends, and hold the
        # drain until the head timeout: cut it instead.
        if self._phase == _HEAD and not self._refused:
            self._disarm()
            self.guard.waiting.pop(self, None)
            self.transport.abort()
            return
        super().shutdown()

    def _wait_for_head(self) -> None:
        self._phase = _HEAD
        self.guard.waiting[self] = None
        self._arm(self.loop.time() + self.guard.limits.header_timeout)

    def _expired(self) -> None:
        self._timer = None
        now = self.loop.time()
        limits = self.guard.limits
        if self._phase == _HEAD:
            self._drop("header_timeout")
        elif self._phase == _BODY:
            if self.flow.read_paused:
                # The server is not reading (the app has not taken what came): not the
                # client's time.
                self._since = self._last = now
                self._body = 0
                self._arm(now + limits.body_timeout)
                return
            deadline = min(
                self._last + limits.body_timeout,
                self._since + limits.body_timeout + self._body / limits.body_min_rate,
            )
            if now < deadline:
                self._arm(deadline)
            else:
                self._drop("body_timeout")

    def _drop(self, reason: str) -> None:
        self.guard.refused(reason, self.client)
        self._disarm()
        self.guard.waiting.pop(self, None)
        self.transport.abort()

    def _arm(self, when: float) -> None:
        self._disarm()
        self._timer = self.loop.call_at(when, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Server(uvicorn.Server):
    """A uvicorn server that leaves signals to the primary, which stops every adapter at once."""

    def __init__(self, config: uvicorn.Config, name: str) -> None:
        super().__init__(config)
        self.name = name

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def stop(self) -> None:
        self.should_exit = True

    @property
    def tls(self) -> bool:
        return self.config.ssl_certfile is not None

    def reload_tls(self, cert: Path, key: Path) -> None:
        """New connections get `cert` and `key` (SIGHUP); ones open keep what they had. Before
        `serve` loaded the config, the files it will load are replaced instead."""
        self.config.ssl_certfile, self.config.ssl_keyfile = str(cert), str(key)
        if self.config.loaded and self.config.ssl is not None:
            self.config.ssl.load_cert_chain(cert, key)


def http_server(
    app: Any,
    host: str,
    port: int,
    name: str,
    limits: Limits,
    idle_timeout: int,
    drain: int,
    tls: tuple[Path, Path] | None = None,
    trusted_proxies: tuple[str, ...] = (),
) -> Server:
    """A guarded uvicorn server for `app` on `host:port`, named `name` in metrics and logs,
    which closes kept-alive connections idle for `idle_timeout` seconds and gives requests in
    flight `drain` seconds when stopped; over TLS with `tls` (certificate chain, key).

    A request from one of `trusted_proxies` (`access.forwarded`) has the client its
    X-Forwarded-For names, and the scheme its X-Forwarded-Proto says; any other, its peer.
    uvicorn's own ProxyHeadersMiddleware does it: from 0.31 it takes the rightmost hop that is
    not a trusted proxy, so a client cannot choose its address by sending the header itself.
    Without trusted proxies it is not installed at all, so that uvicorn's default (trust
    127.0.0.1, or FORWARDED_ALLOW_IPS from the environment) trusts nobody here."""
    protocol = partial(GuardedHttp, guard=Guard(name, limits))
    return Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            http=cast(type[asyncio.Protocol], protocol),
            log_config=None,
            access_log=False,
            timeout_keep_alive=idle_timeout,
            timeout_graceful_shutdown=drain,
            server_header=False,
            proxy_headers=bool(trusted_proxies),
            forwarded_allow_ips=list(trusted_proxies),
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
        ),
        name,
    )
