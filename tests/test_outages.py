"""A database crash or restart of a few seconds under two replicas: no tick lost, none skipped.

Two `scheduler-svc serve` replicas on an embedded PostgreSQL of the test's own run
`@every 1s` webhook jobs through a fault: `pg_ctl stop -m immediate` (a crash) or
`-m fast` (a clean restart), then a start on the same data directory. A run that
finished while the server was down cannot be recorded until it is back, but it had
finished: the ticks due meanwhile are no overlaps (§3.7). They run when the server is
back, within the misfire grace, one at a time in tick order under `overlap: forbid`.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from scheduler_svc.store import db
from tests.replicas import (
    SECOND,
    Delivery,
    Replica,
    Replicas,
    TicksReached,
    arrival,
    at_now,
    create_job,
    deliveries,
    eventually,
    grid,
    http_target,
    private_server,
    reporter,
    runs_of_jobs,
    sample,
    settled_until,
    stop,
)
from tests.webhook_receiver import serve_receiver

# Every test here runs replicas and a PostgreSQL of its own as processes.
pytestmark = pytest.mark.slow

report = reporter("test_outages")

FORBID_JOBS = 12  # @every 1s, overlap forbid and misfire run_once with a 60 s grace: the defaults
ALLOW_JOBS = 2  # the same with overlap allow
LATE_JOBS = 4  # created through the replicas in turn, immediately before the fault
WARM_TICKS = 3  # of each job delivered before the fault
AFTER_S = 3  # the horizon: ticks due up to this long after the server is back
# A job's timeout; its lease is this plus the replicas' margin. A result lost in a crash
# leaves its run leased until then, and under forbid the next tick waits for it.
TIMEOUT_S = 5
WAIT_S = 30  # for any milestone after the server is back, on a busy 2-core machine


@pytest.mark.parametrize(
    ("mode", "down_s"),
    [
        pytest.param("immediate", 3.0, id="crash-3s", marks=pytest.mark.timeout(90)),
        pytest.param("immediate", 20.0, id="crash-20s", marks=pytest.mark.timeout(120)),
        pytest.param("fast", 3.0, id="restart-3s", marks=pytest.mark.timeout(90)),
    ],
)
async def test_a_database_outage_of_seconds_loses_no_tick_skips_none_and_keeps_every_write(
    tmp_path: Path, pg_dir: Path, mode: str, down_s: float
) -> None:
    async with private_server(pg_dir) as (url, control):
        group = Replicas(tmp_path, url)
        try:
            async with serve_receiver() as receiver, httpx.AsyncClient(timeout=10) as http:
                o1, o2 = pair = await group.start("o1", "o2")
                every = {
                    "schedule": "@every 1s",
                    "timeout_s": TIMEOUT_S,
                    "target": http_target(receiver.url("/tick")),
                }
                jobs = [
                    await create_job(http, pair[i % 2], name=f"forbid-{i}", **every)
                    for i in range(FORBID_JOBS)
                ] + [
                    await create_job(http, pair[i % 2], name=f"allow-{i}", overlap="allow", **every)
                    for i in range(ALLOW_JOBS)
                ]
                forbid_ids = {job["id"] for job in jobs if job["overlap"] == "forbid"}
                warm = {job["id"]: tick_of(job) + (WARM_TICKS - 1) * SECOND for job in jobs}
                await arrival(receiver, TicksReached(warm, "/tick"), WAIT_S, "warm-up", pair)

                # Acknowledged (201) just before the fault, so they must survive it.
                late = [
                    await create_job(http, pair[i % 2], name=f"late-{i}", **every)
                    for i in range(LATE_JOBS)
                ]
                forbid_ids |= {job["id"] for job in late}
                fault_at = time.time()
                await asyncio.to_thread(control.stop, mode)
                down_at = time.time()
                await asyncio.sleep(down_s)  # the outage itself
                await asyncio.to_thread(control.start)
                up_at = time.time()

                first = {job["id"]: tick_of(job) for job in jobs + late}
                horizon = datetime.fromtimestamp(up_at, UTC) + AFTER_S * SECOND
                horizons = dict.fromkeys(first, horizon)
                reached = TicksReached(horizons, "/tick")
                await arrival(receiver, reached, WAIT_S, "ticks past the horizon", pair)
                for replica in pair:
                    await eventually(partial(ready, http, replica), WAIT_S, f"{replica.name} ready")

                # Each replica's API takes a job after the fault, and it runs.
                after = [
                    await create_job(
                        http,
                        replica,
                        name=f"after-{replica.name}",
                        schedule=at_now(),
                        target=http_target(receiver.url(f"/after/{replica.name}")),
                    )
                    for replica in pair
                ]
                paths = {f"/after/{replica.name}" for replica in pair}
                await arrival(
                    receiver,
                    lambda rs: paths <= {r.path for r in rs},
                    WAIT_S,
                    "the jobs created after the fault",
                    pair,
                )

                pool = await db.create_pool(url, max_size=2)
                try:
                    await settled_until(pool, horizons, WAIT_S)
                    after_ids = [job["id"] for job in after]
                    await eventually(
                        lambda: recorded(pool, after_ids), WAIT_S, "the after-fault runs"
                    )
                    rows = await runs_of_jobs(pool, first)
                    created = [job["id"] for job in jobs + late + after]
                    kept = await pool.fetch(
                        "SELECT id FROM jobs WHERE id = ANY($1::bigint[])", created
                    )
                finally:
                    await pool.close()
                got = deliveries(receiver.requests, "/tick")

                # Never restarted: the same two processes, alive until they are told to stop.
                alive = {r.name: r.process.poll() for r in group.started}
                signalled = time.monotonic()
                codes = await asyncio.gather(*(stop(r) for r in pair))
                drained_s = time.monotonic() - signalled
        finally:
            await group.aclose()

    expected = {(j, tick) for j in first for tick in grid(first[j], horizon)}
    by_tick: dict[tuple[int, datetime], list[Delivery]] = defaultdict(list)
    for d in got:
        by_tick[d.job_id, d.tick].append(d)
    delivered = set(by_tick) & expected
    duplicates = sum(len(by_tick[t]) - 1 for t in delivered)
    lost = per_job(expected - delivered)
    skipped = per_job((r["job_id"], r["scheduled_for"]) for r in rows if r["status"] == "skipped")
    in_window = [r for r in rows if r["scheduled_for"] <= horizon]
    run_ticks = sorted((r["job_id"], r["scheduled_for"]) for r in in_window)
    runs = {(r["job_id"], r["scheduled_for"]): r["status"] for r in in_window}
    not_succeeded = per_job(t for t in expected if runs.get(t) != "succeeded")
    # At least once: a tick may come again after a crash, but as the same run, same key.
    two_keys = per_job(t for t, ds in by_tick.items() if len({d.key for d in ds}) > 1)
    two_runs = per_job(t for t, ds in by_tick.items() if len({d.run_id for d in ds}) > 1)
    ticks_of_key: dict[str, set[tuple[int, datetime]]] = defaultdict(set)
    for d in got:
        ticks_of_key[d.key].add((d.job_id, d.tick))
    shared_keys = [key for key, ticks in ticks_of_key.items() if len(ticks) > 1]
    # Under forbid a backlog runs one at a time, in tick order: so do first deliveries.
    out_of_order = {j: ts for j in forbid_ids if (ts := first_arrivals(got, j)) != sorted(ts)}
    writes_lost = sorted(set(created) - {r["id"] for r in kept})
    back = [d.received_at for d in got if d.received_at > up_at]
    report(
        f"{'crash' if mode == 'immediate' else 'restart'} {down_s:.0f} s (-m {mode}): "
        f"ticks expected {len(expected)}, delivered {len(delivered)}, "
        f"duplicates {duplicates}, lost {count(lost)}, skipped {count(skipped)}, "
        f"acknowledged writes lost {len(writes_lost)}, first delivery "
        + (f"{min(back) - up_at:.2f} s" if back else "never")
        + f" after the server was up; server down {up_at - fault_at:.2f} s "
        f"(stop took {down_at - fault_at:.2f} s), runs not succeeded {count(not_succeeded)}, "
        f"drained in {drained_s:.2f} s"
    )

    assert not lost, f"ticks never delivered, by job: {sample(lost)}"
    assert not skipped, f"runs skipped, by job: {sample(skipped)}"
    assert run_ticks == sorted(expected), "not one run per tick up to the horizon"
    assert not not_succeeded, f"ticks without a succeeded run, by job: {sample(not_succeeded)}"
    assert not two_keys, f"ticks delivered under two keys, by job: {sample(two_keys)}"
    assert not two_runs, f"ticks delivered as two runs, by job: {sample(two_runs)}"
    assert not shared_keys, f"keys delivered for two ticks: {sample(shared_keys)}"
    assert not out_of_order, f"forbid jobs whose ticks ran out of order: {sample(out_of_order)}"
    assert not writes_lost, f"acknowledged creates lost: {writes_lost}"
    assert alive == {"o1": None, "o2": None}, alive
    assert codes == [0, 0], f"exit codes after SIGTERM: {codes}\n{o1.log_tail()}\n{o2.log_tail()}"


def per_job(ticks: Iterable[tuple[int, datetime]]) -> dict[int, list[str]]:
    """(job, tick) pairs as each job's ticks, in order, by the clock (short to read)."""
    found: dict[int, list[str]] = defaultdict(list)
    for job_id, tick in sorted(ticks):
        found[job_id].append(f"{tick:%H:%M:%S.%f}"[:-3])
    return dict(found)


def count(found: dict[int, list[str]]) -> int:
    return sum(len(ticks) for ticks in found.values())


def tick_of(job: dict[str, Any]) -> datetime:
    """A job's first tick, as its creation answered."""
    return datetime.fromisoformat(job["next_run_at"])


def first_arrivals(got: list[Delivery], job_id: int) -> list[datetime]:
    """A job's ticks in the order their first deliveries arrived."""
    seen: dict[datetime, None] = {}
    for d in sorted(got, key=lambda d: d.received_at):
        if d.job_id == job_id:
            seen.setdefault(d.tick)
    return list(seen)


async def ready(http: httpx.AsyncClient, replica: Replica) -> bool:
    try:
        return (await http.get(f"{replica.url}/readyz")).status_code == 200
    except httpx.TransportError:
        return False


async def recorded(pool: Any, job_ids: list[int]) -> list[asyncpg.Record] | None:
    """The runs of these jobs once each has one and all succeeded."""
    rows = await runs_of_jobs(pool, job_ids)
    done = {r["job_id"] for r in rows if r["status"] == "succeeded"}
    return rows if done == set(job_ids) else None
