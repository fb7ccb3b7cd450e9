"""Which webhook URLs the service may call: http(s) only, and no private addresses by default.

Two checks: `url_problem` at job creation (form and literal host, no DNS), and at call
time `resolve_public`, which resolves the host and refuses it if any address is
private. `GuardedResolver` is the connection-level form of the call-time check: it
resolves and vets, and the connection goes to exactly the vetted addresses, so a name
that re-resolves to a private address between check and connect (DNS rebinding) gets
nowhere. `webhook_http.webhook_client` connects through it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp.abc

# Host names that always mean this machine or a cloud metadata service.
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "metadata.google.internal"})

# IPv6 prefixes that carry an IPv4 address in their last 32 bits (RFC 6052 NAT64), and the
# local-use NAT64 prefix (RFC 8215), which only ever leads into a private network.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")

_REFUSED = "which is refused (SCHEDULER_WEBHOOK_ALLOW_PRIVATE)"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Resolves (host, port) to IP address strings, raising OSError when it cannot."""


class RefusedAddress(Exception):
    """The host resolves to an address webhooks may not reach."""


def is_private_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for loopback, private, link-local (cloud metadata), multicast and reserved ranges.

    An IPv6 address that embeds an IPv4 one (mapped, NAT64, 6to4) is judged by the
    IPv4 address it leads to.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return True
        if address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        elif address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address.sixtofour is not None:
            address = address.sixtofour
    return not address.is_global or address.is_multicast


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why `url` may not be a webhook target, or None if its form and literal host are fine.

    Host names are resolved and checked again at call time; this check catches what
    can be known without DNS.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials; put them in a header instead"
    if allow_private:
        return None
    host = parts.hostname.rstrip(".").lower()
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        return "points at a local address, which is refused (SCHEDULER_WEBHOOK_ALLOW_PRIVATE)"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if is_private_address(address):
        return (
            "points at a private, loopback or link-local address, which is refused "
            "(SCHEDULER_WEBHOOK_ALLOW_PRIVATE)"
        )
    return None


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for a TCP connection to host:port, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve_public(host: str, port: int, *, resolver: Resolver | None = None) -> list[str]:
    """The addresses of `host`, every one of them public.

    Raises RefusedAddress if any address is loopback, private, link-local or metadata
    (one bad address is enough: the connection could land on it), and OSError when the
    name does not resolve.
    """
    addresses = await (resolver or system_resolve)(host, port)
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"{host} has no addresses")
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise RefusedAddress(f"{host} resolves to something that is not an address") from None
        if is_private_address(address):
            # The address itself stays out of the message: it would map internal DNS for a tenant.
            raise RefusedAddress(
                f"{host} resolves to a private, loopback or link-local address, {_REFUSED}"
            )
    return addresses


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's resolver for webhook connections: public addresses only, vetted as given.

    Each new connection resolves its host once through `resolve_public`, which refuses
    it (RefusedAddress) if any address is private; aiohttp then connects to exactly
    the addresses returned here, never resolving again. TLS still verifies the
    certificate against the host name, which aiohttp gives as the server name.
    """

    def __init__(self, resolver: Resolver | None = None) -> None:
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        """The vetted addresses of `host`, in the resolver's order."""
        addresses = await resolve_public(host, port, resolver=self._resolver)
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in addresses
        ]

    async def close(self) -> None:
        """Nothing to release."""
