"""One attempt of a run as its target sees it (Delivery), what came of it (Outcome), and
the log target, which the scheduler may run in its own pass."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from scheduler_svc import logs

ERROR_LIMIT = 1000  # characters of an error message


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt of one run, with what its target needs."""

    run_id: int
    job_id: int
    job_name: str
    tenant: str
    scheduled_for: datetime  # the tick, tz-aware UTC
    trigger: str  # "schedule" | "manual"
    attempt: int  # 1-based
    attributes: dict[str, Any]
    target: dict[str, Any]  # the stored target JSON, secrets included
    timeout_s: float
    backoff_max_s: float  # cap for honouring Retry-After

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt of this run, on every replica."""
        return f"run-{self.run_id}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to."""

    ok: bool
    output: Any = None  # JSON-serialisable: {"status_code", "body"} for http, a handler's result
    error: str | None = None  # one line, never containing secrets
    retryable: bool = True  # False: fail the run now without further attempts
    retry_after_s: float | None = None  # from Retry-After, capped at backoff_max_s


# Targets that do no I/O and cannot fail: the scheduler runs their ticks itself, in
# the transaction that materializes them (scheduler.tick_once), rather than handing
# them to an executor through a lease.
RUN_IN_PASS = frozenset({"log"})


def log_line(
    job_id: int,
    job_name: str,
    run_id: int,
    tick: datetime,
    attempt: int,
    trigger: str,
    tenant: str,
    attributes: dict[str, Any],
    **outcome: Any,
) -> None:
    """The log target's execution: one structured line with the job and its attributes.

    `outcome` adds fields when the caller, not a surrounding context, knows them."""
    logs.hot_line(
        "scheduler_svc.targets",
        "job_executed",
        {
            "job_id": job_id,
            "run_id": run_id,
            "tick": tick.isoformat(),
            "attempt": attempt,
            "trigger": trigger,
            **outcome,
        },
        {"job_name": job_name, "tenant": tenant, "attributes": attributes},
    )


def one_line(text: str) -> str:
    """Whitespace collapsed to single spaces, cut to ERROR_LIMIT characters."""
    line = " ".join(text.split())
    return line if len(line) <= ERROR_LIMIT else line[: ERROR_LIMIT - 1] + "…"
