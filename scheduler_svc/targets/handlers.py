"""Registered Python handlers: the entry-point group, what a handler is told, calling one."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any

import msgspec
import structlog

from scheduler_svc.targets.delivery import Delivery, Outcome, one_line

log = structlog.get_logger(__name__)

HANDLER_GROUP = "scheduler_svc.handlers"


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a registered handler is told about the attempt it runs."""

    job_id: int
    job_name: str
    run_id: int
    tenant: str
    scheduled_for: datetime
    trigger: str
    attempt: int
    attributes: dict[str, Any]
    idempotency_key: str


Handler = Callable[[HandlerContext], Awaitable[Any]]


def load_handlers() -> dict[str, Handler]:
    """Handlers of the `scheduler_svc.handlers` entry-point group (name → async function).

    One that fails to import or is not callable is left out with a warning, so a broken
    plugin costs its own runs, not the service. On a name registered twice the first wins.
    """
    handlers: dict[str, Handler] = {}
    for entry in entry_points(group=HANDLER_GROUP):
        if entry.name in handlers:
            log.warning("handler_name_taken", handler=entry.name, entry_point=entry.value)
            continue
        try:
            loaded = entry.load()
        except Exception as exc:
            log.warning(
                "handler_load_failed",
                handler=entry.name,
                entry_point=entry.value,
                error=one_line(f"{type(exc).__name__}: {exc}"),
            )
            continue
        if not callable(loaded):
            log.warning("handler_not_callable", handler=entry.name, entry_point=entry.value)
            continue
        handlers[entry.name] = loaded
    return handlers


def registered_handlers(given: Mapping[str, Handler] | None = None) -> dict[str, Handler]:
    """Every handler a job may name: the entry-point group, and `given` (config) over it.

    Every role loads them once at start: the API refuses a job naming anything else,
    the worker calls them.
    """
    return {**load_handlers(), **(given or {})}


async def call_handler(handlers: Mapping[str, Handler], d: Delivery) -> Outcome:
    """Await the handler a run names with its context; every failure is an Outcome."""
    name = d.target.get("name")
    handler = handlers.get(name) if isinstance(name, str) else None
    if handler is None:
        return Outcome(
            ok=False, error=one_line(f"no handler registered as {name!r}"), retryable=False
        )
    context = HandlerContext(
        job_id=d.job_id,
        job_name=d.job_name,
        run_id=d.run_id,
        tenant=d.tenant,
        scheduled_for=d.scheduled_for,
        trigger=d.trigger,
        attempt=d.attempt,
        attributes=d.attributes,
        idempotency_key=d.idempotency_key,
    )
    try:
        pending = handler(context)
        if not inspect.isawaitable(pending):
            return Outcome(
                ok=False,
                error=f"handler {name!r} is not an async function",
                retryable=False,
            )
        result = await pending
    except Exception as exc:
        log.warning("handler_raised", handler=name, exc_info=exc)
        return Outcome(ok=False, error=one_line(f"{type(exc).__name__}: {exc}"))
    try:
        output = msgspec.json.decode(msgspec.json.encode(result))
    except (TypeError, ValueError, OverflowError) as exc:
        return Outcome(
            ok=False,
            error=one_line(f"handler {name!r} returned a value that is not JSON: {exc}"),
            retryable=False,
        )
    return Outcome(ok=True, output=output)
