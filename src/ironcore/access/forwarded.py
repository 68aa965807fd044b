"""Which client a call comes from when load balancers stand between: the proxies trusted to
say so (`--trusted-proxies`), and the client they name.

A proxy that is trusted names the client in an `X-Forwarded-For` list (HTTP, gRPC metadata) or
a PROXY protocol header (MQTT). Every proxy appends the address it was reached from to the list
it received, so only the end of the list is known to be true: the client may have sent any
beginning it likes. The client is therefore the rightmost address that is not itself a trusted
proxy (when every address is, the leftmost: the call came from a trusted proxy's own host),
the rule uvicorn's ProxyHeadersMiddleware (0.31 and later) applies to the HTTP listeners, which
the gRPC API applies here. A call whose peer is not trusted keeps its peer, whatever it sent.

Nobody is trusted unless configured: a header believed from a peer that is not a proxy lets
that peer choose the address it is slowed and audited under.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted_proxies(text: str) -> tuple[str, ...]:
    """`--trusted-proxies`: addresses and CIDR networks separated by commas, normalized
    (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7` is `192.0.2.7/32`); ValueError naming the
    first that is neither. Empty: nobody."""
    found: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item, strict=True)
        except ValueError as error:
            raise ValueError(
                f"{item!r} is not an IP address or a CIDR network ({error}); give addresses "
                "and networks such as 10.0.0.5,10.1.0.0/16,2001:db8::/32, separated by commas"
            ) from None
        found.append(str(network))
    return tuple(dict.fromkeys(found))


class TrustedProxies:
    """The proxies (addresses and networks, as `parse_trusted_proxies` gives them) whose word
    on the client's address is taken."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def client(self, peer: str, forwarded_for: Iterable[str]) -> str:
        """The client of a call from `peer` carrying these `X-Forwarded-For` values (each a
        comma-separated list, in the order they came): `peer` unless it is a trusted proxy,
        else the rightmost hop that is not (an empty one: `peer`). A hop that is not an
        address (`unknown`) is the client as much as any: the proxy after it says so."""
        if peer not in self:
            return peer
        hops = [_host(hop.strip()) for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            if hop not in self:
                return hop or peer
        return hops[0] if hops else peer


def _host(hop: str) -> str:
    """The address of an X-Forwarded-For hop without the port some proxies add
    (`[2001:db8::1]:443`, `192.0.2.1:80`); anything else as it is."""
    if hop.startswith("[") and "]" in hop:
        host, _, rest = hop[1:].partition("]")
        return host if not rest or rest.startswith(":") else hop
    if hop.count(":") == 1:
        return hop.partition(":")[0]
    return hop
