"""Prometheus metrics: the engine's series, HTTP request metrics and the /metrics route.

Each process has its own registry (prometheus_client's default); every replica is
scraped on its own. No series has a per-job or per-tenant label.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import structlog
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.plugins.prometheus import (
    PrometheusConfig,
    PrometheusController,
    PrometheusMiddleware,
)
from litestar.types import Message, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from scheduler_svc import store
from scheduler_svc.models import ClaimedRun, InsertedRun, RunResult
from scheduler_svc.store.db import DATABASE_ERRORS, Pool
from scheduler_svc.store.replica import ReplicaStatus, Served

log = structlog.get_logger("scheduler_svc.metrics")

RUNS = Counter(
    "scheduler_runs_total",
    "Run attempts by outcome: succeeded, failed, pending_retry, skipped (overlap), or "
    "cancelled (POST /runs/{id}/cancel, counted by the replica that answered it).",
    ["status"],
)
RUN_DURATION = Histogram(
    "scheduler_run_duration_seconds",
    "How long one attempt took, delivery included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
FIRE_LAG = Histogram(
    "scheduler_fire_lag_seconds",
    "Start of a scheduled run's first attempt minus its tick.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900),
)
DUE_BACKLOG = Gauge(
    "scheduler_due_backlog",
    "Due ticks not yet started: pending runs due now plus active jobs whose next tick "
    "is due (read from the database at each scrape; NaN when it does not answer).",
)
BEHIND = Gauge(
    "scheduler_behind_seconds",
    "How far behind the service is: seconds since the earliest due time of a tick not yet "
    "started (pending runs whose attempt is due, active jobs whose next tick is due; not "
    "runs waiting for an earlier run of their job); 0 when none. Read from the database at "
    "each scrape and by each worker every few seconds; NaN when it does not answer.",
)
CLAIM_BATCH = Histogram(
    "scheduler_claim_batch_size",
    "Runs an executor leased per exchange that asked for some.",
    buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500),
)
RETRIES = Counter("scheduler_retries_total", "Attempts that failed and will be retried.")
LEASE_TAKEOVERS = Counter(
    "scheduler_lease_takeovers_total",
    "Runs leased again after their worker's lease expired.",
)
ALERTS = Counter(
    "scheduler_alerts_total",
    "Alert delivery attempts by event (run.failed, job.recovered, job.missed) and outcome: "
    "delivered, retried (to be tried again), or failed (given up).",
    ["event", "status"],
)
HISTORY_READS = Counter(
    "scheduler_history_reads_total",
    "History reads (run lists) by the pool that served them: replica or primary.",
    ["pool"],
)
READ_REPLICA_LAG = Gauge(
    "scheduler_read_replica_lag_seconds",
    "How far the read replica's data is behind the primary, at its last check (about once "
    "a second); NaN while it is down, and without one.",
)
READ_REPLICA_LAG.set(float("nan"))


class HttpMetricsMiddleware(PrometheusMiddleware):
    """Litestar's Prometheus middleware, same series and labels, at a fraction of the cost.

    Litestar's builds a Request and its URL, a label dict and four `labels()` lookups on
    every request; here the labelled children are looked up once per (method, route,
    status) and kept.
    """

    def __init__(self, app: Any, config: PrometheusConfig) -> None:
        super().__init__(app, config)
        self._app_name = str(config.app_name)
        # (method, route template) → in-progress child; (…, status) → count, time, errors.
        self._in_progress: dict[tuple[str, str], Any] = {}
        self._done: dict[tuple[str, str, int], tuple[Any, Any, Any | None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = str(scope.get("method") or scope["type"])
        path: str = scope["path_template"]
        in_progress = self.begin(method, path)
        started = time.perf_counter()
        span = [200, 0.0]  # status, duration

        async def send_measured(message: Message) -> None:
            if message["type"] == "http.response.start":
                span[0] = message["status"]
            elif message["type"] == "http.response.body":
                span[1] = time.perf_counter() - started
            await send(message)

        try:
            await self.app(scope, receive, send_measured)
        finally:
            in_progress.dec()
            self.end(method, path, int(span[0]), span[1])

    def begin(self, method: str, path: str) -> Any:
        """Count a request of `path` (a route template) in progress; its gauge's child,
        for the caller to decrement when it ends."""
        in_progress = self._in_progress.get((method, path))
        if in_progress is None:
            in_progress = self.requests_in_progress(self._labels(method, path, 200)).labels(
                method, path, 200, self._app_name
            )
            self._in_progress[(method, path)] = in_progress
        in_progress.inc()
        return in_progress

    def end(self, method: str, path: str, status: int, seconds: float) -> None:
        """Count a finished request, answered `status` after `seconds`."""
        done = self._done.get((method, path, status))
        if done is None:
            labels = self._labels(method, path, status)
            values = [*labels.values()]
            errors = None
            if status >= 500:
                errors = self.requests_error_count(labels).labels(*values)
            done = (
                self.request_count(labels).labels(*values),
                self.request_time(labels).labels(*values),
                errors,
            )
            self._done[(method, path, status)] = done
        count, duration, errors = done
        if errors is not None:
            errors.inc()
        count.inc()
        duration.observe(seconds)

    def _labels(self, method: str, path: str, status: int) -> dict[str, str | int | float]:
        return {"method": method, "path": path, "status_code": status, "app_name": self._app_name}


# HTTP requests by method, route template and status: scheduler_http_requests_total,
# scheduler_http_request_duration_seconds and friends. The route template, not the raw
# path, keeps /jobs/{job_id:int} one series whatever the id.
HTTP = PrometheusConfig(
    app_name="scheduler-svc",
    prefix="scheduler_http",
    group_path=True,
    middleware_class=HttpMetricsMiddleware,
)


def attempted(result: RunResult) -> None:
    """Count one attempt's outcome and duration."""
    status = "pending_retry" if result.status == "pending" else result.status
    RUNS.labels(status).inc()
    RUN_DURATION.observe(result.duration_ms / 1000)
    if result.status == "pending":
        RETRIES.inc()


def leased(runs: list[ClaimedRun], claim: int) -> None:
    """Count one exchange's leases: batch size, takeovers, and fire lag of first attempts."""
    if claim > 0:
        CLAIM_BATCH.observe(len(runs))
    for run in runs:
        if run.lost_worker is not None:
            LEASE_TAKEOVERS.inc()
        # A retry starts late on purpose (backoff); only a tick's first start is lag.
        if run.trigger == "schedule" and run.attempt == 1:
            due = run.due_at or run.scheduled_for  # fire lag is from the due time (jitter)
            FIRE_LAG.observe(max((run.started_at - due).total_seconds(), 0.0))


def finished_in_pass(runs: list[InsertedRun]) -> None:
    """Count the runs a scheduler pass inserted finished. One it ran itself succeeded
    at once: its lag is its start, its duration nothing worth measuring. (Runs it
    leased to the executor are counted when they end.)"""
    outcomes = collections.Counter(r.status for r in runs if r.status != "running")
    for status, count in outcomes.items():
        RUNS.labels(status).inc(count)
    for run in runs:
        if run.status == "succeeded" and run.started_at is not None:
            RUN_DURATION.observe(0.0)
            due = run.due_at or run.scheduled_for
            FIRE_LAG.observe(max((run.started_at - due).total_seconds(), 0.0))


def skipped(count: int) -> None:
    """Count waiting runs skipped once the earlier run they waited for ended (overlap)."""
    if count:
        RUNS.labels("skipped").inc(count)


def alerted(event: str, status: str) -> None:
    """Count one alert delivery attempt's outcome: delivered, retried or failed."""
    ALERTS.labels(event, status).inc()


def cancelled() -> None:
    """Count a run cancelled through the API (by the replica that answered)."""
    RUNS.labels("cancelled").inc()


def history_read(served: Served) -> None:
    """Count one history read by the pool that served it."""
    HISTORY_READS.labels(served).inc()


def replica_checked(status: ReplicaStatus) -> None:
    """Show the read replica's lag as its last check found it."""
    READ_REPLICA_LAG.set(status.lag_s if status.lag_s is not None else float("nan"))


def backlog_read(backlog: store.Backlog) -> None:
    """Show the due backlog and how far behind it is."""
    DUE_BACKLOG.set(backlog.ticks)
    BEHIND.set(backlog.behind_s)


def backlog_unknown() -> None:
    """The database did not say: NaN, not a stale figure."""
    DUE_BACKLOG.set(float("nan"))
    BEHIND.set(float("nan"))


async def refresh_backlog(pool: Pool) -> None:
    """Read the due backlog and how far behind it is from the database into their gauges."""
    try:
        backlog_read(await store.runs_due_backlog(pool))
    except DATABASE_ERRORS as exc:
        log.warning("due_backlog_unavailable", error=str(exc))
        backlog_unknown()


class MetricsController(PrometheusController):
    """GET /metrics in Prometheus text format; open to all (auth.EXEMPT_PATHS)."""

    @get(
        operation_id="metrics",
        tags=["health"],
        summary="Prometheus metrics",
        media_type=CONTENT_TYPE_LATEST,
    )
    async def get(self, pool: NamedDependency[Pool]) -> Response[bytes]:
        # Refreshed here rather than by a loop: every role has a pool, and the value is
        # as fresh as the scrape for one cheap indexed query per scrape.
        await refresh_backlog(pool)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
