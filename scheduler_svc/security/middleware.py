"""The ASGI side of authentication: AuthMiddleware resolves each request's principal
(or why it has none); ScopeGuard answers 401 without one and 403 without the scope the
route needs. Handlers get the principal's tenant through the `tenant` dependency.
"""

from __future__ import annotations

import re
from inspect import getmro
from typing import Any

import structlog
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.types import ASGIApp, Receive, Scope, Send

from scheduler_svc.errors import SchedulerError
from scheduler_svc.security.auth import Authenticator
from scheduler_svc.security.principals import NO_CREDENTIALS, READ, WRITE, Principal, Rejection

log = structlog.get_logger("scheduler_svc.security.auth")

# Routes anyone may call: liveness, readiness, metrics and the API's own documentation.
EXEMPT_PATHS = r"^/(?:healthz|readyz|metrics)?$|^/api(?:/|$)"
_EXEMPT = re.compile(EXEMPT_PATHS)


# The console guards itself (console/access.py): it signs people in with a cookie,
# answers HTML pages rather than problem documents, and takes urlencoded forms, each
# with a CSRF token. The principal of an Authorization header still applies there.
_CONSOLE = re.compile(r"^/ui(?:/|$)")


def is_console(scope: Scope) -> bool:
    """Whether a request is the console's, which ConsoleGuard checks instead."""
    return _CONSOLE.match(scope["path"]) is not None


def is_exempt(scope: Scope) -> bool:
    """Whether a request needs no principal: an exempt path, or a CORS-style OPTIONS."""
    return scope.get("method") == "OPTIONS" or _EXEMPT.match(scope["path"]) is not None


class AuthMiddleware:
    """ASGI middleware: puts the request's Principal in scope["user"], or its Rejection in
    scope["auth"].

    It never answers a request itself: ScopeGuard does, inside the route, so that 401s
    are problem documents that pass through every middleware (request ids, logs), and
    so that the rate limiter can count refused requests by client address. Plain ASGI
    rather than Litestar's AbstractAuthenticationMiddleware, which builds a connection
    and parses every header of every request to read this one.
    """

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and not _EXEMPT.match(scope["path"]):
            await resolve_principal(self.authenticator, scope)
        await self.app(scope, receive, send)


async def resolve_principal(authenticator: Authenticator, scope: Scope) -> None:
    """Put the request's Principal in scope["user"], or its Rejection in scope["auth"]."""
    client = scope.get("client")
    outcome = await authenticator.authenticate(
        scope["litestar_app"].state.pool, _authorization(scope), client[0] if client else "-"
    )
    if isinstance(outcome, Principal):
        scope["user"], scope["auth"] = outcome, None
    else:
        scope["user"], scope["auth"] = None, outcome


def _authorization(scope: Scope) -> str | None:
    # ASGI servers lower-case header names; the first Authorization header counts.
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value.decode("latin-1")
    return None


class ScopeGuard:
    """ASGI middleware, innermost: 401 without a principal, 403 without the route's scope.

    A route needs `opt={"scope": ...}` if set, else jobs:read to read (GET, HEAD) and
    jobs:write for anything else, so routes added later are covered as they land.
    The refusal is a problem document answered in place, inside the rate limiter, so
    refused requests still count against their client address's budget.

    A middleware rather than a Litestar guard: Litestar copies the route handler for
    each guard it calls, a cost measurable on every request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and not is_exempt(scope) and not is_console(scope):
            refusal = scope_refusal(scope)
            if refusal is not None:
                await answer_in_route(scope, receive, send, refusal)
                return
        await self.app(scope, receive, send)


def scope_refusal(scope: Scope) -> HTTPException | None:
    """401 without a principal, 403 without the scope the route needs; else None."""
    principal = scope.get("user")
    if not isinstance(principal, Principal):
        rejection = scope.get("auth")
        if not isinstance(rejection, Rejection):
            rejection = NO_CREDENTIALS
        challenge = 'Bearer realm="scheduler-svc"'
        if rejection.error is not None:
            challenge += f', error="{rejection.error}"'
        return NotAuthorizedException(
            detail=rejection.detail, headers={"WWW-Authenticate": challenge}
        )
    needed = scope["route_handler"].opt.get("scope") or (
        READ if scope.get("method") in ("GET", "HEAD") else WRITE
    )
    if principal.allows(needed):
        return None
    return PermissionDeniedException(
        detail=f"this {'API key' if principal.kind == 'key' else 'token'} lacks the scope {needed}",
        headers={
            "WWW-Authenticate": f'Bearer realm="scheduler-svc", '
            f'error="insufficient_scope", scope="{needed}"'
        },
    )


async def answer_in_route(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """Answer a request with `exc` as its route's exception handlers render it.

    For middleware inside the route, and api/hot.py's lane: raising would skip the outer
    middleware's view of the response (request id, metrics) and reach only the
    application's handler.
    """
    app = scope["litestar_app"]
    request: Request[Any, Any, Any] = app.request_class(scope, receive, send)
    handlers = scope["route_handler"].resolve_exception_handlers()
    # Litestar's own lookup order: the status code, then the exception's classes (the
    # application's handler of Exception last of all).
    status_code = exc.status_code if isinstance(exc, HTTPException | SchedulerError) else 0
    handler = handlers.get(status_code) or next(
        handlers[cls] for cls in getmro(type(exc)) if cls in handlers
    )
    response = handler(request, exc)
    await response.to_asgi_response(app=None, request=request)(scope, receive, send)


def tenant_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The tenant a request acts for (ScopeGuard has ensured there is a principal)."""
    principal = connection.scope.get("user")
    if not isinstance(principal, Principal):  # an exempt route asked for a tenant
        raise NotAuthorizedException(detail=NO_CREDENTIALS.detail)
    return principal.tenant
