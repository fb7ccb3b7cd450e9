"""The API's hottest read, `GET /jobs/{id}`, answered in front of Litestar's router.

Through Litestar, a request finds its route in the routing trie, passes five middleware
(each a call and most a wrapped `send`), builds a Request, and the handler's Response is
turned into an ASGIResponse, its headers encoded a second time: together about as much
CPU as the read itself. `HotLane` takes the requests for a job by id and does the same
steps in one function, calling what the middleware call, in their order:

    metrics (begin) → principal (AuthMiddleware) → rate budget (RateLimiter)
    → scope (ScopeGuard) → Host (CrossSiteGuard) → the read → metrics (end)

A refusal (401, 403, 429, 421), a job that does not exist (404) and any failure are
answered as the route's exception handlers render them, with the rate-limit headers
the route would add. Everything else, an id out of bounds included, goes to Litestar.
The route `get_job` (routes.py) stays the declaration (OpenAPI) and the answer when the
lane is off: with tracing on, so that every request has its span.

The shortcut has two sides: a layer added to app.py's middleware list must be added
here too, or be one the lane does not need (ReadYourWrites marks writes and history
reads, neither of which this is). tests/test_api_hot.py holds the lane's answers to the
route's, byte for byte, for each status.
"""

from __future__ import annotations

import re
import time

import msgspec
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from scheduler_svc import metrics, store
from scheduler_svc.api.views import etag, job_out
from scheduler_svc.errors import NotFound
from scheduler_svc.models import MAX_ID
from scheduler_svc.security import ratelimit
from scheduler_svc.security.auth import Authenticator
from scheduler_svc.security.crosssite import CrossSiteGuard
from scheduler_svc.security.middleware import answer_in_route, resolve_principal, scope_refusal
from scheduler_svc.security.principals import Principal

_encode = msgspec.json.Encoder().encode
# The ids the route takes: digits only (Litestar reads "+1" or "-1" as ints too, and
# refuses them or reads them as another id's; those go to it).
_JOB_PATH = re.compile(r"/jobs/([0-9]{1,19})")
ROUTE_NAME = "get_job"


class HotLane:
    """ASGI, between the request log line and Litestar: `GET /jobs/{id}` (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        route: HTTPRoute,
        authenticator: Authenticator,
        budgets: ratelimit.RateBudgets,
        allowed_hosts: tuple[str, ...],
    ) -> None:
        self.app = app
        self._handler: HTTPRouteHandler = route.route_handler_map["GET"][0]
        self._template = route.path_format
        self._authenticator = authenticator
        self._budgets = budgets
        self._hosts = CrossSiteGuard(app, allowed_hosts)
        self._metrics = metrics.HttpMetricsMiddleware(app, metrics.HTTP)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _JOB_PATH.fullmatch(scope["path"]) if scope.get("method") == "GET" else None
        job_id = int(match.group(1)) if match else 0
        if not 1 <= job_id <= MAX_ID:  # JobId's bounds: the route refuses the rest
            await self.app(scope, receive, send)
            return
        # What Litestar's router would set, for the exception handlers and ScopeGuard.
        scope["route_handler"] = self._handler
        scope["path_template"] = self._template
        scope["path_params"] = {"job_id": job_id}  # type: ignore[dict-item]  # parsed, as there
        in_progress = self._metrics.begin("GET", self._template)
        started = time.perf_counter()
        status = 500
        try:
            status = await self._answer(scope, receive, send, job_id)
        finally:
            in_progress.dec()
            self._metrics.end("GET", self._template, status, time.perf_counter() - started)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, job_id: int) -> int:
        """Answer the request; its status."""
        # Past the rate limiter (a window, and no 429), RateLimit-* mark whatever comes back.
        window: list[int] | None = None
        refusal: Exception | None = None
        try:
            await resolve_principal(self._authenticator, scope)
            window, refusal = self._budgets.spend(scope)
            if refusal is not None:
                window = None  # a 429 carries its RateLimit-* headers itself
            else:
                refusal = scope_refusal(scope) or self._hosts.refusal(scope)
            if refusal is None:
                principal: Principal = scope["user"]
                pool = scope["litestar_app"].state.pool
                row = await store.job_get(pool, principal.tenant, job_id)
                if row is None:
                    refusal = NotFound(f"job {job_id} does not exist")
                else:
                    body = _encode(job_out(row))
                    headers = [
                        (b"etag", etag(row).encode()),
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body)),
                    ]
        except Exception as exc:  # answered as the route's exception handlers answer it
            refusal = exc
        if window is not None:
            if refusal is not None:
                send = ratelimit.with_headers(send, self._budgets, window)
            else:
                headers += self._budgets.headers(window)
        if refusal is not None:
            return await _refuse(scope, receive, send, refusal)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return 200


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: Exception) -> int:
    """Answer `exc` as the route's exception handlers render it; the status they chose."""
    status = 500

    async def send_noting(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    await answer_in_route(scope, receive, send_noting, exc)
    return status


def lane(
    app: Litestar,
    inner: ASGIApp,
    authenticator: Authenticator,
    budgets: ratelimit.RateBudgets,
    allowed_hosts: tuple[str, ...],
) -> ASGIApp:
    """`inner` (Litestar's handler) behind a HotLane, when `app` serves `get_job`."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or "GET" not in route.route_handler_map:
            continue
        if route.route_handler_map["GET"][0].name == ROUTE_NAME:
            return HotLane(inner, route, authenticator, budgets, allowed_hosts)
    return inner  # a worker: no API routes
