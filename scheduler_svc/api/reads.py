"""History reads over HTTP: the `reads` dependency that runs them where store.replica's
ReadRouter says, and the middleware that gives write responses their WAL position and
read responses the pool that served them (docs/read-replicas.md).

A history read (run lists now; audit, alerts and console aggregates as they come) is
a one-liner: take `reads: ReadsDep` and `await reads.run(store.runs_list, tenant, ...)`.
Point reads of what a client may just have created (a job, a run) use `pool`, the
primary, as writes do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar

import structlog
from litestar import Request
from litestar.datastructures import MutableScopeHeaders
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.params import HeaderParameter
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from scheduler_svc.errors import InvalidRequest
from scheduler_svc.security.principals import Principal
from scheduler_svc.store import db
from scheduler_svc.store.replica import ReadRouter, Served, format_lsn, parse_lsn
from scheduler_svc.store.sql import Conn

log = structlog.get_logger("scheduler_svc.api.reads")

P = ParamSpec("P")
T = TypeVar("T")

# A write's response: the primary's WAL position once it committed (the read-after LSN).
WRITTEN_LSN = "Scheduler-Written-Lsn"
# A history read's request: "show me at least what I wrote there"; its response: which
# pool answered, "replica" or "primary".
READ_AFTER_LSN = "Scheduler-Read-After-Lsn"
READ_POOL = "Scheduler-Read-Pool"
_STATE_KEY = "scheduler_history_reads"
WRITTEN_LSN_TIMEOUT_S = 2.0
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

ReadAfterLsn = Annotated[
    str | None,
    HeaderParameter(
        name=READ_AFTER_LSN,
        description=(
            f"A {WRITTEN_LSN} this client got from a write: the answer then includes that "
            "write, from the read replica once it has it, else from the primary."
        ),
    ),
]


class HistoryReads:
    """One request's history reads: each on the read replica when it may answer it,
    else on the primary."""

    def __init__(self, router: ReadRouter, tenant: str, after_lsn: int | None) -> None:
        self._router = router
        self._tenant = tenant
        self._after_lsn = after_lsn
        self.served: Served | None = None  # by the last read; "primary" if any was

    async def run(
        self,
        query: Callable[Concatenate[Conn, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """`query(conn, *args, **kwargs)` on the pool the router chooses; its answer."""
        answer, served = await self._router.read(
            self._tenant, self._after_lsn, query, *args, **kwargs
        )
        self.served = "primary" if self.served == "primary" else served
        return answer


ReadsDep = NamedDependency[HistoryReads]


def provide_reads(
    request: Request[Any, Any, Any], tenant: NamedDependency[str], read_after: ReadAfterLsn = None
) -> HistoryReads:
    """The `reads` dependency (app.create_app registers it after `tenant`)."""
    router: ReadRouter = request.app.state.reads
    after_lsn = None
    if read_after is not None:
        try:
            after_lsn = parse_lsn(read_after)
        except ValueError:
            raise InvalidRequest.field(
                READ_AFTER_LSN, f"must be a {WRITTEN_LSN} this API sent, such as 0/16B3748"
            ) from None
    reads = HistoryReads(router, tenant, after_lsn)
    request.scope.setdefault("state", {})[_STATE_KEY] = reads
    return reads


class ReadYourWrites:
    """ASGI middleware, inside authentication: a successful write's response carries
    Scheduler-Written-Lsn, and this process fences its tenant's history reads at that
    position (ReadRouter.wrote); a history read's response says which pool served it.
    Without a read replica it adds nothing and asks the database nothing.

    Middleware rather than code in each handler, so that writes added later are covered
    as they land (as ScopeGuard covers their scopes).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        router: ReadRouter | None = getattr(scope["litestar_app"].state, "reads", None)
        if scope["type"] != ScopeType.HTTP or router is None or not router.configured:
            await self.app(scope, receive, send)
            return
        write = scope.get("method") in _WRITE_METHODS

        async def send_marked(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 300:
                if write:
                    await _mark_write(router, scope, message)
                else:
                    reads = scope.get("state", {}).get(_STATE_KEY)
                    if isinstance(reads, HistoryReads) and reads.served is not None:
                        MutableScopeHeaders.from_message(message)[READ_POOL] = reads.served
            await send(message)

        await self.app(scope, receive, send_marked)


async def _mark_write(router: ReadRouter, scope: Scope, message: Message) -> None:
    principal = scope.get("user")
    if not isinstance(principal, Principal):  # an exempt route: nothing of a tenant's
        return
    try:
        async with asyncio.timeout(WRITTEN_LSN_TIMEOUT_S):
            lsn = await router.wrote(principal.tenant)
    except db.DATABASE_ERRORS as exc:
        # The write is done; only this client's next reads may not see it at once.
        log.warning("write_position_unavailable", error=str(exc))
        return
    if lsn is not None:
        MutableScopeHeaders.from_message(message)[WRITTEN_LSN] = format_lsn(lsn)
