"""What every console page shares: the viewer dependency, the page response, the 404,
and the overview's figures turned into what the charts draw."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from litestar import Request
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.response import Template

from scheduler_svc.console.access import VIEWER_STATE, Viewer
from scheduler_svc.console.charts import LagPoint, MinuteCounts
from scheduler_svc.models.stats import MinuteStats, lag_quantile

ViewerDep = NamedDependency[Viewer]
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
    """Fire lag p50 and p99 of each minute that had first attempts."""
    points = []
    for minute in minutes:
        p50 = lag_quantile(minute.lag_counts, 0.5)
        p99 = lag_quantile(minute.lag_counts, 0.99)
        if p50 is not None and p99 is not None:
            points.append(LagPoint(minute=minute.minute, p50_ms=p50, p99_ms=p99))
    return points
