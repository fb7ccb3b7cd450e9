"""Which webhook URLs the service may call: http(s) only, and no private addresses by default."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

# Host names that always mean this machine or a cloud metadata service.
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "metadata.google.internal"})


def is_private_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for loopback, private, link-local (cloud metadata), multicast and reserved ranges."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
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
