"""One attempt of a run: what its target is handed, and what its outcome makes of the run
under its job's retry policy (SPEC §3.5). Pure: the executor calls these."""

from __future__ import annotations

import random
from typing import Literal

from scheduler_svc.models import ClaimedRun, RunResult
from scheduler_svc.targets import Delivery, Outcome


def retry_delay_s(attempt: int, backoff_s: float, backoff_max_s: float) -> float:
    """Seconds before the next attempt: min(max, base · 2^(attempt-1)), ±20 % jitter."""
    base: float = min(backoff_max_s, backoff_s * 2.0 ** min(attempt - 1, 62))
    return base * random.uniform(0.8, 1.2)


def result_of(run: ClaimedRun, outcome: Outcome, duration_ms: float) -> RunResult:
    """Decide a run's next state from one attempt's outcome and its job's retry policy."""
    if outcome.ok:
        return RunResult(
            run_id=run.id,
            status="succeeded",
            delay_s=None,
            error=None,
            output=outcome.output,
            duration_ms=duration_ms,
        )
    status: Literal["failed", "pending"]
    delay_s: float | None
    if not outcome.retryable or run.attempt >= run.max_attempts:
        status, delay_s = "failed", None
    elif outcome.retry_after_s is not None:
        status, delay_s = "pending", min(outcome.retry_after_s, run.backoff_max_s)
    else:
        status, delay_s = "pending", retry_delay_s(run.attempt, run.backoff_s, run.backoff_max_s)
    return RunResult(
        run_id=run.id,
        status=status,
        delay_s=delay_s,
        error=outcome.error,
        output=outcome.output,
        duration_ms=duration_ms,
    )


def delivery_of(run: ClaimedRun) -> Delivery:
    """What the target of a claimed run needs."""
    return Delivery(
        run_id=run.id,
        job_id=run.job_id,
        job_name=run.name,
        tenant=run.tenant,
        scheduled_for=run.scheduled_for,
        trigger=run.trigger,
        attempt=run.attempt,
        attributes=run.attributes,
        target=run.target,
        timeout_s=float(run.timeout_s),
        backoff_max_s=run.backoff_max_s,
    )
