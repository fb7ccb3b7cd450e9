"""Cancelling runs (SPEC §8): POST /runs/{id}/cancel, the executor that stops a running
attempt or drops its late result, the race between a cancel and a result, the runs that
waited for a cancelled one, and `scheduler-svc runs cancel` and the clients.

A replica here is the app with a worker (role `all`) served in this event loop, so that
its logs can be captured and its executor looked at; webhooks go to the test receiver,
which can hold a request for as long as a test needs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
from litestar import Litestar
from prometheus_client import REGISTRY

from scheduler_svc import store
from scheduler_svc.app import create_app
from scheduler_svc.client import AsyncClient, Client, ProblemError
from scheduler_svc.engine.executor import Executor
from scheduler_svc.engine.scheduler import tick_once
from scheduler_svc.models import RunResult
from scheduler_svc.schedule.overlap import OVERLAP_SKIPPED
from scheduler_svc.targets import Deliverer, HandlerContext
from scheduler_svc.targets.http import WebhookClient
from tests.factories import make_job
from tests.helpers import LOOPBACK, assert_problem, create_job, serving
from tests.principals import bearer, make_key
from tests.replicas import eventually, reporter
from tests.test_cli_api import json_lines, one_line, scheduler_svc
from tests.webhook_receiver import Reply, WebhookReceiver

pytestmark = [pytest.mark.usefixtures("clean"), pytest.mark.timeout(60)]

CANCELLED = {"status": "cancelled"}
report = reporter("test_cancel")
Handler = Callable[[HandlerContext], Awaitable[Any]]


def cancels_counted() -> float:
    """scheduler_runs_total{status="cancelled"} in this process."""
    return REGISTRY.get_sample_value("scheduler_runs_total", CANCELLED) or 0.0


@asynccontextmanager
async def replica(
    make_settings: Any,
    pool: asyncpg.Pool[Any],
    http: WebhookClient,
    handlers: dict[str, Handler] | None = None,
) -> AsyncIterator[tuple[httpx.AsyncClient, Litestar]]:
    """The app with a worker (API, scheduler, executor) on the test database: an HTTP
    client of it, and the app (its worker is app.state.worker)."""
    settings = make_settings(
        role="all",
        worker_id="cancel-replica",
        webhook_allow_private=True,
        lease_margin_s=1.0,
        shutdown_grace_s=1.0,
    )
    app = create_app(settings, pool=pool, http=http, handlers=handlers)
    async with (
        serving(app, "the test replica", lifespan="on") as port,
        httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{port}", timeout=10) as client,
    ):
        yield client, app


async def paused_job_run(client: httpx.AsyncClient, **fields: Any) -> tuple[int, dict[str, Any]]:
    """A paused job (no ticks of its own) and a manual run of it: the job's id and the run."""
    job = await create_job(client, paused=True, **fields)
    response = await client.post(f"/jobs/{job['id']}/trigger")
    assert response.status_code == 202, response.text
    run: dict[str, Any] = response.json()
    return job["id"], run


async def audit_rows(pool: asyncpg.Pool[Any], run_id: int) -> list[dict[str, Any]]:
    """The run.cancel rows of the audit trail about run `run_id`."""
    rows = await pool.fetch(
        "SELECT action, job_id, run_id, changes, actor FROM audit"
        " WHERE run_id = $1 AND action = 'run.cancel'",
        run_id,
    )
    return [dict(r) for r in rows]


def events(logs: list[MutableMapping[str, Any]], name: str, run_id: int) -> list[Any]:
    """The captured lines `name` about run `run_id`."""
    return [e for e in logs if e["event"] == name and e.get("run_id") == run_id]


# --- the API on its own ---------------------------------------------------------------------


async def test_a_pending_run_is_cancelled_at_once_and_audited(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    job_id, run = await paused_job_run(client)
    counted = cancels_counted()
    # No body and no Content-Type, as curl -X POST sends it.
    response = await client.post(f"/runs/{run['id']}/cancel")
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert (cancelled["id"], cancelled["status"], cancelled["attempt"]) == (
        run["id"],
        "cancelled",
        0,
    )
    assert cancelled["finished_at"] is not None and cancelled["next_attempt_at"] is None
    assert (await client.get(f"/runs/{run['id']}")).json() == cancelled
    assert cancels_counted() == counted + 1
    [row] = await audit_rows(pool, run["id"])
    assert row["action"] == "run.cancel" and row["job_id"] == job_id
    assert row["changes"] == {"status": ["pending", "cancelled"]}


async def test_a_json_body_is_accepted_and_ignored(client: httpx.AsyncClient) -> None:
    _, run = await paused_job_run(client)
    response = await client.post(f"/runs/{run['id']}/cancel", json={})
    assert (response.status_code, response.json()["status"]) == (200, "cancelled")


async def test_a_run_that_has_ended_is_409_naming_its_status(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    job_id, run = await paused_job_run(client)
    assert (await client.post(f"/runs/{run['id']}/cancel")).status_code == 200
    counted = cancels_counted()
    again = assert_problem(await client.post(f"/runs/{run['id']}/cancel"), 409)
    assert again["type"] == "urn:scheduler-svc:problem:run-final"
    assert again["title"] == "Run already ended"
    assert again["detail"] == f"run {run['id']} has already ended: it is cancelled"
    assert again["run_status"] == "cancelled"
    assert cancels_counted() == counted
    assert len(await audit_rows(pool, run["id"])) == 1

    # A run skipped because its job was paused before it started.
    await client.post(f"/jobs/{job_id}/resume")
    await pool.execute("UPDATE jobs SET next_run_at = now() - interval '1 second'")
    await tick_once(pool)
    await client.post(f"/jobs/{job_id}/pause")
    [skipped] = [
        r for r in (await client.get(f"/jobs/{job_id}/runs")).json() if r["trigger"] == "schedule"
    ]
    assert skipped["status"] == "skipped"
    problem = assert_problem(await client.post(f"/runs/{skipped['id']}/cancel"), 409)
    assert problem["run_status"] == "skipped"
    assert "it is skipped" in problem["detail"]


async def test_a_run_of_another_tenant_or_none_is_404(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    tenant_a = bearer(await make_key(pool, "tenant-a"))
    tenant_b = bearer(await make_key(pool, "tenant-b"))
    job = await client.post("/jobs", json={"name": "a", "schedule": "@every 1h"}, headers=tenant_a)
    run = (await client.post(f"/jobs/{job.json()['id']}/trigger", headers=tenant_a)).json()
    theirs = assert_problem(await client.post(f"/runs/{run['id']}/cancel", headers=tenant_b), 404)
    assert theirs["detail"] == f"run {run['id']} does not exist"
    missing = assert_problem(await client.post("/runs/999999999/cancel", headers=tenant_b), 404)
    assert missing["detail"] == "run 999999999 does not exist"
    still = (await client.get(f"/runs/{run['id']}", headers=tenant_a)).json()
    assert still["status"] == "pending"
    reader = bearer(await make_key(pool, "tenant-a", "jobs:read"))
    assert (await client.post(f"/runs/{run['id']}/cancel", headers=reader)).status_code == 403
    ok = await client.post(f"/runs/{run['id']}/cancel", headers=tenant_a)
    assert ok.json()["status"] == "cancelled"


# --- the row decides a race (two connections, each order forced) ----------------------------


async def leased_run(pool: asyncpg.Pool[Any], worker: str) -> int:
    """A manual run, leased to `worker` (running), as an executor's exchange leases it."""
    job = await make_job(pool, next_run_at=None, paused=True)
    run = await store.run_trigger(pool, "default", job.id)
    assert run is not None
    exchange = await store.runs_exchange(pool, worker, [], 1, 10)
    assert [claimed.id for claimed in exchange.leased] == [run.id]
    return run.id


async def blocked(pool: asyncpg.Pool[Any], pid: int) -> bool:
    """Whether the session `pid` waits for a lock another session holds."""
    blockers: list[int] = await pool.fetchval("SELECT pg_blocking_pids($1)", pid)
    return bool(blockers)


async def test_a_result_after_a_committed_cancel_is_dropped(pool: asyncpg.Pool[Any]) -> None:
    run_id = await leased_run(pool, "w1")
    success = RunResult(
        run_id=run_id, status="succeeded", delay_s=None, error=None, output=None, duration_ms=5
    )
    async with pool.acquire() as cancelling, pool.acquire() as recording:
        transaction = cancelling.transaction()
        await transaction.start()
        assert await store.run_cancel(cancelling, "default", run_id) is not None
        # The executor's exchange waits for the cancel's lock on the row...
        exchange = asyncio.create_task(store.runs_exchange(recording, "w1", [success], 0, 10))
        await eventually(
            lambda: blocked(pool, recording.get_server_pid()), 5, "the exchange to wait"
        )
        await transaction.commit()
        # ...and finds no lease left to record its result under.
        assert (await exchange).recorded == set()
    run = await store.run_get(pool, "default", run_id)
    assert run is not None and (run.status, run.lease_expires_at) == ("cancelled", None)


async def test_a_cancel_after_a_committed_result_is_409(pool: asyncpg.Pool[Any]) -> None:
    run_id = await leased_run(pool, "w1")
    success = RunResult(
        run_id=run_id, status="succeeded", delay_s=None, error=None, output=None, duration_ms=5
    )
    async with pool.acquire() as recording, pool.acquire() as cancelling:
        transaction = recording.transaction()
        await transaction.start()
        assert (await store.runs_exchange(recording, "w1", [success], 0, 10)).recorded == {run_id}
        cancel = asyncio.create_task(store.run_cancel(cancelling, "default", run_id))
        await eventually(
            lambda: blocked(pool, cancelling.get_server_pid()), 5, "the cancel to wait"
        )
        await transaction.commit()
        # The cancel sees the run as the result left it: ended, so nothing to cancel.
        assert await cancel is None
    run = await store.run_get(pool, "default", run_id)
    assert run is not None and run.status == "succeeded"


# --- the executor ---------------------------------------------------------------------------


def executor(
    pool: asyncpg.Pool[Any], http: WebhookClient, handlers: dict[str, Handler]
) -> Executor:
    deliverer = Deliverer(http, allow_private=True, handlers=handlers)
    return Executor(pool, deliverer, worker_id="w1")


async def test_a_late_result_of_a_cancelled_run_is_dropped_not_retried_nor_a_failure(
    pool: asyncpg.Pool[Any], http: WebhookClient, receiver: WebhookReceiver
) -> None:
    receiver.reply_with(Reply(503))  # a retryable failure: recorded, it would be retried
    job = await make_job(
        pool, next_run_at=None, paused=True, target={"type": "http", "url": receiver.url()}
    )
    run = await store.run_trigger(pool, "default", job.id)
    assert run is not None
    ex = executor(pool, http, {})
    [claimed] = await ex.claim_once(1)
    ex._start(claimed)
    await asyncio.gather(*ex._inflight.values())  # the attempt failed: a retry is collected
    assert await store.run_cancel(pool, "default", run.id) is not None  # no NOTIFY heard here
    with structlog.testing.capture_logs() as logs:
        exchange = await ex.exchange_once(1)
    assert exchange.recorded == set() and exchange.leased == []
    [line] = events(logs, "run_cancelled", run.id)
    assert (
        line.items()
        >= {
            "job_id": job.id,
            "tick": run.scheduled_for.isoformat(),
            "attempt": 1,
            "worker": "w1",
            "dropped_result": "pending",
        }.items()
    )
    assert not [e for e in logs if e["event"] == "lease_lost" or e["log_level"] == "error"]
    stored = await store.run_get(pool, "default", run.id)
    assert stored is not None and (stored.status, stored.attempt) == ("cancelled", 1)
    assert len(receiver.requests) == 1


async def test_a_run_cancelled_between_its_lease_and_its_start_never_starts(
    pool: asyncpg.Pool[Any], http: WebhookClient
) -> None:
    called: list[int] = []

    async def record(ctx: HandlerContext) -> None:
        called.append(ctx.run_id)

    job = await make_job(
        pool, next_run_at=None, paused=True, target={"type": "handler", "name": "record"}
    )
    run = await store.run_trigger(pool, "default", job.id)
    assert run is not None
    ex = executor(pool, http, {"record": record})
    [claimed] = await ex.claim_once(1)
    assert await store.run_cancel(pool, "default", run.id) is not None
    with structlog.testing.capture_logs() as logs:
        ex.cancel(run.id)  # its NOTIFY, heard before the run was started
        ex._start(claimed)
    assert ex._inflight == {} and called == []
    assert len(events(logs, "run_cancelled", run.id)) == 1


async def test_a_cancel_whose_notify_was_lost_is_found_when_listening_again(
    pool: asyncpg.Pool[Any], http: WebhookClient
) -> None:
    entered = asyncio.Event()

    async def forever(ctx: HandlerContext) -> None:
        entered.set()
        await asyncio.Event().wait()

    job = await make_job(
        pool, next_run_at=None, paused=True, target={"type": "handler", "name": "forever"}
    )
    run = await store.run_trigger(pool, "default", job.id)
    assert run is not None
    ex = executor(pool, http, {"forever": forever})
    [claimed] = await ex.claim_once(1)
    ex._start(claimed)
    await entered.wait()
    assert await store.run_cancel(pool, "default", run.id) is not None
    task = ex._inflight[run.id]
    with structlog.testing.capture_logs() as logs:
        await ex.cancels.recheck()  # what the worker does once its LISTEN connection is back
        await task
    assert ex._inflight == {}
    assert len(events(logs, "run_cancelled", run.id)) == 1
    assert ex._results == []  # nothing to record: the row is final already


# --- a replica: the attempt under way is stopped --------------------------------------------


async def test_a_webhook_in_flight_is_stopped_within_2_s_and_never_retried(
    make_settings: Any,
    pool: asyncpg.Pool[Any],
    http: WebhookClient,
    receiver: WebhookReceiver,
) -> None:
    receiver.reply_on("/hold", Reply(hold=True))
    async with replica(make_settings, pool, http) as (client, app):
        executor_: Executor = app.state.worker.executor
        _, run = await paused_job_run(
            client,
            target={"type": "http", "url": receiver.url("/hold")},
            timeout_s=1,
            max_attempts=3,
            backoff_s=1,
        )
        await receiver.wait_for(1)
        assert executor_._inflight.keys() == {run["id"]}
        counted = cancels_counted()
        with structlog.testing.capture_logs() as logs:
            asked = time.monotonic()
            response = await client.post(f"/runs/{run['id']}/cancel")
            assert (response.status_code, response.json()["status"]) == (200, "cancelled")
            answered = time.monotonic()

            async def stopped() -> list[dict[str, Any]]:
                # Stopped, logged, and its slot free.
                return [] if executor_._inflight else events(logs, "run_cancelled", run["id"])

            [line] = await eventually(stopped, 2, "the replica to stop the attempt", 0.01)
            took = time.monotonic() - asked
        assert line.items() >= {"attempt": 1, "worker": "cancel-replica"}.items()
        assert cancels_counted() == counted + 1
        # Past the attempt's timeout, its lease and the first retry's backoff: nothing more.
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            stored = (await client.get(f"/runs/{run['id']}")).json()
            assert (stored["status"], stored["attempt"]) == ("cancelled", 1), stored
            assert len(receiver.requests) == 1
            await asyncio.sleep(0.1)
        report(
            f"cancel answered in {(answered - asked) * 1000:.1f} ms, attempt stopped in "
            f"{took * 1000:.1f} ms"
        )


async def test_runs_that_waited_for_a_cancelled_run_are_decided_within_a_second(
    make_settings: Any,
    pool: asyncpg.Pool[Any],
    http: WebhookClient,
    receiver: WebhookReceiver,
) -> None:
    receiver.reply_on("/hold", Reply(hold=True))  # the first call hangs; the next answer 200
    async with replica(make_settings, pool, http) as (client, _):
        job = await create_job(
            client,
            schedule="@every 1s",
            overlap="forbid",
            target={"type": "http", "url": receiver.url("/hold")},
            timeout_s=60,
        )
        [first] = await receiver.wait_for(1)
        running = first.json()["run_id"]

        async def waiting() -> list[int]:
            rows = await pool.fetch(
                "SELECT id FROM job_runs WHERE job_id = $1 AND status = 'pending'"
                " AND next_attempt_at IS NULL",
                job["id"],
            )
            return [r["id"] for r in rows]

        waiters = await eventually(waiting, 5, "a tick to wait for the running run")
        response = await client.post(f"/runs/{running}/cancel")
        assert response.json()["status"] == "cancelled"
        asked = time.monotonic()

        async def decided() -> list[Any]:
            rows = await pool.fetch(
                "SELECT status, error FROM job_runs WHERE id = ANY($1::bigint[])"
                " AND status <> 'pending'",
                waiters,
            )
            return rows if len(rows) == len(waiters) else []

        rows = await eventually(decided, 1.5, "the waiting runs to be decided", 0.01)
        took = time.monotonic() - asked
        # Their ticks came while the cancelled run was running: overlaps, so skipped.
        assert {(r["status"], r["error"]) for r in rows} == {("skipped", OVERLAP_SKIPPED)}
        await client.post(f"/jobs/{job['id']}/pause")
    report(f"{len(waiters)} waiting run(s) decided {took * 1000:.1f} ms after the cancel")


async def test_a_cancel_racing_a_success_has_one_outcome_and_says_which(
    make_settings: Any, pool: asyncpg.Pool[Any], http: WebhookClient
) -> None:
    started: dict[int, asyncio.Event] = {}
    finish: dict[int, asyncio.Event] = {}

    async def gate(ctx: HandlerContext) -> dict[str, bool]:
        started.setdefault(ctx.run_id, asyncio.Event()).set()
        await finish.setdefault(ctx.run_id, asyncio.Event()).wait()
        return {"done": True}

    outcomes: list[str] = []
    with structlog.testing.capture_logs() as logs:
        async with replica(make_settings, pool, http, {"gate": gate}) as (client, _):
            job = await create_job(client, paused=True, target={"type": "handler", "name": "gate"})
            # From the cancel well ahead of the result to well behind it.
            for delay_s in (0.0, 0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.2):
                run = (await client.post(f"/jobs/{job['id']}/trigger")).json()
                await asyncio.wait_for(started.setdefault(run["id"], asyncio.Event()).wait(), 5)
                finish.setdefault(run["id"], asyncio.Event()).set()
                await asyncio.sleep(delay_s)
                response = await client.post(f"/runs/{run['id']}/cancel")
                if response.status_code == 200:
                    outcome = response.json()["status"]
                else:
                    outcome = assert_problem(response, 409)["run_status"]
                outcomes.append(outcome)

                async def settled(r: dict[str, Any] = run, o: str = outcome) -> bool:
                    stored = (await client.get(f"/runs/{r['id']}")).json()
                    assert stored["status"] == o, (stored, o)
                    return o == "succeeded" or bool(events(logs, "run_cancelled", r["id"]))

                await eventually(settled, 5, "the executor to be done with the run")
            # Each answer holds: nothing recorded over a cancel, nor cancelled after a result.
            runs = (await client.get(f"/jobs/{job['id']}/runs")).json()
    assert sorted(r["status"] for r in runs) == sorted(outcomes)
    assert set(outcomes) <= {"cancelled", "succeeded"}
    assert not [e for e in logs if e["event"] == "lease_lost"]
    report(f"outcomes of a cancel racing a success: {sorted(outcomes)}")


# --- the command line and the clients -------------------------------------------------------


async def test_cli_runs_cancel_prints_the_run_and_a_problem_in_one_line(
    api_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The app serving in this process logs each request: into a list, not the output.
    with structlog.testing.capture_logs():
        async with httpx.AsyncClient(base_url=api_url) as client:
            _, run = await paused_job_run(client)
        run_id = str(run["id"])
        code, out, err = await scheduler_svc(capsys, "runs", "cancel", run_id, "--url", api_url)
        assert (code, err) == (0, "")
        [cancelled] = json_lines(out)
        assert (cancelled["id"], cancelled["status"]) == (run["id"], "cancelled")
        code, out, err = await scheduler_svc(capsys, "runs", "cancel", run_id, "--url", api_url)
        assert (code, out) == (1, "")
        assert one_line(err) == (
            f"scheduler-svc: 409 Run already ended: run {run_id} has already ended: it is cancelled"
        )
        code, _, err = await scheduler_svc(capsys, "runs", "cancel", "987654321", "--url", api_url)
        assert code == 1
        assert one_line(err) == "scheduler-svc: 404 Not found: run 987654321 does not exist"


async def test_clients_cancel_a_run_and_raise_the_409_with_its_status(api_url: str) -> None:
    async with httpx.AsyncClient(base_url=api_url) as client:
        _, first = await paused_job_run(client)
        _, second = await paused_job_run(client)
    async with AsyncClient(api_url) as api:
        cancelled = await api.cancel_run(first["id"])
        assert (cancelled.id, cancelled.status) == (first["id"], "cancelled")
        with pytest.raises(ProblemError) as ended:
            await api.cancel_run(first["id"])
    assert (ended.value.status, ended.value.type) == (409, "urn:scheduler-svc:problem:run-final")
    assert ended.value.problem.run_status == "cancelled"

    def blocking() -> tuple[str, int]:
        with Client(api_url) as api:
            run = api.cancel_run(second["id"])
            with pytest.raises(ProblemError) as missing:
                api.cancel_run(987654321)
            return run.status, missing.value.status

    assert await asyncio.to_thread(blocking) == ("cancelled", 404)
