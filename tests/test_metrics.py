"""GET /metrics: the engine's series, HTTP metrics by route template, open to every role."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from scheduler_svc import metrics
from scheduler_svc.models import ClaimedRun, InsertedRun, RunResult
from scheduler_svc.targets import HandlerContext
from tests.helpers import create_job, poll_json, running_app
from tests.principals import make_key

SERIES = (
    "scheduler_runs_total",
    "scheduler_run_duration_seconds",
    "scheduler_fire_lag_seconds",
    "scheduler_due_backlog",
    "scheduler_behind_seconds",
    "scheduler_claim_batch_size",
    "scheduler_retries_total",
    "scheduler_lease_takeovers_total",
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: httpx.AsyncClient) -> Samples:
    """GET /metrics, parsed: {(sample name, labels): value}."""
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_answers_prometheus_text_with_the_named_series(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/healthz")).status_code == 200
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for name in SERIES:
        assert f"# TYPE {name} " in response.text, name
    assert "scheduler_http_requests_total" in response.text


async def test_due_backlog_counts_due_ticks_not_yet_started(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    job = await create_job(client)  # @every 1h: its first tick is an hour away
    assert value(await scrape(client), "scheduler_due_backlog") == 0
    await pool.execute("UPDATE jobs SET next_run_at = now() - interval '1 minute'")
    assert value(await scrape(client), "scheduler_due_backlog") == 1
    # A manual run, pending and due now (this API-only app has no executor to start it).
    assert (await client.post(f"/jobs/{job['id']}/trigger")).status_code == 202
    assert value(await scrape(client), "scheduler_due_backlog") == 2


async def test_behind_seconds_is_the_age_of_the_earliest_due_tick_not_started(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    job = await create_job(client)  # @every 1h: nothing due
    assert value(await scrape(client), "scheduler_behind_seconds") == 0
    await pool.execute("UPDATE jobs SET next_run_at = now() - interval '90 seconds'")
    behind = value(await scrape(client), "scheduler_behind_seconds")
    assert 90 <= behind < 120
    # A pending run due earlier still is what the service is behind by.
    assert (await client.post(f"/jobs/{job['id']}/trigger")).status_code == 202
    await pool.execute("UPDATE job_runs SET next_attempt_at = now() - interval '300 seconds'")
    assert 300 <= value(await scrape(client), "scheduler_behind_seconds") < 330
    # A run waiting for an earlier run of its job waits by design: not behind for that.
    await pool.execute("UPDATE job_runs SET next_attempt_at = NULL, ready_at = NULL")
    await pool.execute("UPDATE jobs SET next_run_at = now() + interval '1 hour'")
    samples = await scrape(client)
    assert value(samples, "scheduler_behind_seconds") == 0
    assert value(samples, "scheduler_due_backlog") == 1


async def test_http_requests_are_labelled_by_route_template_and_status(
    client: httpx.AsyncClient,
) -> None:
    job = await create_job(client)
    assert (await client.get(f"/jobs/{job['id']}")).status_code == 200
    assert (await client.get("/jobs/999999999")).status_code == 404
    assert (await client.get("/no/such/path/12345")).status_code == 404
    samples = await scrape(client)
    paths = {
        dict(labels)["path"] for name, labels in samples if name == "scheduler_http_requests_total"
    }
    assert "/jobs/{job_id}" in paths
    assert not any(
        str(job["id"]) in path or "999999999" in path or "12345" in path for path in paths
    )
    get_job = {"method": "GET", "path": "/jobs/{job_id}", "app_name": "scheduler-svc"}
    assert value(samples, "scheduler_http_requests_total", **get_job, status_code="200") >= 1
    assert value(samples, "scheduler_http_requests_total", **get_job, status_code="404") >= 1


async def test_metrics_needs_no_key_even_when_keys_exist(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    await make_key(pool, "acme")
    assert (await client.get("/jobs")).status_code == 401
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert "scheduler_runs_total" in response.text


async def two_runs_scraped(http: httpx.AsyncClient, **job: Any) -> tuple[Samples, Samples]:
    """The metrics before a job on `@every 1s` is created and after two runs succeeded."""
    before = await scrape(http)
    created = await create_job(http, schedule="@every 1s", **job)
    await poll_json(
        http,
        f"/jobs/{created['id']}/runs",
        lambda rs: sum(r["status"] == "succeeded" for r in rs) >= 2,
    )
    return before, await scrape(http)


def assert_two_runs_counted(before: Samples, after: Samples) -> None:
    for name, labels in [
        ("scheduler_runs_total", {"status": "succeeded"}),
        ("scheduler_fire_lag_seconds_count", {}),
        ("scheduler_run_duration_seconds_count", {}),
    ]:
        grew = value(after, name, **labels) - value(before, name, **labels)
        assert grew >= 2, (name, grew)


@pytest.mark.slow  # waits for two ticks of `@every 1s` in real time
async def test_a_worker_serves_metrics_and_counts_the_runs_it_executes(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    async def record(ctx: HandlerContext) -> dict[str, int]:
        return {"attempt": ctx.attempt}

    settings = make_settings(role="all")
    async with (
        running_app(settings, pool, handlers={"record": record}) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        before, after = await two_runs_scraped(http, target={"type": "handler", "name": "record"})
    assert_two_runs_counted(before, after)
    assert value(after, "scheduler_claim_batch_size_count") > value(
        before, "scheduler_claim_batch_size_count"
    )

    async with (
        running_app(make_settings(role="worker"), pool) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        samples = await scrape(http)
        assert ("scheduler_due_backlog", frozenset()) in samples
        assert (await http.get("/jobs")).status_code == 404


@pytest.mark.slow  # waits for two ticks of `@every 1s` in real time
async def test_log_runs_the_scheduler_ran_itself_are_counted_with_their_fire_lag(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    async with (
        running_app(make_settings(role="all"), pool) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        # The default target: a log line, run by the scheduler pass itself.
        assert_two_runs_counted(*await two_runs_scraped(http))


def test_retries_and_takeovers_are_counted_and_retry_lag_is_not_fire_lag() -> None:
    watched: list[tuple[str, dict[str, str]]] = [
        ("scheduler_runs_total", {"status": "pending_retry"}),
        ("scheduler_retries_total", {}),
        ("scheduler_lease_takeovers_total", {}),
        ("scheduler_fire_lag_seconds_count", {}),
        ("scheduler_runs_total", {"status": "skipped"}),
    ]

    def samples() -> list[float]:
        return [REGISTRY.get_sample_value(name, labels) or 0.0 for name, labels in watched]

    before = samples()
    metrics.attempted(
        RunResult(run_id=1, status="pending", delay_s=1.0, error="503", output=None, duration_ms=5)
    )
    tick = datetime(2030, 1, 1, tzinfo=UTC)
    retried = ClaimedRun(
        id=1,
        job_id=1,
        tenant="t",
        scheduled_for=tick,
        trigger="schedule",
        attempt=2,
        started_at=tick + timedelta(seconds=90),
        lost_worker="gone",
        name="job",
        attributes={},
        target={},
        timeout_s=30,
        max_attempts=3,
        backoff_s=1.0,
        backoff_max_s=60.0,
    )
    metrics.leased([retried], claim=1)
    metrics.finished_in_pass(
        [
            InsertedRun(id=n, job_id=1, scheduled_for=tick, status="skipped", started_at=None)
            for n in (2, 3)
        ]
    )
    after = samples()
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 0, 2]
