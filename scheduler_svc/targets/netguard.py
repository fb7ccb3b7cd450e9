"""Which webhook URLs the service may call: http(s) only, and no private addresses by default.

One judge, `host_problem`, at creation and at call time: it reads a host the way the
HTTP client and the resolver will (`normal_host`: percent-escapes decoded, IDNA, lower
case, no trailing dot) and, when that is an address in any spelling the resolver takes
(`host_address`: decimal, octal, hex, short IPv4, IPv6 with an IPv4 inside), judges the
address; of names it refuses only those that always mean this machine. `url_problem`
applies it at creation (no DNS) and again before every call. At call time
`resolve_public` applies it, then resolves a name and refuses it if any address is
private. `GuardedResolver` is the connection-level form of the call-time check: it
resolves and vets, and the connection goes to exactly the vetted addresses, so a name
that re-resolves to a private address between check and connect (DNS rebinding) gets
nowhere. `webhook_http.webhook_client` connects through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

import aiohttp.abc
import yarl

# Host names that always mean this machine or a cloud metadata service.
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "metadata.google.internal"})

# IPv6 prefixes that carry an IPv4 address in their last 32 bits (RFC 6052 NAT64), and the
# local-use NAT64 prefix (RFC 8215), which only ever leads into a private network.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
# IPv4-compatible addresses (RFC 4291, deprecated): the IPv4 address in the last 32 bits.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# What an IPv4 address can be written with for inet_aton: decimal, octal (0177), hex (0x7f),
# one to four parts. Whitespace is left out: glibc's inet_aton stops at it, getaddrinfo does not.
_IPV4_SPELLING = re.compile(r"[0-9a-fx.]+", re.ASCII)

_REFUSED = "which is refused (SCHEDULER_WEBHOOK_ALLOW_PRIVATE)"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Resolves (host, port) to IP address strings, raising OSError when it cannot."""


class RefusedAddress(Exception):
    """The host resolves to an address webhooks may not reach."""


def is_private_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for loopback, private, link-local (cloud metadata), multicast and reserved ranges.

    An IPv6 address that embeds an IPv4 one (mapped, compatible, NAT64, 6to4) is judged
    by the IPv4 address it leads to.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL or address.is_site_local:
            return True
        if address in _NAT64 or address in _IPV4_COMPATIBLE:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        elif address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address.sixtofour is not None:
            address = address.sixtofour
    return not address.is_global or address.is_multicast


def normal_host(host: str) -> str:
    """`host` spelled one way: as the resolver reads what the HTTP client sends it.

    Brackets and percent-escapes go (yarl keeps escapes; a WHATWG parser decodes them),
    non-ASCII is IDNA-encoded with UTS 46 mapping as yarl encodes it (full-width digits
    and ideographic full stops become 127.0.0.1, a circled `ⓛocalhost` is localhost),
    then lower case and no trailing dots (`LocalHost.` is localhost).
    """
    host = unquote(host.strip("[]"))
    if not host.isascii():
        # A name IDNA cannot encode is judged as written.
        with contextlib.suppress(ValueError, UnicodeError):
            host = yarl.URL.build(host=host).raw_host or host
    return host.lower().rstrip(".")


def host_address(host: str) -> Address | None:
    """The IP address `host` means, in any spelling the resolver takes; None for a name.

    IPv4 is read as inet_aton reads it, which ipaddress does not: decimal `2130706433`,
    octal `0177.0.0.1`, hex `0x7f000001`, short `127.1`.
    """
    return _address_of(normal_host(host))


def _address_of(host: str) -> Address | None:
    """host_address of a host already normal."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    if not _IPV4_SPELLING.fullmatch(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def host_problem(host: str) -> str | None:
    """Why a webhook may not call `host`, judged without DNS; None if nothing is known.

    An address in any spelling is judged by the address it means; a name is refused only
    when it always means this machine (localhost, *.localhost) or a metadata service.
    Other names are resolved and judged at call time.
    """
    return _judge(host)[1]


def _judge(host: str) -> tuple[Address | None, str | None]:
    """The address `host` means (None for a name) and host_problem's answer."""
    name = normal_host(host)
    address = _address_of(name)
    if address is None:
        if name in _LOCAL_NAMES or name.endswith(".localhost"):
            return None, f"points at a local address, {_REFUSED}"
        return None, None
    if is_private_address(address):
        return address, f"points at a private, loopback or link-local address, {_REFUSED}"
    return address, None


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why `url` may not be a webhook target, or None if its form and host are fine.

    The URL is parsed by yarl, as the HTTP client parses it, and its host judged by
    `host_problem`: no DNS. Names are resolved and checked at call time.
    """
    try:
        parsed = yarl.URL(url)
        host, user, password = parsed.raw_host, parsed.raw_user, parsed.raw_password
        parsed.port  # noqa: B018 - raises ValueError for a bad port
    except (ValueError, TypeError, UnicodeError) as exc:
        return f"is not a valid URL ({exc})"
    if parsed.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if not host:
        return "must name a host"
    if user is not None or password is not None:
        return "must not carry credentials; put them in a header instead"
    if allow_private:
        return None
    return host_problem(host)


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for a TCP connection to host:port, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve_public(host: str, port: int, *, resolver: Resolver | None = None) -> list[str]:
    """The addresses of `host`, every one of them public.

    `host_problem` judges the host first; an address (in any spelling) is not resolved.
    Raises RefusedAddress if any address is loopback, private, link-local or metadata
    (one bad address is enough: the connection could land on it), and OSError when the
    name does not resolve.
    """
    address, problem = _judge(host)
    if problem is not None:
        raise RefusedAddress(f"{host} {problem}")
    if address is not None:
        # An address, in whatever spelling: nothing to resolve, and connect to it as written.
        return [str(address)]
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
