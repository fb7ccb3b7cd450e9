"""Requests per principal per second or minute, counted in this replica's memory (so the
limit is per replica).

The counting is Litestar's RateLimitMiddleware's (a window opens at a principal's first
request and lasts one unit; at most `count` requests pass in it; RateLimit-* headers on
every limited response), with one counter per principal instead of Litestar's list of
every request's time stamp, which its middleware decodes, extends and encodes again on
each request: at a few thousand requests a second that list alone cost more than the
handler.
"""

from __future__ import annotations

import re
import time

from litestar.enums import ScopeType
from litestar.exceptions import TooManyRequestsException
from litestar.middleware import DefineMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from scheduler_svc.config import RateLimit
from scheduler_svc.security.middleware import EXEMPT_PATHS, answer_in_route
from scheduler_svc.security.principals import Principal

# How often expired counters are dropped: many clients (addresses) that each send a
# request or two would otherwise pile up.
SWEEP_INTERVAL_S = 60.0
WINDOW_S = {"second": 1, "minute": 60}
_EXEMPT = re.compile(EXEMPT_PATHS)


def rate_key(scope: Scope) -> str:
    """Whose budget a request spends: its principal's, else (refused) its client address's."""
    principal = scope.get("user")
    if isinstance(principal, Principal):
        return principal.rate_key
    client = scope.get("client")
    return f"address:{client[0] if client else '-'}"


class RateBudgets:
    """Each principal's requests in its current window, one set for the whole application.

    Litestar builds every route's middleware anew, so counters kept in the middleware
    would be a budget per route; the RateLimiter of every route, and api/hot.py's lane,
    spend from this one.
    """

    def __init__(self, limit: RateLimit) -> None:
        self.max_requests = limit.count
        self.window_s = WINDOW_S[limit.unit]
        self._fixed_headers = [
            (b"ratelimit-policy", f"{limit.count}; w={self.window_s}".encode()),
            (b"ratelimit-limit", str(limit.count).encode()),
        ]
        # rate key → [end of its window (Unix seconds), requests counted in it]
        self.windows: dict[str, list[int]] = {}
        self._swept_at = time.monotonic()

    def spend(self, scope: Scope) -> tuple[list[int], TooManyRequestsException | None]:
        """Count a request against its budget: its window, and the 429 to answer when the
        budget was spent already (then the request is not counted)."""
        if time.monotonic() - self._swept_at >= SWEEP_INTERVAL_S:
            self.sweep()
        now = int(time.time())
        key = rate_key(scope)
        window = self.windows.get(key)
        if window is None or window[0] <= now:
            window = self.windows[key] = [now + self.window_s, 0]
        if window[1] >= self.max_requests:
            headers = {k.decode(): v.decode() for k, v in self.headers(window)}
            headers["Retry-After"] = str(max(1, window[0] - now))
            return window, TooManyRequestsException(headers=headers)
        window[1] += 1
        return window, None

    def headers(self, window: list[int]) -> list[tuple[bytes, bytes]]:
        """The RateLimit-* headers of a response counted in `window`."""
        remaining = max(self.max_requests - window[1], 0)
        reset = max(window[0] - int(time.time()), 0)
        return [
            *self._fixed_headers,
            (b"ratelimit-remaining", str(remaining).encode()),
            (b"ratelimit-reset", str(reset).encode()),
        ]

    def sweep(self) -> None:
        """Drop the counters whose window has ended."""
        self._swept_at = time.monotonic()
        now = int(time.time())
        for key in [k for k, (end, _) in self.windows.items() if end <= now]:
            del self.windows[key]


class RateLimiter:
    """ASGI middleware: at most `limit.count` requests per window per principal; over it, a
    429 problem document with Retry-After, answered in place.

    Answering in place, with the route's own exception handlers, keeps the 429 a problem
    document that every outer middleware (request id, log line, metrics) sees; an
    exception raised here would only reach the application's outermost handler.
    """

    def __init__(self, app: ASGIApp, budgets: RateBudgets) -> None:
        self.app = app
        self.budgets = budgets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or _EXEMPT.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        window, refusal = self.budgets.spend(scope)
        if refusal is not None:
            await answer_in_route(scope, receive, send, refusal)
            return
        await self.app(scope, receive, with_headers(send, self.budgets, window))


def with_headers(send: Send, budgets: RateBudgets, window: list[int]) -> Send:
    """`send`, adding the RateLimit-* headers of `window` to the response as it starts."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", ()), *budgets.headers(window)]
            message = {**message, "headers": headers}
        await send(message)

    return send_with_headers


def rate_limit_middleware(budgets: RateBudgets) -> DefineMiddleware:
    """The rate limit of SCHEDULER_RATE_LIMIT, per principal, sparing health and docs routes."""
    return DefineMiddleware(RateLimiter, budgets=budgets)
