"""Replicas as real processes: one database, several `scheduler-svc serve`, kills and outages.

Each test starts its replicas as subprocesses (`python -m scheduler_svc serve`, logs in
tmp_path), points jobs at a webhook receiver running in the test's event loop, and checks
§3 of the spec from both ends: what the receiver got, and what job_runs says.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from scheduler_svc.store import db
from scheduler_svc.store.embedded import EmbeddedPostgres
from tests.helpers import LOOPBACK
from tests.replicas import (
    LEASE_MARGIN_S,
    RUN_COLUMNS,
    SECOND,
    Delivery,
    Replicas,
    ServerControl,
    TicksReached,
    arrival,
    at_now,
    connect,
    create_job,
    deliveries,
    eventually,
    exit_code,
    grid,
    http_target,
    missing_ticks,
    percentile,
    repeated,
    reporter,
    run_row,
    runs_of_jobs,
    sample,
    settled_until,
)
from tests.webhook_receiver import Recorded, Reply, serve_receiver

# Every test here runs replicas as processes.
pytestmark = pytest.mark.slow

report = reporter("test_replicas")


@pytest.fixture
async def replicas(tmp_path: Path, database_url: str, clean: None) -> AsyncIterator[Replicas]:
    """Replicas on the test run's database, which starts empty."""
    group = Replicas(tmp_path, database_url)
    try:
        yield group
    finally:
        await group.aclose()


# --- 1. many replicas, one database ------------------------------------------------------

LOAD_JOBS = 50
LOAD_TICKS = 20  # per job: its first 20 ticks, ~20 s


@pytest.mark.timeout(120)
async def test_three_replicas_run_each_tick_once_without_gaps_and_share_the_load(
    replicas: Replicas, pool: Any
) -> None:
    names = ("r1", "r2", "r3")
    async with serve_receiver() as receiver, httpx.AsyncClient(timeout=10) as http:
        group = await replicas.start(*names)
        jobs = [
            await create_job(
                http,
                group[i % len(group)],  # through every replica's API
                name=f"load-{i}",
                schedule="@every 1s",
                target=http_target(receiver.url("/load")),
            )
            for i in range(LOAD_JOBS)
        ]
        first = {job["id"]: datetime.fromisoformat(job["next_run_at"]) for job in jobs}
        last = {job_id: tick + (LOAD_TICKS - 1) * SECOND for job_id, tick in first.items()}

        await arrival(
            receiver,
            TicksReached(last),
            LOAD_TICKS + 20,
            f"delivery of {LOAD_TICKS} ticks per job",
            watch=group,
        )
        await settled_until(pool, last)
        got = deliveries(receiver.requests)
        rows = [
            r for r in await runs_of_jobs(pool, first) if r["scheduled_for"] <= last[r["job_id"]]
        ]
        alive = {r.name: r.process.poll() for r in group}

    duplicate_ticks = repeated((d.job_id, d.tick) for d in got)
    duplicate_keys = repeated(d.key for d in got)
    in_window = [d for d in got if d.tick <= last[d.job_id]]
    by_job: dict[int, list[datetime]] = defaultdict(list)
    for d in in_window:
        by_job[d.job_id].append(d.tick)
    gaps = {
        job_id: missing
        for job_id in first
        if (missing := missing_ticks(by_job[job_id], first[job_id], last[job_id]))
    }
    off_grid = [d for d in in_window if (d.tick - first[d.job_id]) % SECOND]
    lags = sorted((r["started_at"] - r["scheduled_for"]).total_seconds() for r in rows)
    workers = Counter(r["worker"] for r in rows)
    report(
        f"load: {len(got)} deliveries, {len(in_window)} in window, "
        f"duplicate ticks {len(duplicate_ticks)}, duplicate keys {len(duplicate_keys)}, "
        f"missing ticks {sum(len(m) for m in gaps.values())}, runs per replica {dict(workers)}"
    )
    report(
        f"load: fire lag p50 {percentile(lags, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(lags, 0.99) * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms"
    )

    assert all(code is None for code in alive.values()), alive
    assert not duplicate_ticks, f"(job, tick) delivered twice: {sample(duplicate_ticks)}"
    assert not duplicate_keys, f"Idempotency-Key delivered twice: {sample(duplicate_keys)}"
    assert not gaps, f"jobs with ticks never delivered: {sample(gaps)}"
    assert not off_grid, f"ticks off the schedule: {sample(off_grid)}"
    assert len(in_window) == LOAD_JOBS * LOAD_TICKS
    assert {d.attempt for d in in_window} == {1}
    # The database agrees: one run per tick, each succeeded at its first attempt.
    assert len(rows) == LOAD_JOBS * LOAD_TICKS
    assert {(r["job_id"], r["scheduled_for"]) for r in rows} == {
        (d.job_id, d.tick) for d in in_window
    }
    not_clean = [dict(r) for r in rows if (r["status"], r["attempt"]) != ("succeeded", 1)]
    assert not not_clean, f"runs not succeeded at attempt 1: {sample(not_clean)}"
    assert set(workers) == set(names), f"every replica runs some of the load: {workers}"
    assert percentile(lags, 0.99) < 1.0


# --- 2. a replica dies mid-delivery ---------------------------------------------------------

BACKGROUND_JOBS = 10
TIMEOUT_S = 2  # job timeout: the lease is this plus LEASE_MARGIN_S


@pytest.mark.timeout(90)
async def test_a_run_of_a_killed_replica_is_taken_over_after_its_lease_with_the_same_key(
    replicas: Replicas, pool: Any
) -> None:
    async with serve_receiver() as receiver, httpx.AsyncClient(timeout=10) as http:
        group = await replicas.start("k1", "k2", "k3")
        background = [
            await create_job(
                http,
                group[i % len(group)],
                name=f"background-{i}",
                schedule="@every 1s",
                overlap="allow",  # a tick stuck on a dead replica must not hold up the next
                timeout_s=TIMEOUT_S,
                target=http_target(receiver.url("/background")),
            )
            for i in range(BACKGROUND_JOBS)
        ]
        receiver.reply_on("/victim", Reply(hold=True))
        victim = await create_job(
            http,
            group[0],
            name="victim",
            schedule=at_now(),
            timeout_s=TIMEOUT_S,
            max_attempts=3,
            target=http_target(receiver.url("/victim")),
        )

        def victim_calls(count: int) -> Callable[[list[Recorded]], bool]:
            return lambda requests: sum(r.path == "/victim" for r in requests) >= count

        await arrival(receiver, victim_calls(1), 10, "delivery of the victim job")
        held = deliveries(receiver.requests, "/victim")[0]
        leased = await run_row(pool, held.run_id)
        assert (leased["status"], leased["attempt"]) == ("running", 1), dict(leased)
        holder = next(r for r in group if r.name == leased["worker"])
        holder.process.kill()
        killed_at = time.time()
        assert await exit_code(holder.process, 5) == -signal.SIGKILL
        # Killed while the attempt was under way, well before its own timeout.
        assert killed_at - held.received_at < TIMEOUT_S / 2

        await arrival(
            receiver,
            victim_calls(2),
            TIMEOUT_S + LEASE_MARGIN_S + 10,
            "second victim delivery",
            watch=group,
        )
        first_call, second_call = [r for r in receiver.requests if r.path == "/victim"][:2]
        retried = Delivery.of(second_call)

        async def victim_done() -> asyncpg.Record | None:
            row = await run_row(pool, held.run_id)
            return row if row["status"] not in ("pending", "running") else None

        final = await eventually(victim_done, 10, "the victim run to finish")

        # Background ticks keep flowing after the kill: wait for a few past the takeover.
        flowing_from = (
            datetime.fromtimestamp(killed_at, UTC) + 2 * (TIMEOUT_S + LEASE_MARGIN_S) * SECOND
        )
        first = {job["id"]: datetime.fromisoformat(job["next_run_at"]) for job in background}
        horizon = dict.fromkeys(first, flowing_from)
        await arrival(
            receiver,
            TicksReached(horizon, "/background"),
            20,
            "background ticks after the kill",
            watch=group,
        )
        await settled_until(pool, horizon)
        got = deliveries(receiver.requests, "/background")
        rows = await runs_of_jobs(pool, first)
        survivors = {r.name for r in group} - {holder.name}
        assert all(r.process.poll() is None for r in group if r is not holder)

    takeover_s = retried.received_at - held.received_at
    lease_expired_at = leased["lease_expires_at"].timestamp()
    report(
        f"takeover: {holder.name} killed {killed_at - held.received_at:.3f} s into the attempt; "
        f"attempt 2 arrived {takeover_s:.3f} s after attempt 1, "
        f"{retried.received_at - killed_at:.3f} s after the kill, "
        f"{retried.received_at - lease_expired_at:+.3f} s from lease expiry, by {final['worker']}"
    )
    # The same run, with the same key, as the next attempt.
    assert second_call.headers["idempotency-key"] == first_call.headers["idempotency-key"]
    assert (retried.run_id, retried.job_id, retried.tick) == (held.run_id, victim["id"], held.tick)
    assert (held.attempt, retried.attempt) == (1, 2)
    assert second_call.headers.get("x-scheduler-attempt") == "2"
    # Not before the lease ran out, and promptly after.
    assert retried.received_at >= lease_expired_at - 0.05
    assert retried.received_at <= lease_expired_at + 2.0
    assert (final["status"], final["attempt"]) == ("succeeded", 2), dict(final)
    assert final["worker"] in survivors

    # Nothing lost: every background tick up to the horizon ran and was delivered. A run
    # the dead replica had under way may come again, with its key, as a later attempt.
    for job_id, tick in first.items():
        delivered = {d.tick for d in got if d.job_id == job_id and d.tick <= flowing_from}
        assert sorted(delivered) == grid(tick, flowing_from), job_id
    per_tick: dict[tuple[int, datetime], list[Delivery]] = defaultdict(list)
    for d in got:
        per_tick[d.job_id, d.tick].append(d)
    redelivered = {k: v for k, v in per_tick.items() if len(v) > 1}
    for calls in redelivered.values():
        assert len({c.key for c in calls}) == 1, calls
        assert len({c.attempt for c in calls}) == len(calls), calls
    report(f"takeover: background runs delivered again after the kill: {len(redelivered)}")
    window_rows = [r for r in rows if r["scheduled_for"] <= flowing_from]
    for job_id, tick in first.items():
        job_ticks = [r["scheduled_for"] for r in window_rows if r["job_id"] == job_id]
        assert job_ticks == grid(tick, flowing_from), job_id
    assert {r["status"] for r in window_rows} == {"succeeded"}
    retaken = [r for r in window_rows if r["attempt"] != 1]
    assert all(r["attempt"] == 2 and r["worker"] in survivors for r in retaken), retaken


# --- 3. the database restarts ---------------------------------------------------------------

OUTAGE_S = 3.0


@pytest.mark.timeout(120)
async def test_replicas_ride_out_a_database_restart_under_their_misfire_policies(
    tmp_path: Path, pg_dir: Path
) -> None:
    """The server stops cleanly for OUTAGE_S and comes back; the replicas, never restarted,
    reconnect and handle the ticks due meanwhile by each job's misfire policy (§3.2)."""
    embedded = await asyncio.to_thread(EmbeddedPostgres, pg_dir / "pg", cleanup="delete")
    group = None
    try:
        url = await asyncio.to_thread(embedded.database_url)
        control = ServerControl(embedded)
        group = Replicas(tmp_path, url)
        async with serve_receiver() as receiver, httpx.AsyncClient(timeout=10) as http:
            p1, p2 = await group.start("p1", "p2")
            target = http_target(receiver.url("/outage"))
            # overlap allow for these; the "forbid" job below runs its catch-up ticks too.
            every = {"schedule": "@every 1s", "target": target, "overlap": "allow"}
            once = await create_job(
                http, p1, name="once", misfire_policy="run_once", misfire_grace_s=0, **every
            )
            catch_up = await create_job(
                http, p2, name="all", misfire_policy="run_all", misfire_grace_s=0, **every
            )
            in_grace = await create_job(
                http, p1, name="grace", misfire_policy="run_once", misfire_grace_s=60, **every
            )
            forbid = await create_job(
                http,
                p2,
                name="forbid",
                schedule="@every 1s",
                target=target,
                misfire_policy="run_all",
                misfire_grace_s=0,
                overlap="forbid",
            )
            jobs = [once, catch_up, in_grace, forbid]
            first = {job["id"]: datetime.fromisoformat(job["next_run_at"]) for job in jobs}
            flowing = TicksReached({j: t + 2 * SECOND for j, t in first.items()})
            await arrival(receiver, flowing, 15, "three ticks of each job", watch=(p1, p2))

            await asyncio.to_thread(control.stop, "fast")
            down_at = time.time()
            await asyncio.sleep(OUTAGE_S)  # the outage itself
            await asyncio.to_thread(control.start)
            up_at = time.time()

            again = datetime.fromtimestamp(up_at, UTC) + 3 * SECOND
            reached = TicksReached(dict.fromkeys(first, again))
            await arrival(receiver, reached, 30, "ticks after the restart", watch=(p1, p2))
            back_after = min(
                d.received_at for d in deliveries(receiver.requests) if d.received_at > up_at
            )
            got = deliveries(receiver.requests)
            for replica in (p1, p2):  # they reconnected by themselves, nobody restarted them
                assert replica.process.poll() is None, replica.log_tail()
                assert (await http.get(f"{replica.url}/readyz")).status_code == 200

        pool = await db.create_pool(url, max_size=2)
        try:
            horizon = {j: max(d.tick for d in got if d.job_id == j) for j in first}
            await settled_until(pool, horizon)
            rows = await runs_of_jobs(pool, first)
        finally:
            await pool.close()
    finally:
        if group is not None:
            await group.aclose()
        await asyncio.to_thread(embedded.stop)

    down = datetime.fromtimestamp(down_at, UTC)
    up = datetime.fromtimestamp(up_at, UTC)
    ticks = {j: sorted(d.tick for d in got if d.job_id == j) for j in first}
    in_outage = {j: [t for t in ts if down < t < up] for j, ts in ticks.items()}
    # The ticks each job had while the server was down.
    outage_ticks = {j: [t for t in grid(first[j], up) if t > down] for j in first}
    report(
        f"restart: server down {up_at - down_at:.2f} s, deliveries again "
        f"{back_after - up_at:.2f} s after it was up; delivered ticks due during the outage: "
        + ", ".join(
            f"{job['name']} {len(in_outage[job['id']])}/{len(outage_ticks[job['id']])}"
            for job in jobs
        )
    )

    assert repeated((d.job_id, d.tick) for d in got) == {}
    assert repeated(d.key for d in got) == {}
    assert all(len(ts) >= 2 for ts in outage_ticks.values()), outage_ticks
    # run_all, and run_once within its grace: every tick, across the outage, exactly once.
    # Under overlap forbid as well: ticks missed while nothing of the job ran are no overlap.
    for job in (catch_up, in_grace, forbid):
        job_ticks = ticks[job["id"]]
        assert job_ticks == grid(first[job["id"]], job_ticks[-1]), job["name"]
        assert job_ticks[-1] >= again
    # run_once with no grace: of the ticks missed while down, at most the latest one runs.
    assert len(in_outage[once["id"]]) <= 1, in_outage[once["id"]]
    assert ticks[once["id"]][-1] >= again
    # overlap forbid (§3.7): the ticks missed while down ran one at a time, in tick order.
    forbid_arrivals = sorted(
        (d for d in got if d.job_id == forbid["id"]), key=lambda d: d.received_at
    )
    assert [d.tick for d in forbid_arrivals] == ticks[forbid["id"]]
    # And the database agrees: one run per delivered tick, all succeeded, none skipped.
    for job in jobs:
        job_rows = [
            r for r in rows if r["job_id"] == job["id"] and r["scheduled_for"] <= horizon[job["id"]]
        ]
        assert [r["scheduled_for"] for r in job_rows] == ticks[job["id"]], job["name"]
        assert {r["status"] for r in job_rows} == {"succeeded"}, job["name"]


@pytest.mark.timeout(90)
async def test_a_database_crash_never_makes_a_delivered_run_be_forgotten_and_sent_again(
    tmp_path: Path, pg_dir: Path
) -> None:
    """A crash (not a clean stop) loses only what was never acknowledged. A run that was
    delivered may come again after a crash, but only as the same run, under the same
    key; never as a new run of the tick, which no receiver could tell from a different
    tick's run. (Leases and results are committed without waiting for the WAL flush, so
    a crash can forget an attempt: the repeat may then carry the same attempt number.)"""
    embedded = await asyncio.to_thread(EmbeddedPostgres, pg_dir / "pg", cleanup="delete")
    group = None
    try:
        url = await asyncio.to_thread(embedded.database_url)
        control = ServerControl(embedded)
        conn = await connect(url)
        try:
            # At most 10 s before the WAL writer flushes on its own: a commit that did not
            # wait for its flush stays unflushed long enough for the crash below to find it.
            await conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        group = Replicas(tmp_path, url)
        async with serve_receiver() as receiver, httpx.AsyncClient(timeout=10) as http:
            (c1,) = await group.start("c1")
            job = await create_job(
                http,
                c1,
                name="crash",
                schedule=at_now(),
                timeout_s=TIMEOUT_S,  # a lease lost in the crash is taken over in seconds
                target=http_target(receiver.url("/crash")),
            )
            await arrival(receiver, lambda rs: len(rs) >= 1, 10, "the first delivery", [c1])
            await asyncio.to_thread(control.stop, "immediate")  # a crash, at once
            await asyncio.to_thread(control.start)

            async def settled() -> list[asyncpg.Record] | None:
                try:
                    conn = await connect(url)
                except (OSError, asyncpg.PostgresError):
                    return None  # still recovering
                try:
                    status = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job["id"])
                    runs = await conn.fetch(
                        f"SELECT {RUN_COLUMNS} FROM job_runs WHERE job_id = $1", job["id"]
                    )
                finally:
                    await conn.close()
                final = runs and all(r["status"] not in ("pending", "running") for r in runs)
                return runs if status == "completed" and final else None

            # Once the job is done and its runs are final, nothing more can be delivered.
            rows = await eventually(settled, 30, "the job to complete after the crash")
            got = deliveries(receiver.requests)
            assert c1.process.poll() is None, c1.log_tail()
    finally:
        if group is not None:
            await group.aclose()
        await asyncio.to_thread(embedded.stop)

    report(
        "crash: deliveries "
        + ", ".join(f"{d.key} tick {d.tick:%H:%M:%S} attempt {d.attempt}" for d in got)
        + f"; runs {[(r['id'], r['status'], r['attempt']) for r in rows]}"
    )
    assert {(d.job_id, d.tick) for d in got} == {
        (job["id"], datetime.fromisoformat(job["next_run_at"]))
    }
    assert len({d.key for d in got}) == 1, "the same tick came under two keys"
    [run] = rows  # one run of the tick: its materialization was not forgotten
    assert run["status"] == "succeeded"
    assert 1 <= run["attempt"] <= len(got)


# --- 4. SIGTERM drains ----------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_sigterm_puts_an_unfinished_run_back_and_the_next_replica_delivers_it(
    replicas: Replicas, pool: Any
) -> None:
    async with serve_receiver() as receiver, httpx.AsyncClient(timeout=10) as http:
        (d1,) = await replicas.start("d1", SCHEDULER_SHUTDOWN_GRACE_S="1")
        receiver.reply_on("/held", Reply(hold=True))
        job = await create_job(
            http,
            d1,
            name="held",
            schedule=at_now(),
            max_attempts=1,  # a put-back that used up the attempt would leave none to deliver it
            timeout_s=30,
            target=http_target(receiver.url("/held")),
        )
        await arrival(receiver, lambda rs: len(rs) >= 1, 10, "delivery of the held job")
        held = deliveries(receiver.requests, "/held")[0]
        leased = await run_row(pool, held.run_id)
        assert (leased["status"], leased["attempt"], leased["worker"]) == ("running", 1, "d1")

        d1.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await exit_code(d1.process, 10)
        exited_s = time.monotonic() - signalled
        assert code == 0, d1.log_tail()
        assert exited_s < 5, exited_s
        released = await run_row(pool, held.run_id)
        assert (released["status"], released["attempt"], released["error"]) == (
            "pending",
            0,
            None,
        ), dict(released)
        assert released["started_at"] is None

        await replicas.start("d2")
        await arrival(receiver, lambda rs: len(rs) >= 2, 10, "delivery by the next replica")
        again = deliveries(receiver.requests, "/held")[1]

        async def done() -> asyncpg.Record | None:
            row = await run_row(pool, held.run_id)
            return row if row["status"] not in ("pending", "running") else None

        final = await eventually(done, 10, "the put-back run to finish")

    report(f"drain: d1 exited 0 {exited_s:.2f} s after SIGTERM with grace 1 s")
    assert (again.run_id, again.job_id, again.key, again.attempt) == (
        held.run_id,
        job["id"],
        held.key,
        1,
    )
    assert (final["status"], final["attempt"], final["worker"]) == ("succeeded", 1, "d2")


@pytest.mark.timeout(60)
async def test_sigterm_stops_claiming_at_once_even_while_an_api_request_is_in_flight(
    replicas: Replicas, pool: Any
) -> None:
    """SIGTERM means stop claiming now, and drain for at most the grace (§1). A client
    in the middle of an API request must change neither."""
    grace_s = 2.0
    async with serve_receiver() as receiver, httpx.AsyncClient(timeout=10) as http:
        (s1,) = await replicas.start("s1", SCHEDULER_SHUTDOWN_GRACE_S=str(grace_s))
        receiver.reply_on("/held", Reply(hold=True))
        held_job = await create_job(
            http, s1, name="held", schedule=at_now(), target=http_target(receiver.url("/held"))
        )
        await arrival(receiver, lambda rs: len(rs) >= 1, 10, "delivery of the held job")
        held = deliveries(receiver.requests, "/held")[0]
        due = datetime.now(UTC) + timedelta(seconds=1.2)
        late_job = await create_job(
            http,
            s1,
            name="due-after-sigterm",
            schedule=f"@at {due.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}",
            target=http_target(receiver.url("/late")),
        )
        # A client in the middle of a request: headers sent, the body not yet.
        _, writer = await asyncio.open_connection(LOOPBACK, s1.port)
        try:
            writer.write(
                b"POST /jobs HTTP/1.1\r\nHost: scheduler\r\n"
                b"Content-Type: application/json\r\nContent-Length: 64\r\n\r\n{"
            )
            await writer.drain()
            assert (await http.get(f"{s1.url}/healthz")).status_code == 200  # s1 read it by now
            s1.process.send_signal(signal.SIGTERM)
            signalled = time.time()
            code = await exit_code(s1.process, 20)
            exited = time.time()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        late_calls = [r for r in receiver.requests if r.path == "/late"]
        late_run = await pool.fetchrow(
            f"SELECT {RUN_COLUMNS} FROM job_runs WHERE job_id = $1", late_job["id"]
        )
        released = await run_row(pool, held.run_id)

        report(
            f"sigterm with a request in flight: exit {code} after {exited - signalled:.2f} s "
            f"(grace {grace_s} s); the tick due {due.timestamp() - signalled:.2f} s after "
            f"SIGTERM was delivered by s1: {bool(late_calls)}"
        )
        assert code == 0, s1.log_tail()
        assert signalled < due.timestamp() < exited, "inconclusive: the tick was not due in between"
        assert not late_calls, (
            f"s1 claimed and delivered a run that came due {due.timestamp() - signalled:.2f} s "
            "after its SIGTERM"
        )
        assert late_run is None or (late_run["status"], late_run["attempt"]) == ("pending", 0)
        assert exited - signalled < grace_s + 1.0, "the drain took longer than its grace"
        assert (released["status"], released["attempt"]) == ("pending", 0), dict(released)

        # Nothing was lost: the next replica delivers both.
        await replicas.start("s2")
        await arrival(
            receiver, lambda rs: {r.path for r in rs[1:]} >= {"/held", "/late"}, 10, "handover"
        )

        # The receiver has both deliveries; s2 records each a moment after its reply.
        async def recorded() -> list[asyncpg.Record] | None:
            rows = await runs_of_jobs(pool, [held_job["id"], late_job["id"]])
            return rows if all(r["status"] not in ("pending", "running") for r in rows) else None

        rows = await eventually(recorded, 10, "s2 to record both runs")
        assert [(r["status"], r["worker"]) for r in rows] == [("succeeded", "s2")] * 2


# --- 5. roles --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_api_role_runs_nothing_and_worker_role_serves_only_health(
    replicas: Replicas, pool: Any
) -> None:
    async with serve_receiver() as receiver, httpx.AsyncClient(timeout=10) as http:
        (api,) = await replicas.start("api-only", args=("--role", "api"))
        job = await create_job(
            http,
            api,
            name="waits-for-a-worker",
            schedule="@every 1s",
            target=http_target(receiver.url("/roles")),
        )
        assert (await http.get(f"{api.url}/jobs/{job['id']}")).status_code == 200

        async def overdue_without_runs() -> bool:
            late, runs = await pool.fetchrow(
                "SELECT extract(epoch FROM now() - j.next_run_at)::float8,"
                " (SELECT count(*) FROM job_runs r WHERE r.job_id = j.id)"
                " FROM jobs j WHERE j.id = $1",
                job["id"],
            )
            assert runs == 0, "an api replica materialized a run"
            assert receiver.requests == [], "an api replica delivered a run"
            return late is not None and late >= 2

        # Due for 2 s by the database clock, and nobody took it: no scheduler runs here.
        await eventually(overdue_without_runs, 10, "the job to be 2 s overdue")

        (worker,) = await replicas.start("worker-only", args=("--role", "worker"))
        for path in ("/healthz", "/readyz"):
            assert (await http.get(f"{worker.url}{path}")).status_code == 200, path
        assert (await http.get(f"{worker.url}/jobs")).status_code == 404
        assert (await http.get(f"{worker.url}/jobs/{job['id']}")).status_code == 404
        response = await http.post(
            f"{worker.url}/jobs", json={"name": "x", "schedule": "@every 1s"}
        )
        assert response.status_code == 404

        await arrival(receiver, lambda rs: len(rs) >= 1, 10, "delivery by the worker replica")
        delivered = deliveries(receiver.requests)[0]
        row = await run_row(pool, delivered.run_id)
        assert (delivered.job_id, row["worker"]) == (job["id"], "worker-only")
        workers = await pool.fetchval(
            "SELECT array_agg(DISTINCT worker) FROM job_runs WHERE worker IS NOT NULL"
        )
        assert workers == ["worker-only"]
