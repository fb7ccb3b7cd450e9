"""Alerts (SPEC §8): the missed-tick check, the sender's deliveries (signature, key, body,
retries, the address guard, takeover of a dead sender's lease), GET /alerts, and replicas
as processes raising and delivering them exactly once per tick.

Rows of run.failed and job.recovered are written by the executors' exchange; tests of the
sender on its own insert alert rows as that statement does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from scheduler_svc import metrics, store
from scheduler_svc.engine import alerts as engine_alerts
from scheduler_svc.engine.alerts import (
    BACKOFF_MAX_S,
    BACKOFF_S,
    MAX_ATTEMPTS,
    AlertSender,
    idempotency_key,
)
from scheduler_svc.store.alerts import MISSED_LOCK_KEY, AlertRow
from scheduler_svc.targets.http import WebhookClient
from tests.factories import make_job
from tests.principals import bearer, make_key
from tests.replicas import Replicas, create_job, eventually, http_target
from tests.webhook_receiver import Recorded, Reply, WebhookReceiver, serve_receiver

pytestmark = pytest.mark.timeout(60)

SECRET = "whsec_alerts_test_0123456789"


@pytest.fixture
async def clean_alerts(pool: Any, clean: None) -> None:
    """Empty tables, alerts and tenant secrets too."""
    await pool.execute("DELETE FROM alerts; DELETE FROM tenant_secrets")


def make_sender(
    pool: Any,
    http: WebhookClient,
    operator_url: str | None = None,
    *,
    allow_private: bool = True,
    worker_id: str = "sender-1",
    **options: Any,
) -> AlertSender:
    """A sender signing with SECRET (cache off: every delivery reads the secrets)."""
    return AlertSender(
        pool,
        http,
        secrets=store.TenantSecrets(pool, SECRET, cache_s=0),
        worker_id=worker_id,
        operator_url=operator_url,
        allow_private=allow_private,
        **options,
    )


async def insert_alert(
    pool: Any,
    *,
    job_id: int = 7,
    event: str = "run.failed",
    run_id: int | None = 1234,
    url: str | None = None,
    tenant: str = "default",
    tick: datetime | None = None,
    error: str | None = "HTTP 500 from hook.example",
    next_attempt_at: datetime | None = None,
) -> AlertRow:
    """An alert row as the executors' exchange writes one."""
    tick = tick or datetime.now(UTC).replace(microsecond=0)
    body = {
        "event": event,
        "job_id": job_id,
        "job_name": f"job {job_id}",
        "run_id": run_id,
        "scheduled_for": tick.isoformat(),
        "error": error,
    }
    record = await pool.fetchrow(
        "INSERT INTO alerts (id, tenant, job_id, job_name, run_id, event, scheduled_for, url,"
        " body, next_attempt_at)"
        " VALUES (history_id('alerts_id_seq', $6), $1, $2, $3, $4, $5, $6, $7, $8,"
        " coalesce($9, now()))"
        " RETURNING *",
        tenant,
        job_id,
        f"job {job_id}",
        run_id,
        event,
        tick,
        url,
        body,
        next_attempt_at,
    )
    return AlertRow(**dict(record))


async def alert_row(pool: Any, alert_id: int) -> AlertRow:
    return AlertRow(**dict(await pool.fetchrow("SELECT * FROM alerts WHERE id = $1", alert_id)))


async def make_due(pool: Any, alert_id: int) -> None:
    """Bring an alert's next attempt (or its lease's end) to now."""
    await pool.execute("UPDATE alerts SET next_attempt_at = now() WHERE id = $1", alert_id)


def signatures(header: str) -> tuple[int, list[str]]:
    """The timestamp and every v1 of an X-Scheduler-Signature."""
    parts = [part.split("=", 1) for part in header.split(",")]
    [t] = [int(value) for name, value in parts if name == "t"]
    return t, [value for name, value in parts if name == "v1"]


def verifies(request: Recorded, secret: str) -> bool:
    """How a receiver checks X-Scheduler-Signature: any v1 made with its secret, fresh."""
    t, macs = signatures(request.headers["x-scheduler-signature"])
    expected = hmac.new(secret.encode(), f"{t}.".encode() + request.body, hashlib.sha256)
    fresh = abs(time.time() - t) < 300
    return fresh and any(hmac.compare_digest(expected.hexdigest(), mac) for mac in macs)


def counted(event: str, status: str) -> float:
    value = metrics.ALERTS.labels(event, status)._value.get()
    return float(value)


# --- delivery ---------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_alerts")
async def test_an_alert_is_posted_signed_with_its_key_and_body(
    pool: Any, http: WebhookClient, receiver: WebhookReceiver
) -> None:
    alert = await insert_alert(pool, url=receiver.url("/alerts"))
    before = counted("run.failed", "delivered")

    results = await make_sender(pool, http).send_once()

    assert results == {alert.id: "delivered"}
    [request] = receiver.requests
    assert (request.method, request.path) == ("POST", "/alerts")
    body = request.json()
    sent_at = datetime.fromisoformat(body.pop("at"))
    assert abs(sent_at - datetime.now(UTC)) < timedelta(seconds=5)
    assert body == {
        "event": "run.failed",
        "job_id": 7,
        "job_name": "job 7",
        "run_id": 1234,
        "scheduled_for": alert.scheduled_for.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "error": "HTTP 500 from hook.example",
    }
    headers = request.headers
    assert headers["idempotency-key"] == "alert-run.failed-1234"
    assert headers["content-type"] == "application/json"
    assert (headers["x-scheduler-event"], headers["x-scheduler-job-id"]) == ("run.failed", "7")
    assert headers["x-scheduler-run-id"] == "1234"
    assert verifies(request, SECRET)
    assert not verifies(request, "another secret")
    row = await alert_row(pool, alert.id)
    assert (row.status, row.attempts, row.last_error) == ("delivered", 1, None)
    assert row.delivered_at is not None
    assert counted("run.failed", "delivered") == before + 1


def test_idempotency_keys_name_the_run_or_for_a_missed_tick_the_job_and_tick() -> None:
    tick = datetime(2024, 3, 1, 12, 0, 5, tzinfo=UTC)
    fields: dict[str, Any] = {
        "id": 1, "tenant": "t", "job_id": 42, "job_name": "j", "scheduled_for": tick,
        "url": None, "body": {}, "status": "pending", "attempts": 1, "next_attempt_at": None,
        "last_error": None, "created_at": tick, "delivered_at": None,
    }  # fmt: skip
    assert idempotency_key(AlertRow(event="job.recovered", run_id=9, **fields)) == (
        "alert-job.recovered-9"
    )
    missed = AlertRow(event="job.missed", run_id=9, **fields)
    assert idempotency_key(missed) == f"alert-job.missed-42-{int(tick.timestamp())}"


@pytest.mark.usefixtures("clean_alerts")
async def test_a_failed_delivery_is_retried_with_backoff_and_honours_retry_after(
    pool: Any, http: WebhookClient, receiver: WebhookReceiver
) -> None:
    alert = await insert_alert(pool, url=receiver.url("/alerts"))
    receiver.reply_with(Reply(503), Reply(429, headers={"Retry-After": "120"}), Reply(200))
    sender = make_sender(pool, http)

    assert await sender.send_once() == {alert.id: "retried"}
    first = await alert_row(pool, alert.id)
    assert (first.status, first.attempts) == ("pending", 1)
    assert first.last_error is not None and first.last_error.startswith("HTTP 503")
    assert first.next_attempt_at is not None
    wait_s = (first.next_attempt_at - datetime.now(UTC)).total_seconds()
    assert BACKOFF_S * 0.9 <= wait_s <= BACKOFF_S * 1.2 + 1
    assert await sender.send_once() == {}, "not due before its backoff ends"

    await make_due(pool, alert.id)
    assert await sender.send_once() == {alert.id: "retried"}
    second = await alert_row(pool, alert.id)
    assert second.next_attempt_at is not None
    assert (second.next_attempt_at - datetime.now(UTC)).total_seconds() > 110, "Retry-After"

    await make_due(pool, alert.id)
    assert await sender.send_once() == {alert.id: "delivered"}
    last = await alert_row(pool, alert.id)
    assert (last.status, last.attempts) == ("delivered", 3)
    assert last.last_error is not None and last.last_error.startswith("HTTP 429")
    keys = {r.headers["idempotency-key"] for r in receiver.requests}
    assert keys == {"alert-run.failed-1234"}
    assert [r.headers["x-scheduler-attempt"] for r in receiver.requests] == ["1", "2", "3"]


@pytest.mark.usefixtures("clean_alerts")
async def test_a_client_error_fails_an_alert_at_once_and_so_does_the_last_attempt(
    pool: Any, http: WebhookClient, receiver: WebhookReceiver
) -> None:
    refused = await insert_alert(pool, job_id=1, url=receiver.url("/gone"))
    worn = await insert_alert(pool, job_id=2, url=receiver.url("/down"))
    await pool.execute("UPDATE alerts SET attempts = $1 WHERE id = $2", MAX_ATTEMPTS - 1, worn.id)
    receiver.reply_on("/gone", Reply(404))
    receiver.reply_on("/down", Reply(503))

    results = await make_sender(pool, http).send_once()

    assert results == {refused.id: "failed", worn.id: "failed"}
    for alert_id, error in ((refused.id, "HTTP 404"), (worn.id, "HTTP 503")):
        row = await alert_row(pool, alert_id)
        assert row.status == "failed" and row.next_attempt_at is None
        assert row.last_error is not None and row.last_error.startswith(error)


def test_delivery_is_retried_for_more_than_an_hour() -> None:
    # Jitter only lengthens a wait, so the shortest schedule is the sum of the bases.
    waits = [min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (n - 1)) for n in range(1, MAX_ATTEMPTS)]
    assert sum(waits) >= 3600
    assert all(engine_alerts.retry_delay_s(n) >= w for n, w in enumerate(waits, start=1))


@pytest.mark.usefixtures("clean_alerts")
async def test_a_jobs_own_alert_url_is_guarded_and_the_operators_is_trusted(
    pool: Any, receiver: WebhookReceiver
) -> None:
    own = await insert_alert(pool, job_id=1, url=receiver.url("/own"))
    operators = await insert_alert(pool, job_id=2, url=None)
    # The guarded client of a service whose webhooks may not reach private addresses.
    from scheduler_svc.targets.http import webhook_client

    async with webhook_client() as guarded:
        sender = make_sender(pool, guarded, receiver.url("/operator"), allow_private=False)
        try:
            results = await sender.send_once()
        finally:
            await sender.aclose()

    assert results == {own.id: "failed", operators.id: "delivered"}
    assert [r.path for r in receiver.requests] == ["/operator"]
    row = await alert_row(pool, own.id)
    assert row.last_error is not None and "private" in row.last_error


@pytest.mark.usefixtures("clean_alerts")
async def test_alerts_for_the_operators_url_wait_for_a_sender_that_has_it(
    pool: Any, http: WebhookClient, receiver: WebhookReceiver
) -> None:
    alert = await insert_alert(pool, url=None)

    assert await make_sender(pool, http, operator_url=None).send_once() == {}
    # A day later a sender without it gives up on it rather than keep it forever.
    await pool.execute("UPDATE alerts SET created_at = now() - interval '25 hours'")
    assert await make_sender(pool, http, operator_url=None).send_once() == {alert.id: "failed"}
    row = await alert_row(pool, alert.id)
    assert row.last_error is not None and "SCHEDULER_ALERT_URL is not set" in row.last_error
    assert receiver.requests == []


@pytest.mark.usefixtures("clean_alerts")
async def test_an_alert_leased_by_a_sender_that_died_is_delivered_by_another(
    pool: Any, http: WebhookClient, receiver: WebhookReceiver
) -> None:
    alert = await insert_alert(pool, url=receiver.url("/alerts"))
    dead = make_sender(pool, http, worker_id="dead")
    live = make_sender(pool, http, worker_id="live")

    [leased] = await dead.claim(10)  # ... and then it died before delivering
    assert leased.attempts == 1
    assert await live.send_once() == {}, "leased: nobody else takes it"
    await make_due(pool, alert.id)  # the lease runs out

    assert await live.send_once() == {alert.id: "delivered"}
    assert (await alert_row(pool, alert.id)).attempts == 2
    # Had the first sender only been slow, its late word changes nothing.
    assert await dead.deliver(leased) == "lost"
    assert (await alert_row(pool, alert.id)).status == "delivered"
    assert {r.headers["idempotency-key"] for r in receiver.requests} == {"alert-run.failed-1234"}


@pytest.mark.usefixtures("clean_alerts")
async def test_a_stopping_sender_gives_back_what_it_had_not_delivered(
    pool: Any, http: WebhookClient, receiver: WebhookReceiver
) -> None:
    alert = await insert_alert(pool, url=receiver.url("/alerts"))
    receiver.default = Reply(200, hold=True)
    sender = make_sender(pool, http)
    stop = asyncio.Event()
    loop = asyncio.create_task(sender.run(stop))
    await receiver.wait_for(1)

    stop.set()
    await asyncio.wait_for(loop, 10)

    row = await alert_row(pool, alert.id)
    assert (row.status, row.attempts) == ("pending", 0)
    assert row.next_attempt_at is not None and row.next_attempt_at <= datetime.now(UTC)


# --- the missed-tick check ----------------------------------------------------------------

MISSED_AFTER_S = 30


async def late_run(
    pool: Any,
    job_id: int,
    tick: datetime,
    status: str = "pending",
    *,
    attempt: int = 0,
    waiting: bool = False,
    trigger: str = "schedule",
    error: str | None = None,
) -> int:
    """A run of `job_id` for `tick`, in the given state."""
    run_id: int = await pool.fetchval(
        "INSERT INTO job_runs (id, job_id, tenant, scheduled_for, trigger, status, attempt,"
        " next_attempt_at, worker, lease_expires_at, started_at, finished_at, error)"
        " VALUES (run_id($2), $1, 'default', $2, $3, $4, $5,"
        " CASE WHEN $6 THEN NULL WHEN $4 = 'pending' THEN $2 END,"
        " CASE WHEN $4 = 'running' THEN 'w1' END,"
        " CASE WHEN $4 = 'running' THEN now() + interval '1 hour' END,"
        " CASE WHEN $4 <> 'pending' THEN $2 END,"
        " CASE WHEN $4 IN ('succeeded', 'failed') THEN $2 END, $7)"
        " RETURNING id",
        job_id,
        tick,
        trigger,
        status,
        attempt,
        waiting,
        error,
    )
    return run_id


async def alerted_job(pool: Any, alerts: dict[str, Any] | None, **fields: Any) -> int:
    """A job with these alert settings, its next tick far ahead (the runs are made here)."""
    far = datetime.now(UTC) + timedelta(days=1)
    job = await make_job(pool, next_run_at=far, **fields)
    await pool.execute("UPDATE jobs SET alerts = $2 WHERE id = $1", job.id, alerts)
    return job.id


async def missed_alerts(pool: Any) -> list[Any]:
    return list(
        await pool.fetch(
            "SELECT * FROM alerts WHERE event = 'job.missed' ORDER BY job_id, scheduled_for"
        )
    )


@pytest.mark.usefixtures("clean_alerts")
async def test_each_unfinished_tick_past_its_deadline_is_missed_once(
    pool: Any, http: WebhookClient
) -> None:
    settings = {"url": "https://alerts.example/hook", "missed_after_s": MISSED_AFTER_S}
    job = await alerted_job(pool, settings)
    now = await store.db_now(pool)
    late = now - timedelta(seconds=MISSED_AFTER_S + 5)
    recent = now - timedelta(seconds=MISSED_AFTER_S - 5)
    ticks = [late - timedelta(seconds=s) for s in range(8)]
    runs = {
        "not started": await late_run(pool, job, ticks[0]),
        "waiting": await late_run(pool, job, ticks[1], waiting=True),
        "running": await late_run(pool, job, ticks[2], "running", attempt=1),
        "retrying": await late_run(pool, job, ticks[3], attempt=1, error="HTTP 500 from x"),
    }
    await late_run(pool, job, ticks[4], "succeeded", attempt=1)
    await late_run(pool, job, ticks[5], "failed", attempt=3)
    await late_run(pool, job, ticks[6], trigger="manual")
    await late_run(pool, job, recent)  # pending, but not late yet

    sender = make_sender(pool, http)
    made = await sender.check_missed()
    again = await sender.check_missed()

    assert made is not None and again == []
    rows = await missed_alerts(pool)
    assert {r["run_id"] for r in rows} == set(runs.values())
    assert {r["scheduled_for"] for r in rows} == set(ticks[:4])
    assert all(r["url"] == "https://alerts.example/hook" for r in rows)
    errors = {r["run_id"]: r["body"]["error"] for r in rows}
    prefix = f"no succeeded run {MISSED_AFTER_S} s after its due time: "
    assert errors == {
        runs["not started"]: prefix + "it has not started",
        runs["waiting"]: prefix + "it is waiting for an earlier run of the job to end",
        runs["running"]: prefix + "attempt 1 is still running",
        runs["retrying"]: prefix + "attempt 1 failed and it waits to retry: HTTP 500 from x",
    }
    body = rows[0]["body"]
    assert (body["event"], body["job_id"], body["job_name"]) == ("job.missed", job, "job")


@pytest.mark.usefixtures("clean_alerts")
async def test_the_deadline_is_the_due_time_plus_missed_after_or_timeout_plus_60_s(
    pool: Any, http: WebhookClient
) -> None:
    by_default = await alerted_job(pool, {"url": "https://a.example/"}, timeout_s=30)
    tick = (await store.db_now(pool)).replace(microsecond=0) - timedelta(seconds=100)
    await late_run(pool, by_default, tick)
    # Jitter made this run due 20 s after its tick: 100 - 20 < 90 is not late yet.
    jittered = await alerted_job(pool, {"url": "https://a.example/"}, timeout_s=30)
    run_id = await late_run(pool, jittered, tick)
    await pool.execute(
        "UPDATE job_runs SET due_at = scheduled_for + interval '20 seconds' WHERE id = $1", run_id
    )
    sender = make_sender(pool, http)

    await sender.check_missed()

    assert [r["job_id"] for r in await missed_alerts(pool)] == [by_default]
    await sender.check_missed(now=tick + timedelta(seconds=110))
    assert [r["job_id"] for r in await missed_alerts(pool)] == [by_default, jittered]


@pytest.mark.usefixtures("clean_alerts")
async def test_only_jobs_alerted_on_missed_ticks_are_checked(
    pool: Any, http: WebhookClient
) -> None:
    late = (await store.db_now(pool)) - timedelta(hours=1)
    bare = await alerted_job(pool, None)  # every event, to SCHEDULER_ALERT_URL if set
    failures_only = await alerted_job(pool, {"url": "https://a.example/", "on": ["failed"]})
    no_url = await alerted_job(pool, {"on": ["missed"]})  # SCHEDULER_ALERT_URL's
    for job in (bare, failures_only, no_url):
        await late_run(pool, job, late)

    await make_sender(pool, http, operator_url=None).check_missed()
    assert await missed_alerts(pool) == []

    await make_sender(pool, http, operator_url="https://ops.example/").check_missed()
    rows = await missed_alerts(pool)
    assert [(r["job_id"], r["url"]) for r in rows] == [(bare, None), (no_url, None)]


@pytest.mark.usefixtures("clean_alerts")
async def test_a_tick_no_run_was_made_for_is_missed_too(pool: Any, http: WebhookClient) -> None:
    now = await store.db_now(pool)
    tick = now.replace(microsecond=0) - timedelta(seconds=MISSED_AFTER_S + 5)
    settings = {"url": "https://a.example/", "missed_after_s": MISSED_AFTER_S}
    job = await make_job(pool, next_run_at=tick)  # its scheduler is not keeping up
    await pool.execute("UPDATE jobs SET alerts = $2 WHERE id = $1", job.id, settings)
    paused = await make_job(pool, next_run_at=tick, paused=True)
    await pool.execute("UPDATE jobs SET alerts = $2 WHERE id = $1", paused.id, settings)

    await make_sender(pool, http).check_missed()

    [row] = await missed_alerts(pool)
    assert (row["job_id"], row["run_id"], row["scheduled_for"]) == (job.id, None, tick)
    assert row["body"]["error"].endswith("no run has been made for it yet")


@pytest.mark.usefixtures("clean_alerts")
async def test_one_replica_at_a_time_checks_and_racing_checks_alert_each_tick_once(
    pool: Any, http: WebhookClient
) -> None:
    job = await alerted_job(pool, {"url": "https://a.example/", "missed_after_s": 1})
    late = (await store.db_now(pool)).replace(microsecond=0) - timedelta(minutes=5)
    for second in range(50):
        await late_run(pool, job, late + timedelta(seconds=second))
    senders = [make_sender(pool, http, worker_id=f"s{i}") for i in range(4)]

    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT pg_advisory_xact_lock($1::int, 0)", MISSED_LOCK_KEY)
        assert await senders[0].check_missed() is None, "another replica holds the check"
    results = await asyncio.gather(*(s.check_missed() for s in senders for _ in range(3)))

    assert sum(len(made or []) for made in results) == 50
    rows = await missed_alerts(pool)
    assert len(rows) == 50 == len({r["scheduled_for"] for r in rows})


@pytest.mark.usefixtures("clean_alerts")
async def test_replicas_of_other_tenant_shards_check_their_own_tenants(
    pool: Any, http: WebhookClient
) -> None:
    job = await alerted_job(pool, {"url": "https://a.example/", "missed_after_s": 1})
    await late_run(pool, job, (await store.db_now(pool)) - timedelta(minutes=5))

    assert await make_sender(pool, http, tenants=("other",)).check_missed() == []
    assert len(await make_sender(pool, http, tenants=("default",)).check_missed() or []) == 1


# --- GET /alerts ----------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_alerts")
async def test_alerts_page_newest_first_and_each_tenant_sees_only_its_own(
    client: httpx.AsyncClient, pool: Any
) -> None:
    tenant_a = bearer(await make_key(pool, "tenant-a"))
    tenant_b = bearer(await make_key(pool, "tenant-b"))
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    made = [
        await insert_alert(
            pool,
            tenant="tenant-a",
            job_id=1 + i % 2,
            run_id=100 + i,
            tick=base + timedelta(hours=12 * i),  # over several days' partitions
            url="https://hooks.example/secret-token",
        )
        for i in range(5)
    ]
    theirs = await insert_alert(pool, tenant="tenant-b", job_id=3, run_id=200)
    await pool.execute(
        "UPDATE alerts SET status = 'failed', attempts = 13, last_error = 'HTTP 503 from x'"
        " WHERE id = $1",
        made[0].id,
    )

    seen: list[dict[str, Any]] = []
    url: str | None = "/alerts?limit=2"
    while url:
        response = await client.get(url, headers=tenant_a)
        assert response.status_code == 200, response.text
        assert len(response.json()) <= 2
        seen += response.json()
        link = response.headers.get("link")
        url = link.split(";")[0].strip("<>") if link else None

    assert [a["id"] for a in seen] == sorted((a.id for a in made), reverse=True)
    oldest = seen[-1]
    assert oldest == {
        "id": made[0].id,
        "event": "run.failed",
        "job_id": 1,
        "job_name": "job 1",
        "run_id": 100,
        "scheduled_for": base.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "error": "HTTP 500 from hook.example",
        "status": "failed",
        "attempts": 13,
        "next_attempt_at": None,
        "last_error": "HTTP 503 from x",
        "created_at": oldest["created_at"],
        "delivered_at": None,
    }
    assert seen[0]["status"] == "pending" and seen[0]["next_attempt_at"] is not None
    assert "secret-token" not in str(seen)

    of_job_2 = (await client.get("/alerts?job_id=2", headers=tenant_a)).json()
    assert [a["run_id"] for a in of_job_2] == [103, 101]
    theirs_seen = (await client.get("/alerts", headers=tenant_b)).json()
    assert [a["id"] for a in theirs_seen] == [theirs.id]
    assert (await client.get("/alerts?job_id=1", headers=tenant_b)).json() == []
    bad = await client.get("/alerts?cursor=nonsense", headers=tenant_a)
    assert bad.status_code == 400


# --- replicas as processes --------------------------------------------------------------


@pytest.fixture
async def replicas(
    tmp_path: Path, database_url: str, clean_alerts: None
) -> AsyncIterator[Replicas]:
    group = Replicas(tmp_path, database_url)
    try:
        yield group
    finally:
        await group.aclose()


def events(requests: list[Recorded], event: str) -> list[Recorded]:
    return [r for r in requests if r.path == "/alerts" and r.json()["event"] == event]


ALERTS_ON_EXCHANGE = "alerts" in store.QUERIES["runs_exchange"]


@pytest.mark.slow
@pytest.mark.skipif(
    not ALERTS_ON_EXCHANGE, reason="runs_exchange does not write run.failed alerts yet"
)
async def test_a_failed_run_and_the_recovery_after_it_are_each_alerted_once(
    replicas: Replicas, pool: Any
) -> None:
    async with serve_receiver() as receiver, httpx.AsyncClient(timeout=10) as http:
        [replica] = await replicas.start("r1", SCHEDULER_WEBHOOK_SECRET=SECRET)
        receiver.reply_on("/hook", Reply(500), Reply(500))
        job = await create_job(
            http,
            replica,
            schedule="@every 3s",
            target=http_target(receiver.url("/hook")),
            max_attempts=2,
            backoff_s=0.2,
            alerts={"url": receiver.url("/alerts"), "on": ["failed", "recovered"]},
        )

        def recovered(requests: list[Recorded]) -> bool:
            return bool(events(requests, "job.recovered"))

        await receiver.wait_until(recovered, timeout=30)
        rows = await pool.fetch("SELECT * FROM alerts WHERE job_id = $1", job["id"])

    failed = events(receiver.requests, "run.failed")
    back = events(receiver.requests, "job.recovered")
    assert len(failed) == 1 and len(back) == 1, [r.json() for r in receiver.requests]
    assert failed[0].json()["error"].startswith("HTTP 500")
    assert failed[0].headers["idempotency-key"] == f"alert-run.failed-{failed[0].json()['run_id']}"
    assert all(verifies(r, SECRET) for r in failed + back)
    assert sorted(r["event"] for r in rows) == ["job.recovered", "run.failed"]


@pytest.mark.slow
async def test_two_replicas_alert_each_tick_of_a_hung_or_blocked_job_once(
    replicas: Replicas, pool: Any
) -> None:
    wanted = 6  # ticks of each job
    async with serve_receiver() as receiver, httpx.AsyncClient(timeout=10) as http:
        receiver.reply_on("/alerts", *[Reply(200)] * 200)
        receiver.default = Reply(200, hold=True)  # the jobs' target hangs
        group = await replicas.start("r1", "r2", SCHEDULER_WEBHOOK_SECRET=SECRET)
        alerts = {"url": receiver.url("/alerts"), "on": ["missed"], "missed_after_s": 1}
        jobs = [
            # Every tick's run starts and hangs past missed_after_s.
            await create_job(http, group[0], name="hung", overlap="allow", alerts=alerts,
                             schedule="@every 1s", timeout_s=60,
                             target=http_target(receiver.url("/hook"))),
            # The first tick's run hangs; the ticks after it cannot start (overlap).
            await create_job(http, group[1], name="blocked", overlap="forbid", alerts=alerts,
                             schedule="@every 1s", timeout_s=60,
                             target=http_target(receiver.url("/hook"))),
        ]  # fmt: skip
        horizons = {
            job["id"]: datetime.fromisoformat(job["next_run_at"]) + timedelta(seconds=wanted - 1)
            for job in jobs
        }

        def alerted(requests: list[Recorded]) -> dict[int, Counter[datetime]]:
            by_job: dict[int, Counter[datetime]] = {job_id: Counter() for job_id in horizons}
            for request in events(requests, "job.missed"):
                body = request.json()
                tick = datetime.fromisoformat(body["scheduled_for"])
                if tick <= horizons[body["job_id"]]:
                    by_job[body["job_id"]][tick] += 1
            return by_job

        def every_tick(requests: list[Recorded]) -> bool:
            return all(len(ticks) == wanted for ticks in alerted(requests).values())

        await receiver.wait_until(every_tick, timeout=30)
        for job in jobs:
            await http.post(f"{group[0].url}/jobs/{job['id']}/pause")
        rows = await pool.fetch(
            "SELECT job_id, scheduled_for FROM alerts WHERE event = 'job.missed'"
        )
        receiver.release()

    missed = events(receiver.requests, "job.missed")
    twice = {
        (job_id, tick): n
        for job_id, ticks in alerted(receiver.requests).items()
        for tick, n in ticks.items()
        if n > 1
    }
    assert not twice, f"ticks alerted more than once: {twice}"
    assert len(rows) == len({(r["job_id"], r["scheduled_for"]) for r in rows})
    for request in missed:
        body = request.json()
        tick = int(datetime.fromisoformat(body["scheduled_for"]).timestamp())
        assert request.headers["idempotency-key"] == f"alert-job.missed-{body['job_id']}-{tick}"
        assert verifies(request, SECRET)


@pytest.mark.slow
async def test_an_alert_whose_replica_died_delivering_it_is_delivered_by_another(
    replicas: Replicas, pool: Any
) -> None:
    async with serve_receiver() as receiver:
        # The first delivery never gets an answer: its replica is killed meanwhile.
        receiver.reply_on("/alerts", Reply(200, hold=True))
        first, second = await replicas.start("r1", "r2")
        second.process.send_signal(signal.SIGSTOP)  # r1 alone picks the alert up
        try:
            alert = await insert_alert(pool, url=receiver.url("/alerts"))
            [held] = await receiver.wait_for(1, timeout=10)
            first.process.kill()
            first.process.wait(10)
        finally:
            second.process.send_signal(signal.SIGCONT)

        async def delivered() -> AlertRow | None:
            row = await alert_row(pool, alert.id)
            return row if row.status == "delivered" else None

        # r2 takes it over when the lease (timeout plus margin) runs out.
        row = await eventually(delivered, 30, "the alert delivered by the other replica")
        receiver.release()

    retried = receiver.requests[-1]
    assert row.attempts == 2
    assert retried.headers["idempotency-key"] == held.headers["idempotency-key"]
    assert retried.json()["run_id"] == held.json()["run_id"]
