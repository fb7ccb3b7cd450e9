"""Runs over the API: trigger, history, pause's effect, and a worker running them for real."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from scheduler_svc import store
from scheduler_svc.engine.scheduler import tick_once
from scheduler_svc.targets import HandlerContext
from tests.factories import runs_of
from tests.helpers import create_job, poll_json, running_app


async def test_trigger_queues_a_manual_run_now(client: httpx.AsyncClient) -> None:
    job = await create_job(client, paused=True)
    response = await client.post(f"/jobs/{job['id']}/trigger")
    assert response.status_code == 202, response.text
    run = response.json()
    assert (run["job_id"], run["trigger"], run["status"], run["attempt"]) == (
        job["id"],
        "manual",
        "pending",
        0,
    )
    scheduled = datetime.fromisoformat(run["scheduled_for"])
    assert abs(scheduled - datetime.now(UTC)) < timedelta(seconds=5)
    assert (await client.get(f"/runs/{run['id']}")).json() == run
    assert (await client.get(f"/jobs/{job['id']}/runs")).json() == [run]


async def test_trigger_and_runs_of_a_missing_job_are_404(client: httpx.AsyncClient) -> None:
    assert (await client.post("/jobs/777777/trigger")).status_code == 404
    assert (await client.get("/jobs/777777/runs")).status_code == 404
    assert (await client.get("/runs/777777")).status_code == 404


async def test_a_job_without_runs_has_an_empty_history(client: httpx.AsyncClient) -> None:
    job = await create_job(client)
    response = await client.get(f"/jobs/{job['id']}/runs")
    assert (response.status_code, response.json()) == (200, [])


async def test_runs_page_newest_first_through_link_headers(client: httpx.AsyncClient) -> None:
    job = await create_job(client)
    ids = [(await client.post(f"/jobs/{job['id']}/trigger")).json()["id"] for _ in range(5)]
    seen: list[int] = []
    url: str | None = f"/jobs/{job['id']}/runs?limit=2"
    while url:
        response = await client.get(url)
        seen += [r["id"] for r in response.json()]
        link = response.headers.get("link")
        url = link.split(";")[0].strip("<>") if link else None
    assert seen == sorted(ids, reverse=True)


async def test_pause_skips_scheduled_runs_not_yet_started(
    client: httpx.AsyncClient, pool: Any
) -> None:
    job = await create_job(client, schedule="@every 1h")
    await pool.execute("UPDATE jobs SET next_run_at = now() - interval '1 second'")
    await tick_once(pool)
    manual = (await client.post(f"/jobs/{job['id']}/trigger")).json()
    await client.post(f"/jobs/{job['id']}/pause")
    runs = {r.trigger: r for r in await runs_of(pool, job["id"])}
    assert runs["schedule"].status == "skipped"
    assert runs["schedule"].error == "job paused before this run started"
    assert runs["manual"].id == manual["id"] and runs["manual"].status == "pending"


async def test_delete_removes_the_history(client: httpx.AsyncClient, pool: Any) -> None:
    job = await create_job(client)
    run = (await client.post(f"/jobs/{job['id']}/trigger")).json()
    assert (await client.delete(f"/jobs/{job['id']}")).status_code == 204
    assert (await client.get(f"/runs/{run['id']}")).status_code == 404
    assert await store.run_get(pool, "default", run["id"]) is None


@pytest.mark.slow  # waits for two ticks of `@every 1s` in real time
async def test_a_replica_runs_due_ticks_and_triggers_promptly(
    make_settings: Any, pool: Any, clean: None
) -> None:
    seen: list[HandlerContext] = []

    async def record(ctx: HandlerContext) -> dict[str, int]:
        seen.append(ctx)
        return {"attempt": ctx.attempt}

    settings = make_settings(role="all")
    async with (
        running_app(settings, pool, handlers={"record": record}) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        job = (
            await http.post(
                "/jobs",
                json={
                    "name": "every second",
                    "schedule": "@every 1s",
                    "target": {"type": "handler", "name": "record"},
                },
            )
        ).json()
        runs = await poll_json(
            http,
            f"/jobs/{job['id']}/runs",
            lambda rs: sum(r["status"] == "succeeded" for r in rs) >= 2,
        )
        for run in runs:
            if run["status"] != "succeeded":
                continue
            lag = datetime.fromisoformat(run["started_at"]) - datetime.fromisoformat(
                run["scheduled_for"]
            )
            assert timedelta(0) <= lag < timedelta(seconds=1), run
            assert run["output"] == {"attempt": 1}
            assert run["worker"] == settings.worker_id
        triggered = (await http.post(f"/jobs/{job['id']}/trigger")).json()
        done = await poll_json(
            http, f"/runs/{triggered['id']}", lambda r: r["status"] == "succeeded"
        )
        assert done["trigger"] == "manual"
        fetched = (await http.get(f"/jobs/{job['id']}")).json()
        assert fetched["last_run_status"] == "succeeded"
        assert fetched["lastRunTimestamp"] == fetched["last_run_at"] is not None
    assert {ctx.job_id for ctx in seen} == {job["id"]}
    assert all(ctx.idempotency_key for ctx in seen)
