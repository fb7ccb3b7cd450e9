"""The console's Jinja environment: its templates, the filters they format times and
durations with, and the error page (which middleware renders without a route)."""

from __future__ import annotations

from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from litestar.types import Scope

from scheduler_svc.console.charts import lag_lines, outcome_strip, runs_per_minute
from scheduler_svc.console.describe import describe

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

_MESSAGES = {
    401: "Sign in to see this page.",
    403: "You may look, but this change needs a key with the jobs:write scope, from a page "
    "of this console.",
    404: "There is nothing here, or it belongs to another tenant.",
    421: "Without API keys this console answers only loopback host names and "
    "SCHEDULER_ALLOWED_HOSTS.",
}


def when(value: datetime | None, zone: str = "UTC") -> str:
    """A moment in `zone`, to the second, with the zone's abbreviation."""
    if value is None:
        return "—"
    try:
        tz = ZoneInfo(zone)
    except (ValueError, KeyError):
        tz = ZoneInfo("UTC")
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def iso(value: datetime | None) -> str:
    """A moment as RFC 3339 in UTC (for <time datetime=…>)."""
    return value.astimezone(UTC).isoformat() if value is not None else ""


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago (or from now) a moment is, in the largest whole unit."""
    if value is None:
        return "—"
    seconds = ((now or datetime.now(UTC)) - value).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size or unit == "s":
            amount = f"{int(seconds // size)} {unit}"
            return f"in {amount}" if future else f"{amount} ago"
    return "now"  # pragma: no cover - the loop always returns


def duration(ms: float | None) -> str:
    """A run's duration: milliseconds below a second, else seconds or minutes."""
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, iso=iso, ago=ago, duration=duration, describe=describe)
    env.globals.update(
        runs_per_minute=runs_per_minute, lag_lines=lag_lines, outcome_strip=outcome_strip
    )
    return env


ENVIRONMENT = _environment()


def error_page(status: int, scope: Scope | None = None, detail: str | None = None) -> str:
    """The HTML page of a refusal or error (no navigation needs a signed-in viewer)."""
    viewer = scope.get("state", {}).get("console_viewer") if scope is not None else None
    return ENVIRONMENT.get_template("error.html").render(
        status=status,
        title=HTTPStatus(status).phrase,
        detail=detail or _MESSAGES.get(status, HTTPStatus(status).phrase),
        viewer=viewer,
        nav="error",
    )


def render(template: str, **context: Any) -> str:
    return ENVIRONMENT.get_template(template).render(**context)
