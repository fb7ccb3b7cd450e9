"""Through nginx: two API replicas and two workers on one database, with one of each killed.

The cluster is bench/cluster.py's: real `scheduler-svc serve` processes and Debian's nginx,
on the test run's database. Clients talk only to nginx and never retry; jobs deliver to a
webhook receiver in this event loop, which counts deliveries by Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.cluster import Cluster, Process, cluster, nginx_binary
from scheduler_svc.store import db
from tests.console import sse_events
from tests.replicas import (
    SECOND,
    deliveries,
    eventually,
    grid,
    repeated,
    runs_of_jobs,
    sample,
    settled_until,
)
from tests.webhook_receiver import Reply, serve_receiver

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        nginx_binary() is None,
        reason="nginx is not installed (apt-get install nginx-light; .ci/run installs it)",
    ),
]

JOBS = 200  # on @every 1s
HTTP_JOBS = 40  # of them deliver to the receiver; the others use the log target (cheaper)
CLIENTS = 4  # concurrent client loops sending creates and reads through nginx
# Job timeout; the lease is this plus LEASE_MARGIN_S. Long enough that no attempt times
# out on a busy 2-core machine (a timed-out attempt is retried: a second delivery).
TIMEOUT_S = 5
LEASE_MARGIN_S = 1
HOLD_S = 0.2  # the receiver answers each delivery this late, so runs are in flight at a kill
AFTER_TAKEOVER_S = 4  # ticks observed past the killed worker's lease expiry
WAIT_S = 30  # for any milestone of the run; a loaded 2-core machine lags


def report(line: str) -> None:
    print(f"[test_loadbalancer] {line}")  # shown with -s or -rP


@dataclass(frozen=True)
class Sent:
    """One client request through nginx, as the client saw it."""

    request_id: str
    method: str
    path: str
    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no response at all
    error: str | None  # the transport error, or the unexpected status with its body

    @property
    def failed(self) -> bool:
        return self.error is not None

    def overlaps(self, start: float, end: float) -> bool:
        return self.started <= end and self.ended >= start


class Traffic:
    """CLIENTS loops of creates and reads through nginx, each request recorded, none retried."""

    def __init__(self, http: httpx.AsyncClient, readable: Sequence[int]) -> None:
        self.http = http
        self.sent: list[Sent] = []
        self.created: list[int] = []  # jobs whose create was answered 201
        self._readable = list(readable)
        self._ids = itertools.count(1)
        self._stop = asyncio.Event()
        self._progress = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(i)) for i in range(CLIENTS)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def wait_for(self, count: int, after: float, timeout_s: float = 30) -> None:
        """Until `count` requests sent after monotonic time `after` have been answered."""

        def enough() -> bool:
            return sum(s.started > after for s in self.sent) >= count

        async with asyncio.timeout(timeout_s), self._progress:
            await self._progress.wait_for(enough)

    async def _loop(self, client: int) -> None:
        for n in itertools.count():
            if self._stop.is_set():
                return
            if n % 3 == 0:
                body = {"name": f"traffic-{client}-{n}", "schedule": "@daily"}
                await self._send("POST", "/jobs", 201, body)
            elif n % 3 == 1:
                job_id = self._readable[(client + n) % len(self._readable)]
                await self._send("GET", f"/jobs/{job_id}", 200)
            else:
                await self._send("GET", "/jobs?limit=20", 200)

    async def _send(
        self, method: str, path: str, expect: int, body: dict[str, Any] | None = None
    ) -> None:
        request_id = f"lb-{next(self._ids)}"
        status: int | None = None
        error: str | None = None
        started = time.monotonic()
        try:
            response = await self.http.request(
                method, path, json=body, headers={"X-Request-Id": request_id}
            )
            status = response.status_code
            if status != expect:
                error = f"{status} {response.text[:200]}"
            elif response.headers.get("x-request-id") != request_id:
                error = f"request id not echoed: {response.headers.get('x-request-id')}"
            elif method == "POST":
                self.created.append(response.json()["id"])
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        sent = Sent(request_id, method, path, started, time.monotonic(), status, error)
        async with self._progress:
            self.sent.append(sent)
            self._progress.notify_all()


def nginx_records(c: Cluster) -> dict[str, dict[str, Any]]:
    """nginx's access log by request id."""
    lines = c.access_log.read_text().splitlines()
    return {r["request_id"]: r for r in map(json.loads, lines)}


def upstreams_of(record: dict[str, Any]) -> list[str]:
    """The replicas nginx tried for one request, in order."""
    return [u.strip() for u in record["upstream"].replace(" : ", ", ").split(",") if u.strip()]


async def sigkill(process: Process) -> tuple[float, float]:
    """SIGKILL one process we started; the monotonic times of the signal and of its exit."""
    signalled = time.monotonic()
    process.kill()
    await eventually(
        lambda: asyncio.sleep(0, result=not process.alive()), 5, f"{process.name} to die", 0.005
    )
    assert process.process.returncode == -signal.SIGKILL
    return signalled, time.monotonic()


@dataclass(frozen=True)
class Execution:
    """One execution of a run: a webhook delivery, or a log target's `job_executed` line."""

    job_id: int
    tick: datetime
    key: str  # the delivery's Idempotency-Key, or the run id for a log line
    attempt: int
    run_id: int
    worker: str | None  # a log line says which replica wrote it


def log_executions(paths: Sequence[Path]) -> list[Execution]:
    """The `job_executed` lines in these replica logs (a killed one may end mid-line)."""
    found = []
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            if '"job_executed"' not in line:
                continue
            with contextlib.suppress(ValueError):
                e = json.loads(line)
                tick = datetime.fromisoformat(e["tick"])
                run_id, worker = e["run_id"], e.get("worker")
                found.append(
                    Execution(e["job_id"], tick, str(run_id), e["attempt"], run_id, worker)
                )
    return found


async def ticks_reached(pool: Any, targets: dict[int, datetime]) -> bool:
    """Whether every job has a finished run at or after its target tick."""
    rows = await pool.fetch(
        "SELECT job_id, max(scheduled_for) AS latest FROM job_runs"
        " WHERE job_id = ANY($1::bigint[]) AND status = 'succeeded' GROUP BY job_id",
        list(targets),
    )
    latest = {r["job_id"]: r["latest"] for r in rows}
    return all(job in latest and latest[job] >= tick for job, tick in targets.items())


@pytest.mark.timeout(120)
async def test_through_nginx_a_killed_api_replica_and_a_killed_worker_lose_nothing(
    database_url: str, pool: Any, clean: None, tmp_path: Path
) -> None:
    env = {
        "SCHEDULER_WEBHOOK_ALLOW_PRIVATE": "true",
        "SCHEDULER_LEASE_MARGIN_S": str(LEASE_MARGIN_S),
        "SCHEDULER_SHUTDOWN_GRACE_S": "2",
    }
    began = time.monotonic()
    async with (
        serve_receiver() as receiver,
        cluster(database_url, api=2, workers=2, directory=tmp_path, env=env) as c,
        httpx.AsyncClient(base_url=c.url, timeout=10) as http,
    ):
        started_s = time.monotonic() - began
        receiver.default = Reply(delay_s=HOLD_S)
        api_1, api_2 = c.apis
        worker_1, worker_2 = c.workers

        # 200 jobs, created through nginx, CLIENTS at a time.
        jobs: list[dict[str, Any]] = []
        gate = asyncio.Semaphore(CLIENTS)

        async def create(i: int) -> None:
            body = {
                "name": f"lb-{i}",
                "schedule": "@every 1s",
                "overlap": "allow",  # a tick stuck on the dead worker must not hold up the next
                "timeout_s": TIMEOUT_S,
            }
            if i < HTTP_JOBS:
                body["target"] = {"type": "http", "url": receiver.url("/lb")}
            async with gate:
                response = await http.post("/jobs", json=body)
            assert response.status_code == 201, response.text
            jobs.append(response.json())

        await asyncio.gather(*(create(i) for i in range(JOBS)))
        first = {job["id"]: datetime.fromisoformat(job["next_run_at"]) for job in jobs}
        http_jobs = {job["id"] for job in jobs if job["target"]["type"] == "http"}

        traffic = Traffic(http, list(first))
        traffic.start()
        try:
            # Every job has run twice: the workers are up to speed.
            second = {j: t + SECOND for j, t in first.items()}
            await eventually(lambda: ticks_reached(pool, second), WAIT_S, "two ticks of each job")
            await traffic.wait_for(20, after=time.monotonic())

            # 1. SIGKILL an API replica under client traffic.
            api_killed = await sigkill(api_1)
            await traffic.wait_for(20, after=api_killed[1])  # traffic flows again

            # 2. SIGKILL a worker while it holds leased runs.
            async def worker_1_busy() -> bool:
                running = await pool.fetchval(
                    "SELECT count(*) FROM job_runs WHERE status = 'running' AND worker = $1",
                    worker_1.name,
                )
                return bool(running)

            await eventually(worker_1_busy, 10, f"{worker_1.name} to hold leased runs", 0.01)
            # Every session of a replica is named after its worker id, whether it reached
            # the server over TCP or a unix socket (the embedded server).
            backends = await pool.fetch(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = $1",
                db.application_name(worker_1.name),
            )
            assert backends, f"no database session of {worker_1.name} found"
            await sigkill(worker_1)
            worker_killed_at = datetime.now(UTC)

            # A statement it sent just before dying still runs (and may lease runs to
            # it): look once its database sessions have ended.
            async def sessions_ended() -> bool:
                left: int = await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])",
                    [r["pid"] for r in backends],
                )
                return left == 0

            await eventually(sessions_ended, 10, f"the sessions of {worker_1.name} to end", 0.01)
            orphans = {
                r["id"]: r
                for r in await pool.fetch(
                    "SELECT id, job_id, scheduled_for, attempt, lease_expires_at FROM job_runs"
                    " WHERE status = 'running' AND worker = $1",
                    worker_1.name,
                )
            }
            assert orphans, f"{worker_1.name} held no leased run when it was killed"

            async def orphans_done() -> list[Any] | None:
                rows = await pool.fetch(
                    "SELECT id, status, attempt, worker FROM job_runs WHERE id = ANY($1::bigint[])",
                    list(orphans),
                )
                return (
                    rows if all(r["status"] not in ("pending", "running") for r in rows) else None
                )

            taken_over = await eventually(
                orphans_done, TIMEOUT_S + LEASE_MARGIN_S + WAIT_S, "the orphaned runs to finish"
            )

            # Ticks keep flowing past the takeover; then stop and let everything settle.
            lease_end = max(r["lease_expires_at"] for r in orphans.values())
            horizon = lease_end.replace(microsecond=0) + AFTER_TAKEOVER_S * SECOND
            await eventually(
                lambda: ticks_reached(pool, dict.fromkeys(first, horizon)),
                AFTER_TAKEOVER_S + WAIT_S,
                "ticks past the takeover",
                0.2,
            )
        finally:
            await traffic.stop()
        await settled_until(pool, dict.fromkeys(first, horizon))
        delivered = deliveries(receiver.requests, "/lb")
        all_rows = await runs_of_jobs(pool, first)
        rows = [r for r in all_rows if r["scheduled_for"] <= horizon]
        created_rows = await pool.fetchval(
            "SELECT count(*) FROM jobs WHERE id = ANY($1::bigint[])", traffic.created
        )
        survivors_alive = all(p.alive() for p in c.processes if p not in (api_1, worker_1))
        records = nginx_records(c)
        killed_api = f"127.0.0.1:{api_1.port}"
    # The cluster has stopped: the survivors' logs are complete.
    executions = [
        Execution(d.job_id, d.tick, d.key, d.attempt, d.run_id, None) for d in delivered
    ] + log_executions([worker_1.log_path, worker_2.log_path])
    # A scheduler pass may run log-target ticks itself and write their lines before it
    # commits: a worker killed in between leaves lines of runs that never existed, whose
    # ticks the other worker runs again (at least once). Those are counted, not hidden.
    # (Only ticks up to the horizon: their runs had all settled when the rows were read.)
    run_ids = {r["id"] for r in all_rows}
    executions = [e for e in executions if e.tick <= horizon]
    phantoms = [e for e in executions if e.run_id not in run_ids]
    executions = [e for e in executions if e.run_id in run_ids]

    # --- the clients' side --------------------------------------------------------------
    kill_from, kill_to = api_killed
    failed = [s for s in traffic.sent if s.failed]
    excused = [
        s
        for s in failed
        if s.overlaps(kill_from, kill_to)
        and s.request_id in records
        and killed_api in upstreams_of(records[s.request_id])
    ]
    in_flight = [
        s
        for s in traffic.sent
        if s.overlaps(kill_from, kill_to)
        and s.request_id in records
        and upstreams_of(records[s.request_id])[0] == killed_api
    ]
    rerouted = [s for s in in_flight if len(upstreams_of(records[s.request_id])) > 1]
    served_by = Counter(
        upstreams_of(records[s.request_id])[-1] for s in traffic.sent if s.request_id in records
    )
    report(
        f"cluster ready in {started_s:.1f} s; {len(traffic.sent)} client requests "
        f"({sum(s.method == 'POST' for s in traffic.sent)} creates) + {JOBS} creates; "
        f"served by {dict(served_by)}; failed {len(failed)}, of which in flight on the killed "
        f"API replica {len(excused)}; in flight there at the kill {len(in_flight)}, "
        f"{len(rerouted)} of them passed to the other replica by nginx"
    )
    not_excused = [s for s in failed if s not in excused]
    assert not not_excused, f"client-visible errors: {sample(not_excused)}"
    assert len(excused) <= len(in_flight)
    # nginx passes on a read that failed before the replica's answer began. One that the
    # SIGKILL cut off after its header, no proxy can: nginx has relayed the 200 already,
    # and uvicorn writes an answer's header and its body in two writes, between which a
    # SIGKILL can fall. The client saw a transport error, nginx logged the 200.
    cut_off = [
        s
        for s in excused
        if s.method == "GET"
        and s.status is None
        and records[s.request_id]["status"] == 200
        and records[s.request_id]["upstream_status"] == "200"
    ]
    not_passed_on = [s for s in excused if s.method != "POST" and s not in cut_off]
    assert not not_passed_on, "nginx did not pass a failed read on: " + "; ".join(
        f"{s.error} / {records[s.request_id]}" for s in not_passed_on
    )
    assert created_rows == len(traffic.created), "an acknowledged create was lost"
    assert served_by[killed_api] > 0 and served_by[f"127.0.0.1:{api_2.port}"] > 0

    # --- the runs' side -----------------------------------------------------------------
    by_job: dict[int, list[datetime]] = defaultdict(list)
    for r in rows:
        by_job[r["job_id"]].append(r["scheduled_for"])
    gaps_or_duplicates = {
        job_id: ticks
        for job_id in first
        if (ticks := sorted(by_job[job_id])) != grid(first[job_id], horizon)
    }
    not_succeeded = [dict(r) for r in rows if r["status"] != "succeeded"]
    in_window = [e for e in executions if e.tick <= horizon]
    keys_per_tick: dict[tuple[int, datetime], set[str]] = defaultdict(set)
    for e in in_window:
        keys_per_tick[e.job_id, e.tick].add(e.key)
    two_keys = {tick: keys for tick, keys in keys_per_tick.items() if len(keys) > 1}
    never_executed = {(r["job_id"], r["scheduled_for"]) for r in rows} - set(keys_per_tick)
    again = repeated((e.job_id, e.tick) for e in in_window)
    orphan_ticks = {(r["job_id"], r["scheduled_for"]) for r in orphans.values()}
    report(
        f"ticks checked {len(rows)} over {len(first)} jobs ({len(http_jobs)} webhooks), "
        f"{min(map(len, by_job.values()))}-{max(map(len, by_job.values()))} each, horizon "
        f"{(horizon - worker_killed_at).total_seconds():.1f} s after the worker kill; "
        f"executions {len(in_window)}; runs leased by the killed worker {len(orphans)}, "
        f"executed again under the same key {len(again)}; lines of runs the killed "
        f"worker never committed {len(phantoms)}; "
        f"runs per worker {dict(Counter(r['worker'] for r in rows))}; "
        f"test body {time.monotonic() - began:.1f} s"
    )
    assert survivors_alive
    assert not gaps_or_duplicates, f"jobs with a gap or a duplicate: {sample(gaps_or_duplicates)}"
    assert not not_succeeded, sample(not_succeeded)
    assert not two_keys, f"a tick executed under two keys: {sample(two_keys)}"
    assert all(e.worker == worker_1.name for e in phantoms), f"phantom runs: {sample(phantoms)}"
    assert not never_executed, f"runs never executed: {sample(sorted(never_executed))}"
    twice = sorted(set(again) - orphan_ticks)
    assert not twice, f"executed twice, not a dead worker's run: {sample(twice)}"
    # The killed worker's leased runs were taken over by the survivor, as their next attempt.
    for r in taken_over:
        assert (r["status"], r["worker"]) == ("succeeded", worker_2.name), dict(r)
        assert r["attempt"] == orphans[r["id"]]["attempt"] + 1, dict(r)
    assert horizon - worker_killed_at > AFTER_TAKEOVER_S * SECOND


@pytest.mark.timeout(90)
async def test_through_nginx_the_console_serves_pages_and_live_streams_from_any_replica(
    database_url: str, pool: Any, clean: None, tmp_path: Path
) -> None:
    async with (
        cluster(database_url, api=2, workers=0, directory=tmp_path) as c,
        httpx.AsyncClient(base_url=c.url, timeout=WAIT_S) as http,
    ):
        page = await http.get("/ui")
        assert page.status_code == 200, page.text[:500]
        assert page.headers["content-type"].startswith("text/html")
        async with contextlib.AsyncExitStack() as streams:
            # One stream each on the two replicas (nginx takes them in turn); a job created
            # through either reaches both, through the database's notifications.
            events = []
            for i in (1, 2):
                response = await streams.enter_async_context(
                    http.stream("GET", "/ui/events", headers={"X-Request-Id": f"stream-{i}"})
                )
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                events.append(sse_events(response))
                # The first message comes as soon as the stream listens: nginx holds nothing back.
                first = await asyncio.wait_for(anext(events[-1]), WAIT_S)
                assert "retry" in first, first
            created = await http.post("/jobs", json={"name": "live", "schedule": "@daily"})
            assert created.status_code == 201, created.text
            for stream in events:
                event = await asyncio.wait_for(anext(stream), WAIT_S)
                assert event.get("event") == "change", event
                assert json.loads(event["data"]) == {"jobs": [created.json()["id"]]}

        async def both_logged() -> dict[str, dict[str, Any]] | None:
            # nginx writes a stream's line once it has ended.
            found = nginx_records(c)
            return found if "stream-1" in found and "stream-2" in found else None

        records = await eventually(both_logged, 5, "nginx to log the ended streams", 0.05)
    served = {upstreams_of(records[f"stream-{i}"])[-1] for i in (1, 2)}
    assert served == {f"127.0.0.1:{p.port}" for p in c.apis}
