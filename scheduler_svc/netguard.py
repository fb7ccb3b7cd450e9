"""Which webhook URLs the service may call: http(s) only, and no private addresses by default.

Two checks: `url_problem` at job creation (form and literal host, no DNS), and at call
time `resolve_public`, which resolves the host and refuses it if any address is
private. `GuardedBackend` is the connection-level form of the call-time check: it
resolves, vets and then connects to exactly the vetted addresses, so a name that
re-resolves to a private address between check and connect (DNS rebinding) gets
nowhere. `webhook_client` builds the httpx client that connects through it.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import httpcore
import httpx

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


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to public addresses it has just vetted.

    Each new connection resolves its host once, refuses it (RefusedAddress) if any
    address is private, and connects to those same addresses, never re-resolving; TLS
    still verifies the certificate against the host name, because httpcore starts TLS
    with the origin's host as server name.
    """

    def __init__(
        self,
        *,
        resolver: Resolver | None = None,
        connector: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._resolver = resolver
        self._connector = connector or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve and vet `host`, then connect to the first vetted address that answers."""
        try:
            async with asyncio.timeout(timeout):
                addresses = await resolve_public(host, port, resolver=self._resolver)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"DNS lookup of {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"DNS lookup of {host} failed: {exc}") from exc
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._connector.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # resolve_public never returns an empty list
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Refused: a webhook never goes to a local socket."""
        raise RefusedAddress("unix sockets are refused")

    async def sleep(self, seconds: float) -> None:
        """Sleep as the underlying backend does (httpcore's connect retries)."""
        await self._connector.sleep(seconds)


def guarded_transport(
    *,
    verify: ssl.SSLContext | bool = True,
    limits: httpx.Limits | None = None,
    resolver: Resolver | None = None,
    connector: httpcore.AsyncNetworkBackend | None = None,
) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every new connection goes through a GuardedBackend.

    Connections stay pooled by host name, so a kept-alive connection is only reused for
    the host whose certificate it verified.
    """
    limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
    transport = httpx.AsyncHTTPTransport(verify=verify, limits=limits, trust_env=False)
    # httpx has no public way to give its pool a network backend; its pool is replaced by
    # one built with the same settings. tests/test_targets.py fails if this stops working.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedBackend(resolver=resolver, connector=connector),
    )
    return transport


def webhook_client(
    *,
    allow_private: bool = False,
    max_connections: int = 100,
    verify: ssl.SSLContext | bool = True,
    resolver: Resolver | None = None,
    connector: httpcore.AsyncNetworkBackend | None = None,
) -> httpx.AsyncClient:
    """The httpx client for webhook calls: pinned to vetted addresses, no redirects, no cookies.

    Unless allow_private, every new connection goes through a GuardedBackend, which
    closes the DNS-rebinding window a check before the call leaves open. Proxy variables
    are ignored (through a proxy the address check would mean nothing), and cookies are
    never kept, so one tenant's receiver cannot set a cookie another tenant's call sends.
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    transport = (
        httpx.AsyncHTTPTransport(verify=verify, limits=limits, trust_env=False)
        if allow_private
        else guarded_transport(verify=verify, limits=limits, resolver=resolver, connector=connector)
    )
    no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(
        transport=transport, follow_redirects=False, trust_env=False, cookies=no_cookies
    )
