"""The PROXY protocol v2 header a load balancer puts before a connection's own bytes, sans-IO.

HAProxy's `send-proxy-v2` (and AWS NLB, nginx `proxy_protocol`, Envoy) open every connection to
a server with a binary header naming the client's real address, before anything the client
sent (for MQTT over TLS: before the TLS handshake). The format is HAProxy's
doc/proxy-protocol.txt, section 2.2:

    12 bytes  signature  0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
     1 byte   version (high nibble, 2) and command (low nibble: 0 LOCAL, 1 PROXY)
     1 byte   address family (high nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) and
              transport (low nibble: 0 UNSPEC, 1 STREAM, 2 DGRAM)
     2 bytes  length of what follows, network order
              addresses: INET 4+4+2+2, INET6 16+16+2+2 (source, destination, ports),
              then TLVs, which are skipped

A LOCAL header is the balancer's own connection (its health check): the socket's address stays
the peer's. So does a PROXY header with the UNSPEC family, as the specification asks.

Written here rather than taken from PyPI: `proxy-protocol` (0.11.3, April 2024, one
maintainer) reads the header from an asyncio `StreamReader` inside its own server callback,
which the MQTT bridge's plain `asyncio.Protocol` transports (bridge/mqtt/tls.py) cannot use, and
`pwho` has had no release since 2014. The v1 text format is refused with a message saying so:
the balancer configuration this project ships sends v2.

`parse` takes the bytes received so far and returns the header, None while more bytes are
needed, or raises `ProxyHeaderError` naming what is wrong, as early as the bytes show it.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_FIXED = struct.Struct("!12sBBH")
_INET = struct.Struct("!4s4sHH")
_INET6 = struct.Struct("!16s16sHH")
# The addresses of an INET6 header (36 bytes) and TLVs (ALPN, SNI, SSL details and unique ids
# that HAProxy adds only when asked) fit well below this; anything longer is refused unread.
MAX_LENGTH = 1024


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY protocol v2 header this bridge accepts; the message says why."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def of(cls, peername: object) -> Address | None:
        """A socket's peer, from what `get_extra_info("peername")` gave (None if not IP)."""
        if isinstance(peername, tuple) and len(peername) >= 2:
            return cls(str(peername[0]), int(peername[1]))
        return None


@dataclass(frozen=True)
class ProxyHeader:
    """`source` is the client's address (None: keep the socket's own, for a LOCAL or UNSPEC
    header); `length` is how many bytes the header took, the client's own bytes follow."""

    source: Address | None
    destination: Address | None
    length: int


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`, or None when `data` is a valid beginning of one."""
    prefix = data[: len(SIGNATURE)]
    if not SIGNATURE.startswith(prefix):
        if _V1_PREFIX.startswith(data[: len(_V1_PREFIX)]):
            if len(data) < len(_V1_PREFIX):
                return None
            raise ProxyHeaderError("a PROXY protocol v1 (text) header; only v2 is accepted")
        raise ProxyHeaderError(
            "no PROXY protocol v2 signature: the client spoke first "
            f"(first bytes {data[:8].hex(' ')})"
        )
    if len(data) < _FIXED.size:
        return None
    _, version_command, family_transport, length = _FIXED.unpack_from(data)
    version, command = version_command >> 4, version_command & 0x0F
    family, transport = family_transport >> 4, family_transport & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"PROXY protocol version {version}, not 2")
    if command not in (0, 1):
        raise ProxyHeaderError(f"unknown PROXY protocol command {command} (0 LOCAL, 1 PROXY)")
    if length > MAX_LENGTH:
        raise ProxyHeaderError(f"a PROXY protocol header of {length} bytes (at most {MAX_LENGTH})")
    if family > 3 or transport > 2:
        raise ProxyHeaderError(
            f"unknown address family {family} or transport {transport} in the PROXY header"
        )
    if len(data) < _FIXED.size + length:
        return None
    total = _FIXED.size + length
    if command == 0 or family == 0:
        return ProxyHeader(None, None, total)
    if family == 3 or transport != 1:
        kind = "a UNIX socket" if family == 3 else "not TCP"
        raise ProxyHeaderError(f"the PROXY header names {kind}; only TCP over IPv4/IPv6 is")
    layout = _INET if family == 1 else _INET6
    if length < layout.size:
        raise ProxyHeaderError(
            f"a PROXY header of {length} bytes cannot hold its {layout.size} bytes of addresses"
        )
    source, destination, source_port, destination_port = layout.unpack_from(data, _FIXED.size)
    ip = ipaddress.IPv4Address if family == 1 else ipaddress.IPv6Address
    return ProxyHeader(
        Address(str(ip(source)), source_port),
        Address(str(ip(destination)), destination_port),
        total,
    )
