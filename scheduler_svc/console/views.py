"""What every console page shares: the viewer dependency, the page response, the 404,
and the overview's figures turned into what the charts draw."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from litestar import Request, Response
from litestar.di import NamedDependency
from litestar.enums import MediaType
from litestar.exceptions import NotFoundException
from litestar.response import Template

from scheduler_svc.console.access import VIEWER_STATE, Viewer
from scheduler_svc.console.charts import LagPoint, MinuteCounts
from scheduler_svc.console.live import LiveHub
from scheduler_svc.console.render import ENVIRONMENT
from scheduler_svc.models.stats import LAG_BUCKETS_MS, MinuteStats, lag_quantile

ViewerDep = NamedDependency[Viewer]
# Fragments kept by SharedRenders at most (of the latest batches; older ones are useless).
MAX_SHARED_RENDERS = 1000
OUTCOMES = ("succeeded", "failed", "skipped", "cancelled", "retried")


def provide_viewer(request: Request[Any, Any, Any]) -> Viewer:
    """The `viewer` dependency: who ConsoleGuard found behind the request."""
    viewer = request.scope.get("state", {}).get(VIEWER_STATE)
    assert isinstance(viewer, Viewer), "ConsoleGuard lets no request through without one"
    return viewer


def is_htmx(request: Request[Any, Any, Any]) -> bool:
    """Whether htmx asks, for the page's live fragment only."""
    return request.headers.get("hx-request") == "true"


def page(
    request: Request[Any, Any, Any], viewer: Viewer, template: str, nav: str, **context: Any
) -> Template:
    """A console page (or fragment) rendered with what every page shows."""
    return Template(
        template_name=template,
        context={
            **context,
            "viewer": viewer,
            "nav": nav,
            "path": request.url.path,
            "query": request.url.query,
        },
    )


class SharedRenders:
    """Live fragments rendered once per batch of changes, and shared by every stream of
    the tenant that asks for the same fragment in the meantime.

    Every open console asks for its fragments again after each batch: without this, N
    consoles on one tenant's overview cost N renders (and their queries) per batch; with
    it, one. A render is shared only while it is of the latest batch the replica's hub
    handed that tenant's streams (LiveHub.generation), so it has seen every change the
    asking stream was told of. Without a generation (this replica does not listen for the
    tenant: its streams are on another replica) every fragment is rendered afresh. Only
    fragments that show nothing of the viewer but their tenant are shared."""

    def __init__(self) -> None:
        self._renders: dict[tuple[str, ...], tuple[int, asyncio.Task[str]]] = {}

    async def get(
        self,
        key: tuple[str, ...],
        generation: int | None,
        render: Callable[[], Awaitable[str]],
    ) -> str:
        if generation is None:
            return await render()
        found = self._renders.get(key)
        if found is None or found[0] != generation or _failed(found[1]):
            if len(self._renders) >= MAX_SHARED_RENDERS:
                self._renders.clear()  # renders of older batches: never shared again
            found = (generation, asyncio.ensure_future(render()))
            self._renders[key] = found
        # Shielded: a client that goes away does not cancel the others' render.
        return await asyncio.shield(found[1])


def _failed(task: asyncio.Task[str]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)


async def shared_fragment(
    request: Request[Any, Any, Any],
    viewer: Viewer,
    template: str,
    load: Callable[[], Awaitable[dict[str, Any]]],
    *key: str,
) -> Response[str]:
    """A live fragment from the app's SharedRenders, by tenant, URL and `key`."""
    renders: SharedRenders = request.app.state.console_renders
    hub: LiveHub | None = request.app.state.console_hub

    async def render() -> str:
        context = {**await load(), "path": request.url.path, "query": request.url.query}
        return ENVIRONMENT.get_template(template).render(**context)

    url = f"{request.url.path}?{request.url.query}"
    generation = hub.generation(viewer.tenant) if hub is not None else None
    html = await renders.get((viewer.tenant, url, *key), generation, render)
    return Response(html, media_type=MediaType.HTML)


def not_found(what: str) -> NotFoundException:
    """A 404 that says nothing of whether `what` exists for another tenant."""
    return NotFoundException(detail=f"{what} does not exist")


def minute_counts(
    minutes: Sequence[MinuteStats], since: datetime, now: datetime
) -> list[MinuteCounts]:
    """One bar per minute from `since` to `now`, minutes without runs as empty bars."""
    by_minute = {m.minute: m for m in minutes}
    start = since.replace(second=0, microsecond=0) + timedelta(minutes=1)
    bars = []
    at = start
    while at <= now:
        found = by_minute.get(at)
        counts = {o: getattr(found, o) if found else 0 for o in OUTCOMES}
        bars.append(MinuteCounts(minute=at, counts=counts))
        at += timedelta(minutes=1)
    return bars


def lag_points(minutes: Sequence[MinuteStats]) -> list[LagPoint]:
    """Fire lag p50 and p99 of each minute that had first attempts: the upper bound of
    the bucket each falls in, and the last finite bound for one past it (over a minute
    late: the chart's top)."""
    points = []
    top = LAG_BUCKETS_MS[-2]
    for minute in minutes:
        p50 = lag_quantile(minute.lag_counts, 0.5)
        p99 = lag_quantile(minute.lag_counts, 0.99)
        if p50 is not None and p99 is not None:
            points.append(
                LagPoint(minute=minute.minute, p50_ms=min(p50, top), p99_ms=min(p99, top))
            )
    return points
