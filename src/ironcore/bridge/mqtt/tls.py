"""Server-side TLS for the MQTT bridge over a plain transport, with `ssl.MemoryBIO`.

Why not the event loop's own TLS (`create_server(ssl=...)`): both asyncio's and uvloop's
`SSLProtocol` give every connection a 256 KiB read buffer and a transport/protocol pair of their
own, and hand every connection to the application before it has proved anything. Measured here
with 2,000 idle devices, that is about 40 KB of a device's ~60 KB. A device connection is long
lived and quiet, so this layer keeps only what OpenSSL needs (its record buffers are released
while idle, `SSL_MODE_RELEASE_BUFFERS`, which CPython sets) and decrypts into one buffer shared
by every connection of the process, copying out only the bytes that arrived. The application
protocol is created only once the handshake has completed, so a scanner or a stalled handshake
costs no MQTT state.

`TlsConnection` is the protocol the event loop sees and the transport the application sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import cast

from ironcore.bridge.proxy_protocol import Address

log = logging.getLogger(__name__)
# A client that opens a socket and never finishes its handshake is dropped after this long.
HANDSHAKE_SECONDS = 30.0
# Decrypted bytes are read through one buffer per process: the event loop runs one callback at a
# time and every read is copied out before the next, so connections never see each other's data.
_READ_SIZE = 256 * 1024
_buffer = bytearray(_READ_SIZE)
_view = memoryview(_buffer)


class TlsConnection(asyncio.Protocol):
    def __init__(
        self,
        context: ssl.SSLContext,
        app_factory: Callable[[], asyncio.Protocol],
        peer: Address | None = None,
    ) -> None:
        """`peer`: the client's address when a load balancer's PROXY header named it (None: the
        socket's own peer)."""
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._app_factory = app_factory
        self._app: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timeout: asyncio.TimerHandle | None = None
        self._closing = False
        self._peer_address = peer

    # What the event loop calls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._timeout = asyncio.get_running_loop().call_later(
            HANDSHAKE_SECONDS, self._handshake_expired
        )

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if self._app is None and not self._handshake():
            return
        app = self._app
        assert app is not None
        try:
            while True:
                count = cast(int, self._ssl.read(_READ_SIZE, _buffer))
                if not count:  # the client's close_notify
                    self._send()
                    if not app.eof_received():
                        self.close()
                    return
                app.data_received(bytes(_view[:count]))
                if self._closing:
                    return
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self._send()
            if not app.eof_received():
                self.close()
            return
        except ssl.SSLError as error:
            log.debug("TLS error from %s: %s", self._peer(), error)
            self._send()
            self.abort()
            return
        # TLS 1.3 sends session tickets and key updates outside of application writes.
        self._send()

    def eof_received(self) -> bool:
        if self._app is not None:
            self._app.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        self._closing = True
        if self._app is not None:
            self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    def _handshake(self) -> bool:
        """Advance the handshake; True once it is complete and the application exists."""
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._send()
            return False
        except ssl.SSLError as error:
            # A failed handshake is the client's problem (or a scanner): it is told by the TLS
            # alert OpenSSL queued, and no MQTT state was ever created for it.
            log.debug("TLS handshake with %s failed: %s", self._peer(), error)
            self._send()
            self.abort()
            return False
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        self._send()
        self._app = self._app_factory()
        self._app.connection_made(cast(asyncio.Transport, self))
        return not self._closing

    def _handshake_expired(self) -> None:
        self._timeout = None
        if self._app is None:
            log.debug("TLS handshake with %s took too long", self._peer())
            self.abort()

    def _send(self) -> None:
        if self._outgoing.pending and self._transport is not None:
            self._transport.write(self._outgoing.read())

    def _peer(self) -> Address | None:
        return Address.of(self.get_extra_info("peername"))

    # What the application calls (the asyncio.Transport it uses)

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "peername" and self._peer_address is not None:
            return (self._peer_address.host, self._peer_address.port)
        return self._transport.get_extra_info(name, default) if self._transport else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        try:
            self._ssl.write(data)
        except ssl.SSLError as error:
            log.debug("TLS write to %s failed: %s", self._peer(), error)
            self.abort()
            return
        self._send()

    def is_closing(self) -> bool:
        return self._closing or self._transport is None or self._transport.is_closing()

    def close(self) -> None:
        """Send close_notify after what is queued, then close the socket."""
        if self._closing:
            return
        self._closing = True
        if self._app is not None:
            # Sends ours; the client's close_notify is not waited for.
            with contextlib.suppress(ssl.SSLError):
                self._ssl.unwrap()
            self._send()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def pause_reading(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()
