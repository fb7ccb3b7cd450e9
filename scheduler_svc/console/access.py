"""Who is looking at the console, and the defences of its pages.

- Open mode (no API key, loopback): the auth middleware has already given the request
  the open principal. As for the API, only loopback Host names and
  SCHEDULER_ALLOWED_HOSTS are answered then (a page re-pointed at 127.0.0.1 by DNS
  rebinding sends its own name).
- Otherwise a person signs in with an API key (`POST /ui/login`) and gets a session
  cookie: HttpOnly, SameSite=Strict, Path=/ui, with an expiry, signed with HMAC-SHA256
  under a key kept in the database (`console_keys`), so any replica verifies any other's
  cookies. The cookie names the key by its prefix, never holds it, and every request
  looks the key up again: revoking it ends its sessions. A JWT signs in too; its session
  ends when the token would have.
- A request with an `Authorization` header (a script, curl) acts as that header says.
- Every form carries a CSRF token equal to the `scheduler_csrf` cookie (SameSite=Strict,
  so no other site's page can send it), in open mode too: the console's forms post
  urlencoded bodies, which a foreign page could send without asking first, and this
  token is why the API's JSON-only rule (security/crosssite.py) does not apply to them.
  A change also needs an Origin, when the browser sends one, of this very host.
- Read-only principals see no write control, and their changes are refused (403).

ConsoleGuard, the ASGI middleware of the /ui router, applies all of it and adds the
security headers and a Server-Timing header to every answer.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import quote, urlsplit

from litestar.datastructures import Cookie
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send

from scheduler_svc import store
from scheduler_svc.console.render import error_page
from scheduler_svc.security.auth import TOUCH_AFTER_S
from scheduler_svc.security.crosssite import BODY_METHODS, host_allowed, host_name
from scheduler_svc.security.principals import ADMIN, READ, WRITE, Principal
from scheduler_svc.store.db import Pool

SESSION_COOKIE = "scheduler_session"
CSRF_COOKIE = "scheduler_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 12 * 3600
# Where ConsoleGuard leaves what it found, in the request's state.
VIEWER_STATE = "console_viewer"
CSRF_STATE = "console_csrf"  # the token this page's forms carry
CSRF_SENT_STATE = "console_csrf_sent"  # the CSRF cookie the request brought
# Pages anyone may see: the sign-in page and the assets it needs.
PUBLIC_PREFIXES = ("/ui/login", "/ui/static/")
# The service's own origin only: scripts and styles are files it serves, forms post to
# it, no page may frame it. No 'unsafe-inline': charts are SVG with classes, not styles.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
        b"object-src 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
)


@dataclass(frozen=True, slots=True)
class Viewer:
    """The person behind a console request: their principal, how they came, and the
    CSRF token their forms carry."""

    principal: Principal
    csrf: str
    signed_in: bool  # through the login form (so the page offers "Sign out")

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    @property
    def can_write(self) -> bool:
        return self.principal.allows(WRITE)

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.principal.scopes


class SessionKeys:
    """The key that signs session cookies, read from the database once per process."""

    def __init__(self) -> None:
        self._secret: bytes | None = None

    async def secret(self, pool: Pool) -> bytes:
        if self._secret is None:
            self._secret = await store.console_key_get(pool, secrets.token_bytes(32))
        return self._secret

    async def sign(self, pool: Pool, claims: dict[str, Any]) -> str:
        """A cookie value carrying `claims`: base64 JSON, then its HMAC."""
        # Unpadded base64: "=" would make the cookie's value a quoted string.
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        mac = hmac.new(await self.secret(pool), body.encode(), hashlib.sha256).digest()
        return f"{body}.{_b64(mac)}"

    async def verify(self, pool: Pool, value: str) -> dict[str, Any] | None:
        """The claims of a cookie value this service signed and that has not expired."""
        body, _, mac = value.partition(".")
        try:
            given = base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))
            expected = hmac.new(await self.secret(pool), body.encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(given, expected):
                return None
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, UnicodeError):
            return None
        if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int | float):
            return None
        return claims if claims["exp"] > time.time() else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def session_claims(principal: Principal, expires_at: float) -> dict[str, Any]:
    """What a session cookie says of `principal`: a key by its prefix (looked up again on
    every request), a token's tenant, scopes and subject (trusted until it expires)."""
    if principal.kind == "key":
        return {"k": principal.name, "exp": int(expires_at)}
    return {
        "t": principal.tenant,
        "s": sorted(principal.scopes),
        "n": principal.name,
        "exp": int(expires_at),
    }


async def principal_of_session(pool: Pool, claims: dict[str, Any]) -> Principal | None:
    """The principal a verified session cookie stands for, if it still may act."""
    prefix = claims.get("k")
    if isinstance(prefix, str):
        found = await store.api_key_get(pool, prefix, TOUCH_AFTER_S)
        if found is None or found[0].revoked_at is not None:
            return None
        row = found[0]
        return Principal(row.tenant, frozenset(row.scopes), "key", row.prefix)
    tenant, scopes, name = claims.get("t"), claims.get("s"), claims.get("n")
    if isinstance(tenant, str) and isinstance(scopes, list) and isinstance(name, str):
        return Principal(tenant, frozenset(str(s) for s in scopes), "jwt", name)
    return None


def session_cookie(value: str, *, secure: bool, max_age: int = SESSION_TTL_S) -> Cookie:
    return Cookie(
        key=SESSION_COOKIE,
        value=value,
        path="/ui",
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=secure,
    )


def csrf_cookie(value: str, *, secure: bool) -> Cookie:
    # HttpOnly: the pages carry the token in their forms, no script needs the cookie.
    return Cookie(
        key=CSRF_COOKIE, value=value, path="/ui", httponly=True, samesite="strict", secure=secure
    )


def cookies_of(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for name, value in scope["headers"]:
        if name == b"cookie":
            with contextlib.suppress(CookieError):  # a malformed header holds no cookie
                jar.load(value.decode("latin-1"))
    return {key: morsel.value for key, morsel in jar.items()}


def csrf_matches(scope: Scope, token: str | None) -> bool:
    """Whether a form's (or header's) token is this browser's CSRF cookie."""
    cookie = scope.get("state", {}).get(CSRF_SENT_STATE)
    if not token or not isinstance(cookie, str) or not cookie:
        return False
    return hmac.compare_digest(token.encode(), cookie.encode())


def _header(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope["headers"] if k == name]


class ConsoleGuard:
    """ASGI middleware of the /ui router (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        cookies = cookies_of(scope)
        csrf = cookies.get(CSRF_COOKIE) or ""
        new_csrf = None
        state = scope.setdefault("state", {})
        if len(csrf) < 32:
            # The token of this page's forms; it is checked against the cookie that the
            # next request brings back.
            csrf = new_csrf = secrets.token_urlsafe(32)
        else:
            state[CSRF_SENT_STATE] = csrf
        state[CSRF_STATE] = csrf
        secure = is_https(scope)

        async def send_guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                headers += SECURITY_HEADERS
                if not path.startswith("/ui/static/"):
                    headers.append((b"cache-control", b"no-store"))
                if new_csrf is not None:
                    cookie = csrf_cookie(new_csrf, secure=secure).to_header(header="")
                    headers.append((b"set-cookie", cookie.strip().encode("latin-1")))
                took_ms = (time.perf_counter() - started) * 1000
                headers.append((b"server-timing", f"app;dur={took_ms:.2f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        refusal = await self._refusal(scope, cookies, csrf)
        if refusal is not None:
            status, location = refusal
            await _answer(scope, receive, send_guarded, status, location)
            return
        await self.app(scope, receive, send_guarded)

    async def _refusal(
        self, scope: Scope, cookies: dict[str, str], csrf: str
    ) -> tuple[int, str | None] | None:
        """(status, redirect) for a request refused here, else None (and the request's
        principal and viewer are in its scope)."""
        path: str = scope["path"]
        pool: Pool = scope["litestar_app"].state.pool
        keys: SessionKeys = scope["litestar_app"].state.console_keys
        principal = scope.get("user")
        signed_in = False
        if isinstance(principal, Principal) and principal.kind == "open":
            hosts = _header(scope, b"host")
            name = host_name(hosts[0]) if len(hosts) == 1 else None
            allowed: tuple[str, ...] = scope["litestar_app"].state.allowed_hosts
            if name is None or not host_allowed(name, allowed):
                return 421, None
        elif not isinstance(principal, Principal):
            principal = None
            session = cookies.get(SESSION_COOKIE)
            if session:
                claims = await keys.verify(pool, session)
                if claims is not None:
                    principal = await principal_of_session(pool, claims)
            if principal is not None:
                scope["user"], scope["auth"] = principal, None
                signed_in = True
        if scope.get("method") in BODY_METHODS and not _same_origin(scope):
            return 403, None
        if principal is None:
            if path.startswith(PUBLIC_PREFIXES):
                return None
            if scope.get("method") in ("GET", "HEAD") and path != "/ui/events":
                query = scope.get("query_string", b"").decode("latin-1")
                target = path + (f"?{query}" if query else "")
                return 303, f"/ui/login?next={quote(target, safe='')}"
            return 401, None
        scope.setdefault("state", {})[VIEWER_STATE] = Viewer(principal, csrf, signed_in)
        needed = WRITE if scope.get("method") in BODY_METHODS else READ
        if not principal.allows(needed) and not path.startswith(("/ui/logout", *PUBLIC_PREFIXES)):
            return 403, None
        return None


def is_https(scope: Scope) -> bool:
    """Whether the browser speaks HTTPS to us, or to the proxy in front (cookies are then
    Secure). X-Forwarded-Proto is believed for this only: a client that lies about it
    over plain HTTP only keeps its own browser from storing the cookie."""
    forwarded = _header(scope, b"x-forwarded-proto")
    return scope.get("scheme") == "https" or (bool(forwarded) and forwarded[-1] == "https")


def _same_origin(scope: Scope) -> bool:
    """Whether a change comes from a page of this host name (or from no page at all).
    Names, not ports: a proxy may pass on the Host without the port the browser used."""
    origins = _header(scope, b"origin")
    if not origins:
        return True
    hosts = _header(scope, b"host")
    if len(origins) != 1 or len(hosts) != 1:
        return False
    parts = urlsplit(origins[0].strip())
    name = host_name(parts.netloc) if parts.scheme in ("http", "https") else None
    return name is not None and name == host_name(hosts[0])


async def _answer(
    scope: Scope, receive: Receive, send: Send, status: int, location: str | None
) -> None:
    """A refusal as a small HTML page, or a redirect to the sign-in page."""
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"text/html; charset=utf-8")]
    if location is not None:
        headers.append((b"location", location.encode("latin-1")))
        body = b""
    else:
        body = error_page(status, scope).encode()
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": headers,
    }
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})
