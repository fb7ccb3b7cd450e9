"""Requests per principal per second or minute: Litestar's rate limit middleware, counted
in this replica's memory (so the limit is per replica)."""

from __future__ import annotations

import time
from inspect import getmro
from typing import Any

from litestar import Request
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.rate_limit import RateLimitConfig, RateLimitMiddleware
from litestar.stores.memory import MemoryStore
from litestar.types import Receive, Scope, Send

from scheduler_svc.auth import EXEMPT_PATHS, Principal
from scheduler_svc.config import RateLimit

# How often expired counters are dropped: the in-memory store keeps them until then, and
# many clients (addresses) that each send a request or two would otherwise pile up.
SWEEP_INTERVAL_S = 60.0


def rate_key(request: Request[Any, Any, Any]) -> str:
    """Whose budget a request spends: its principal's, else (refused) its client address's."""
    principal = request.scope.get("user")
    if isinstance(principal, Principal):
        return principal.rate_key
    return f"address:{request.client.host if request.client else '-'}"


class RateLimiter(RateLimitMiddleware):
    """Litestar's RateLimitMiddleware, answering its 429 in place and with Retry-After.

    Litestar raises the 429 from the middleware, where only the application's outermost
    exception handler would catch it: past our request logging, without a request id.
    Rendering it here, with the route's own exception handlers, keeps it a problem
    document that every outer middleware sees.
    """

    _swept_at = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if time.monotonic() - self._swept_at >= SWEEP_INTERVAL_S:
            self._swept_at = time.monotonic()
            store = self.config.get_store_from_app(scope["litestar_app"])
            if isinstance(store, MemoryStore):
                await store.delete_expired()
        try:
            await super().__call__(scope, receive, send)
        except TooManyRequestsException as exc:
            headers = exc.headers if isinstance(exc.headers, dict) else {}
            reset = headers.get(self.config.rate_limit_reset_header_key, "1")
            headers["Retry-After"] = str(max(1, int(reset)))
            exc.headers = headers
            await _respond_with_handler(scope, receive, send, exc)


async def _respond_with_handler(
    scope: Scope, receive: Receive, send: Send, exc: TooManyRequestsException
) -> None:
    app = scope["litestar_app"]
    request: Request[Any, Any, Any] = app.request_class(scope, receive, send)
    handlers = scope["route_handler"].resolve_exception_handlers()
    # Litestar's own lookup order: the status code, then the exception's classes.
    handler = handlers.get(exc.status_code) or next(
        handlers[cls] for cls in getmro(type(exc)) if cls in handlers
    )
    response = handler(request, exc)
    await response.to_asgi_response(app=None, request=request)(scope, receive, send)


def rate_limit_config(limit: RateLimit) -> RateLimitConfig:
    """The rate limit of SCHEDULER_RATE_LIMIT, per principal, sparing health and docs routes."""
    return RateLimitConfig(
        rate_limit=(limit.unit, limit.count),
        exclude=EXEMPT_PATHS,
        identifier_for_request=rate_key,
        middleware_class=RateLimiter,
    )
