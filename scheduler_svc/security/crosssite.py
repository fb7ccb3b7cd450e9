"""Cross-site defences: no web page in a browser on this machine may drive the service.

Two rules, checked by one ASGI middleware (CrossSiteGuard) inside the auth middleware:

- Request bodies are JSON, in every auth mode: a Content-Type other than
  `application/json` or another `…+json` type is a 415, and so is a body without one. A
  browser sends a cross-site request without asking first (CORS's "simple" request) only
  with text/plain, urlencoded or multipart bodies, so no page can create or change a job.
  An empty body without a Content-Type passes: `curl -X POST …/pause` sends nothing more.
- In open mode (served without credentials, as tenant `default`), only loopback Host
  names and SCHEDULER_ALLOWED_HOSTS are answered: a page whose own name is re-pointed at
  127.0.0.1 (DNS rebinding) sends its own name as Host and gets a 421. And a request
  that may change something (POST, PUT, PATCH, DELETE) from a page of another origin is a
  403: a body-less `fetch(…/trigger, {method: "POST", mode: "no-cors"})` needs no CORS
  preflight either, but a browser always sends its page's Origin with it. (Reads need no
  such check: without CORS headers no other origin's page can read the answer.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from scheduler_svc.config import normal_host
from scheduler_svc.errors import (
    CrossOriginRequest,
    MisdirectedRequest,
    SchedulerError,
    UnsupportedMediaType,
)
from scheduler_svc.security.auth import is_loopback
from scheduler_svc.security.middleware import answer_in_route, is_console, is_exempt
from scheduler_svc.security.principals import Principal

# Methods whose request may carry a body.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = "localhost, 127.0.0.1, [::1]"
# A media type (RFC 6838's characters) naming JSON.
_JSON_TYPE = re.compile(rb"application/json|[a-z0-9][\w!#$&^.+-]*/[a-z0-9][\w!#$&^.+-]*\+json")
# A Host header: a name or an IPv6 address in brackets, then an optional port (RFC 3986
# allows an empty one).
_HOST = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(?::[0-9]*)?")


def is_json(content_type: bytes) -> bool:
    """Whether a Content-Type names JSON: application/json or any <type>/<x>+json, with any
    parameters (`; charset=utf-8`). None of them is a type a browser sends cross-site
    without asking first."""
    essence = content_type.partition(b";")[0].strip().lower()
    return _JSON_TYPE.fullmatch(essence) is not None


def host_name(header: str) -> str | None:
    """The host name of a Host header, its port dropped, in normal_host's form; None if
    the header is malformed."""
    match = _HOST.fullmatch(header.strip())
    return normal_host(match.group(1)) if match and match.group(1) else None


def host_allowed(name: str, allowed: Iterable[str]) -> bool:
    """Whether an open service answers for `name` (normal_host's form): a loopback name or
    address, or one of `allowed`, where "*.example.com" admits any name under example.com."""
    if is_loopback(name):
        return True
    for entry in allowed:
        if name == entry or (entry.startswith("*.") and name.endswith(entry[1:])):
            return True
    return False


class CrossSiteGuard:
    """ASGI middleware, innermost: 421 for a foreign Host in open mode, then 415 for a body
    that is not JSON. Answered in place as problem documents (auth.answer_in_route), after
    the 401 and 403 of ScopeGuard, so an unauthenticated caller learns nothing new.

    Plain ASGI rather than Litestar's AllowedHostsConfig, which compares the whole header,
    port included (so "[::1]:3000" cannot be written as a rule), answers a bare 400 that is
    no problem document, and is fixed when the app is built, while open mode is decided per
    request: creating the first API key closes it at once, and then any Host is served.
    The open principal of AuthMiddleware says which, without another query.

    Routes that need no principal (health, readiness, metrics, docs) answer any Host, in
    every mode: they hold no tenant's data, load balancers and Kubernetes probes send a
    Host of their own, and an open service listens on loopback only anyway.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and not is_exempt(scope) and not is_console(scope):
            refusal = self.refusal(scope)
            if refusal is not None:
                await answer_in_route(scope, receive, send, refusal)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> SchedulerError | None:
        """421 for a foreign Host in open mode, 415 for a body that is not JSON; else None."""
        principal = scope.get("user")
        is_open = isinstance(principal, Principal) and principal.kind == "open"
        if is_open:
            refusal = self._host_refusal(scope)
            if refusal is not None:
                return refusal
        if scope.get("method") not in BODY_METHODS:
            return None
        return _body_refusal(scope) or (self._origin_refusal(scope) if is_open else None)

    def _origin_refusal(self, scope: Scope) -> CrossOriginRequest | None:
        origins = [v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"]
        if not origins:
            return None  # not from a browser's page (curl, clients, same-origin GET forms)
        if len(origins) == 1:
            parts = urlsplit(origins[0].strip())
            name = host_name(parts.netloc) if parts.scheme in ("http", "https") else None
            if name is not None and host_allowed(name, self.allowed_hosts):
                return None
        return CrossOriginRequest(
            f"without API keys this service takes changes only from pages of its own "
            f"loopback origins and SCHEDULER_ALLOWED_HOSTS, not from {origins[0][:100]!r}"
        )

    def _host_refusal(self, scope: Scope) -> MisdirectedRequest | None:
        hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
        if not hosts and scope.get("http_version") == "1.0":
            return None  # HTTP/1.0 has no Host to send; no browser speaks it
        if len(hosts) == 1:
            name = host_name(hosts[0])
            if name is not None and host_allowed(name, self.allowed_hosts):
                return None
        shown = repr(hosts[0][:100]) if len(hosts) == 1 else f"{len(hosts)} Host headers"
        # 421 rather than 403: the request is fine but was sent to a name this service
        # does not answer for (it says nothing of the caller's rights, and brings no
        # WWW-Authenticate to confuse with a missing key).
        return MisdirectedRequest(
            f"without API keys this service answers only loopback host names ({LOOPBACK_NAMES}) "
            f"and SCHEDULER_ALLOWED_HOSTS, not {shown}: use one of those, or create an API key"
        )


def _body_refusal(scope: Scope) -> UnsupportedMediaType | None:
    content_types = []
    has_body = False
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_types.append(value)
        elif name == b"content-length":
            has_body = has_body or value.strip() != b"0"
        elif name == b"transfer-encoding":
            has_body = True
    if content_types:
        bad = next((t for t in content_types if not is_json(t)), None)
        if bad is None:
            return None
        shown = bad.decode("latin-1")[:100]
        return UnsupportedMediaType(
            f"request bodies must be JSON (Content-Type: application/json), not {shown!r}"
        )
    if has_body:
        return UnsupportedMediaType(
            "a request body needs Content-Type: application/json; send none, or no body"
        )
    return None
