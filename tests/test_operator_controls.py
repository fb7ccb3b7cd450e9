"""Operator controls of SPEC §8 over real HTTP and a real database: tags and the tag
filter, pausing with a maintenance window (one job, or in bulk by filter) that ends by
itself, and jitter. Alerts, audit, cancel, run search and traces have their own files."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from scheduler_svc.schedule import jitter
from tests.helpers import assert_problem, create_job, running_app
from tests.replicas import eventually

pytestmark = pytest.mark.timeout(60)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def test_jobs_carry_tags_and_are_listed_by_all_the_tags_asked_for(
    client: httpx.AsyncClient,
) -> None:
    both = await create_job(client, name="both", schedule="@hourly", tags=["billing", "eu"])
    await create_job(client, name="billing only", schedule="@hourly", tags=["billing"])
    await create_job(client, name="none", schedule="@hourly")
    assert both["tags"] == ["billing", "eu"]

    listed = (await client.get("/jobs", params=[("tag", "billing"), ("tag", "eu")])).json()
    assert [job["name"] for job in listed] == ["both"]
    billing = (await client.get("/jobs", params={"tag": "billing"})).json()
    assert [job["name"] for job in billing] == ["billing only", "both"]
    assert (await client.get("/jobs", params={"tag": "nobody"})).json() == []

    changed = await client.patch(f"/jobs/{both['id']}", json={"tags": ["eu", "eu", "ops"]})
    assert changed.json()["tags"] == ["eu", "ops"]


@pytest.mark.parametrize(
    "tags",
    [["Upper"], ["-leading"], ["a" * 64], [f"t{i}" for i in range(21)], "billing"],
)
async def test_a_bad_tag_is_a_400_naming_the_field(client: httpx.AsyncClient, tags: Any) -> None:
    response = await client.post("/jobs", json={"name": "j", "schedule": "@hourly", "tags": tags})
    problem = assert_problem(response, 400)
    assert any(error["field"].startswith("tags") for error in problem["errors"]), problem


async def test_a_bad_tag_filter_is_a_400(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/jobs", params={"tag": "Not A Tag"}), 400)


async def test_jitter_and_alert_settings_are_checked_and_shown(client: httpx.AsyncClient) -> None:
    job = await create_job(
        client,
        name="j",
        schedule="@hourly",
        jitter_s=1.5,
        alerts={"on": ["failed"], "missed_after_s": 120},
    )
    assert job["jitter_s"] == 1.5
    assert job["alerts"] == {"on": ["failed"], "missed_after_s": 120}
    for bad in ({"jitter_s": -1}, {"jitter_s": 3601}, {"alerts": {"on": ["sometimes"]}}):
        response = await client.post("/jobs", json={"name": "j", "schedule": "@hourly", **bad})
        assert_problem(response, 400)
    # A job's own alert URL is guarded like a webhook's.
    private = {"alerts": {"url": "http://127.0.0.1:9/alert"}}
    response = await client.post("/jobs", json={"name": "j", "schedule": "@hourly", **private})
    problem = assert_problem(response, 400)
    assert [error["field"] for error in problem["errors"]] == ["alerts.url"]


async def test_a_single_pause_takes_a_window_and_a_resume_ends_it(
    client: httpx.AsyncClient,
) -> None:
    job = await create_job(client, name="j", schedule="@hourly")
    until = datetime.now(UTC) + timedelta(hours=1)
    paused = await client.post(f"/jobs/{job['id']}/pause", json={"until": rfc3339(until)})
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"
    assert datetime.fromisoformat(paused.json()["paused_until"]) == until
    # Without a body, as before windows.
    assert (await client.post(f"/jobs/{job['id']}/resume")).json()["paused_until"] is None
    plain = (await client.post(f"/jobs/{job['id']}/pause")).json()
    assert plain["status"] == "paused" and plain["paused_until"] is None

    past = rfc3339(datetime.now(UTC) - timedelta(seconds=1))
    problem = assert_problem(
        await client.post(f"/jobs/{job['id']}/pause", json={"until": past}), 400
    )
    assert [error["field"] for error in problem["errors"]] == ["until"]


async def test_bulk_calls_need_a_filter_and_a_dry_run_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    jobs = [
        await create_job(client, name=f"j{i}", schedule="@hourly", tags=["b"]) for i in range(3)
    ]
    for body in ({"filter": {}}, {"filter": {"all": False}}):
        assert_problem(await client.post("/jobs/bulk/pause", json=body), 400)
    window = {"until": rfc3339(datetime.now(UTC) + timedelta(hours=1))}
    resume_with_window = {"filter": {"all": True}, **window}
    assert_problem(await client.post("/jobs/bulk/resume", json=resume_with_window), 400)

    dry = await client.post("/jobs/bulk/pause", json={"filter": {"tag": "b"}, "dry_run": True})
    assert dry.json() == {"matched": 3, "changed": 0}
    assert {(await client.get(f"/jobs/{j['id']}")).json()["status"] for j in jobs} == {"active"}

    by_ids = {"filter": {"ids": [jobs[0]["id"], jobs[1]["id"]], "tag": ["b"]}}
    assert (await client.post("/jobs/bulk/pause", json=by_ids)).json() == {
        "matched": 2,
        "changed": 2,
    }
    # Pausing again changes no status; with a window it sets the window of those paused.
    again = {**by_ids, **window}
    assert (await client.post("/jobs/bulk/pause", json=again)).json() == {
        "matched": 2,
        "changed": 0,
    }
    assert (await client.get(f"/jobs/{jobs[0]['id']}")).json()["paused_until"] is not None
    everything = {"filter": {"all": True, "status": "paused"}}
    assert (await client.post("/jobs/bulk/resume", json=everything)).json() == {
        "matched": 2,
        "changed": 2,
    }


@pytest.fixture
async def engine(make_settings: Any, pool: Any, clean: None) -> AsyncIterator[httpx.AsyncClient]:
    """A replica serving the API with its scheduler and executors running."""
    async with (
        running_app(make_settings(role="all"), pool) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        yield http


@pytest.mark.slow  # a window of five seconds in real time
async def test_a_bulk_pause_by_tag_until_a_time_pauses_those_jobs_and_they_resume_by_themselves(
    engine: httpx.AsyncClient, pool: Any
) -> None:
    billing = [
        await create_job(engine, name=f"bill {i}", schedule="@every 1s", tags=["billing"])
        for i in range(3)
    ]
    others = [await create_job(engine, name=f"other {i}", schedule="@every 1s") for i in range(2)]
    started = await pool.fetchval("SELECT now()")
    until = started + timedelta(seconds=5)
    body = {"filter": {"tag": "billing"}, "until": rfc3339(until)}
    answer = await engine.post("/jobs/bulk/pause", json=body)
    assert answer.json() == {"matched": 3, "changed": 3}, answer.text
    for job in billing:
        shown = (await engine.get(f"/jobs/{job['id']}")).json()
        assert shown["status"] == "paused"
        assert datetime.fromisoformat(shown["paused_until"]) == until
    for job in others:
        assert (await engine.get(f"/jobs/{job['id']}")).json()["status"] == "active"

    async def resumed() -> bool:
        shown = [(await engine.get(f"/jobs/{job['id']}")).json() for job in billing]
        return all(j["status"] == "active" and j["paused_until"] is None for j in shown)

    await eventually(resumed, 15, "the billing jobs to resume at the window's end")

    async def ran_after_window() -> bool:
        count: int = await pool.fetchval(
            "SELECT count(DISTINCT job_id) FROM job_runs"
            " WHERE job_id = ANY($1::bigint[]) AND scheduled_for >= $2",
            [job["id"] for job in billing],
            until,
        )
        return count == len(billing)

    await eventually(ran_after_window, 10, "every billing job to tick after the window")
    inside = await pool.fetch(
        "SELECT job_id, scheduled_for FROM job_runs WHERE job_id = ANY($1::bigint[])"
        " AND scheduled_for > $2 AND scheduled_for < $3",
        [job["id"] for job in billing],
        started + timedelta(milliseconds=100),
        until,
    )
    assert inside == [], "ticks inside the window ran"
    # The jobs outside the filter ticked through the window.
    other_ticks = await pool.fetchval(
        "SELECT count(*) FROM job_runs WHERE job_id = ANY($1::bigint[])"
        " AND scheduled_for > $2 AND scheduled_for < $3",
        [job["id"] for job in others],
        started,
        until,
    )
    assert other_ticks >= 2 * 3
    trail = await pool.fetch(
        "SELECT actor, action FROM audit WHERE job_id = $1 ORDER BY id", billing[0]["id"]
    )
    assert [tuple(r) for r in trail][-2:] == [("open", "job.pause"), ("system", "job.resume")]


def test_every_process_computes_the_same_offsets() -> None:
    ticks = [datetime(2026, 12, 7, 10, 0, s, tzinfo=UTC) for s in range(50)]
    here = [jitter.offset_s(job_id, tick, 1.0) for job_id in range(1, 21) for tick in ticks]
    code = (
        "from datetime import UTC, datetime\n"
        "from scheduler_svc.schedule import jitter\n"
        "ticks = [datetime(2026, 12, 7, 10, 0, s, tzinfo=UTC) for s in range(50)]\n"
        "print(repr([jitter.offset_s(j, t, 1.0) for j in range(1, 21) for t in ticks]))\n"
    )
    # A new interpreter has another hash seed: the offsets must not depend on it.
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert repr(here) == there.stdout.strip()
    assert all(0 <= offset < 1 and round(offset, 3) == offset for offset in here)
    assert jitter.offset_s(1, ticks[0], 0) == 0


@pytest.mark.slow  # a thousand jobs ticking for a few seconds
async def test_a_thousand_jittered_jobs_spread_their_starts_over_the_second(
    engine: httpx.AsyncClient, pool: Any
) -> None:
    # Overlap allowed: on a loaded machine a run started late would make its job's next
    # tick an overlap, which is not what this measures.
    await pool.execute(
        "INSERT INTO jobs (tenant, name, schedule, jitter_s, status, next_run_at, overlap)"
        " SELECT 'default', 'jittered ' || i, '@every 1s', 1, 'active',"
        "        date_trunc('second', now()) + interval '2 s', 'allow'"
        " FROM generate_series(1, 1000) AS i"
    )
    first = await pool.fetchval("SELECT min(next_run_at) FROM jobs")

    async def three_ticks_done() -> bool:
        done: int = await pool.fetchval(
            "SELECT count(*) FROM job_runs WHERE status = 'succeeded' AND scheduled_for < $1",
            first + timedelta(seconds=3),
        )
        return done >= 3000

    try:
        await eventually(three_ticks_done, 40, "three ticks of 1,000 jittered jobs")
    except AssertionError:
        statuses = await pool.fetch(
            "SELECT status, count(*) FROM job_runs WHERE scheduled_for < $1 GROUP BY status",
            first + timedelta(seconds=3),
        )
        raise AssertionError(f"runs by status: {[tuple(r) for r in statuses]}") from None
    runs = await pool.fetch(
        "SELECT job_id, scheduled_for, due_at, started_at FROM job_runs WHERE scheduled_for < $1",
        first + timedelta(seconds=3),
    )
    assert len(runs) == 3000
    for run in runs:
        expected = jitter.due_at(run["job_id"], run["scheduled_for"], 1.0)
        assert run["due_at"] == expected, run
        assert run["started_at"] >= run["due_at"], run
    # Spread: each tenth of the second holds about a tenth of the starts.
    tenths = Counter(
        min(int((run["due_at"] - run["scheduled_for"]).total_seconds() * 10), 9) for run in runs
    )
    assert all(200 <= tenths[i] <= 400 for i in range(10)), tenths
    lags = sorted((run["started_at"] - run["due_at"]).total_seconds() for run in runs)
    assert lags[len(lags) // 2] < 0.5, lags[len(lags) // 2]
    # The job still shows its tick, not the due time.
    shown = (await engine.get("/jobs", params={"limit": 1})).json()[0]
    next_run = datetime.fromisoformat(shown["next_run_at"])
    assert next_run.microsecond == 0
