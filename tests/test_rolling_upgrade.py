"""Rolling upgrades, two releases side by side: the next release's migrations under a
running replica of a release, then replicas of both, then the next one alone. No tick is
lost, none runs twice, and no run recorded before is lost.

Three upgrades (tests/previous_release.py: UPGRADES): from ea3fc4c (schema 4, the last
release before versioned migrations) to 547dd3e, which brings 0005 (run history
partitioned by day) and 0006 (job keys); from 547dd3e (schema 6) straight to this
release, which brings 0007 (operator controls), 0008 (the console) and 0009 (the floor
of unfinished runs); and from 06dab8f (schema 8, the release this one follows) to this
release, which brings 0009. The
releases before this one are installed from this clone's git history into venvs of the
test's own, and run as `scheduler-svc serve` processes next to the next release's, on a
database of the test's own:

1. an old replica makes its schema (ea3fc4c applies its schema.sql, version 4; 547dd3e
   migrates the empty database to 6) and runs `@every 1s` jobs it was given (log targets,
   overlap forbid and allow, and one webhook to a receiver in this loop);
2. the next release's `scheduler-svc migrate` brings the database to its version while
   that replica runs and answers its API. A second old replica, API only, written to
   before and after it: its writes that run in a transaction (PATCH, pause, resume, and
   for 547dd3e a PUT by key) and its create with an Idempotency-Key still succeed after
   the migration, on several of its pooled connections that had prepared them before; so
   do its manual runs and its reads of runs, outside transactions. (A migration that
   changed the row type of a table or view it reads with `*` would fail the statements in
   a transaction: asyncpg cannot prepare a statement again inside one. It drops the
   statements of the whole pool at the first such error, and a statement outside a
   transaction it simply retries, so the watched replica's reads would hide that: hence a
   replica of its own, whose writes come first after the migration.)
3. a replica of the next release joins the old one. Another old replica started now:
   ea3fc4c refuses to run (its schema.sql is older than the database; the release order
   is migrate, then roll), 547dd3e and 06dab8f run beside them (they leave a newer schema
   as it is). Meanwhile this release holds cancels back (409 `upgrade-in-progress`)
   beside 547dd3e, which cannot read a cancelled run, and not beside 06dab8f, which
   cancels too, nor does 06dab8f beside this release. The old replicas stop; the new one
   goes on.

Then job_runs says: one run per tick from each job's first to a cutoff near the end,
none stuck, every run recorded before the migration still there, and every run inserted
after it (by either release) with an id that tells its day.

A last test has the API of 547dd3e, the release before operator controls, serve what only
the releases after it write: jobs with tags, jitter and alert settings, and cancelled
runs. (What this release writes that 06dab8f does not, the floor of unfinished runs, is
in a table 06dab8f never reads; the trigger that lowers it fires for 06dab8f's inserts
too.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from scheduler_svc.store import db
from tests.helpers import free_port, scratch_database
from tests.previous_release import (
    BEFORE_CANCEL_RELEASE,
    CURRENT,
    REPO_ROOT,
    UPGRADES,
    Release,
    Releases,
    Upgrade,
    imported_from,
    replica_env,
    spawn,
)
from tests.replicas import (
    SECOND,
    Replica,
    create_job,
    deliveries,
    eventually,
    exit_code,
    grid,
    http_target,
    reporter,
    sample,
    settled_until,
    stop,
    wait_ready,
)
from tests.webhook_receiver import serve_receiver

# Every test here runs replicas of two releases as processes; the first to need a release
# installs it, which may fetch its build backend.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

report = reporter("test_rolling_upgrade")

FORBID_JOBS = 6  # @every 1s on the log target, overlap forbid (the default)
ALLOW_JOBS = 4  # the same with overlap allow
WARM_TICKS = 3  # of each job recorded before the migration
OLD_ALONE_S = 3  # the old replica alone on the migrated schema
SIDE_BY_SIDE_S = 8  # old replicas and a new one
NEW_ALONE_S = 3  # the new replica alone
WAIT_S = 30  # for any milestone, on a busy 2-core machine
MIGRATE_S = 60  # for `scheduler-svc migrate` to end
REFUSED_S = 30  # for an old replica started after the migration to give up
# What ea3fc4c started on the migrated schema says (scheduler_refuse_older_release).
REFUSAL = "newer than this release knows"
# The old API's writes, before and after the migration, on jobs of their own (they never
# tick in the test): this many of each kind at once, then this many in turn, cycling
# through the kinds (WRITE_KINDS, and PUT_KIND when the old release has job keys).
WRITE_JOBS = 8
SEQUENTIAL_WRITES = 18
CONCURRENT_WRITES = WRITE_JOBS
# PATCH, pause, resume, a create with an Idempotency-Key (and its replay), and a manual
# run (POST …/trigger, then GET the run and its job's runs: outside transactions).
WRITE_KINDS = ("patch", "pause", "resume", "create", "run")
PUT_KIND = "put"  # PUT /jobs/by-key/{key}: creates the job the first time, then replaces it
NEVER = "0 0 1 1 *"  # the schedule of jobs that must not tick in the test
# Run ids of this release: the UTC day since 2000-01-01 in the bits from 37 up.
DAY_SHIFT = 37
EPOCH_DAY = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    """Releases before this one, each installed once per session when first needed."""
    return Releases(tmp_path_factory.mktemp("releases"))


def assert_installed_apart(release: Release) -> None:
    """The release's interpreter imports scheduler_svc from its venv, not this work tree."""
    module = imported_from(release, "scheduler_svc.store.db")
    assert module.is_relative_to(release.venv), (
        f"{release.commit[:7]}'s interpreter imports scheduler_svc from {module}"
    )
    assert not module.is_relative_to(REPO_ROOT), module


@dataclass
class Watch:
    """What a watcher saw while the old replica ran: its API's answers to GET /jobs/{id}
    as (when, status or error, seconds), and the number of runs recorded over time."""

    answers: list[tuple[float, int | str, float]] = field(default_factory=list)
    counts: list[tuple[float, int]] = field(default_factory=list)

    def answers_between(self, start: float, end: float) -> list[tuple[float, int | str, float]]:
        return [a for a in self.answers if start <= a[0] <= end]


async def watch(
    pool: Any, http: httpx.AsyncClient, replica: Replica, job_ids: list[int], seen: Watch
) -> None:
    """Until cancelled: ask `replica` for a job and count the runs, ten times a second."""
    for i in range(1_000_000):
        began = time.monotonic()
        try:
            response = await http.get(f"{replica.url}/jobs/{job_ids[i % len(job_ids)]}")
            answer: int | str = response.status_code
        except httpx.HTTPError as exc:
            answer = f"{type(exc).__name__}: {exc}"
        seen.answers.append((began, answer, time.monotonic() - began))
        seen.counts.append((time.monotonic(), await pool.fetchval("SELECT count(*) FROM job_runs")))
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def watching(
    pool: Any, http: httpx.AsyncClient, replica: Replica, job_ids: list[int]
) -> AsyncIterator[Watch]:
    seen = Watch()
    task = asyncio.create_task(watch(pool, http, replica, job_ids, seen))
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def ticks_reached(
    pool: Any, until: dict[int, datetime], what: str, replicas: Sequence[Replica]
) -> None:
    """Wait until every job has a run of a tick at or after its time in `until`; fail at
    once, with its log, if one of `replicas` exits meanwhile."""

    async def reached() -> bool:
        for replica in replicas:
            if replica.process.poll() is not None:
                raise AssertionError(
                    f"{replica.name} exited with {replica.process.returncode} while waiting "
                    f"for {what}:\n{replica.log_tail()}"
                )
        rows = await pool.fetch(
            "SELECT job_id, max(scheduled_for) AS last FROM job_runs"
            " WHERE job_id = ANY($1::bigint[]) AND trigger = 'schedule' GROUP BY job_id",
            list(until),
        )
        last = {r["job_id"]: r["last"] for r in rows}
        return all(job in last and last[job] >= tick for job, tick in until.items())

    await eventually(reached, WAIT_S, what)


def _start(
    argv: list[str], env: dict[str, str], cwd: Path, out_path: Path, err_path: Path
) -> subprocess.Popen[bytes]:
    with out_path.open("wb") as out, err_path.open("wb") as err:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err)


async def run_to_end(
    name: str,
    argv: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    timeout_s: float,
) -> tuple[int | None, str, str, float]:
    """Run `argv` with its output in `<name>.out` and `<name>.err`, polling (this loop
    goes on meanwhile); its exit code (None: killed after `timeout_s`), stdout, stderr and
    how long it took. Cancelled, it kills the process."""
    out_path, err_path = cwd / f"{name}.out", cwd / f"{name}.err"
    began = time.monotonic()
    process = _start(list(argv), env, cwd, out_path, err_path)
    try:
        code = await exit_code(process, timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    return code, out_path.read_text(), err_path.read_text(), time.monotonic() - began


@dataclass
class Writes:
    """What the old API answered to `exercise_writes`: every answer as (request, status or
    error), in order."""

    answers: list[tuple[str, int | str]] = field(default_factory=list)

    @property
    def failed(self) -> list[tuple[str, int | str]]:
        return [a for a in self.answers if not (isinstance(a[1], int) and 200 <= a[1] < 300)]


async def exercise_writes(
    http: httpx.AsyncClient,
    replica: Replica,
    job_ids: list[int],
    label: str,
    kinds: Sequence[str],
) -> Writes:
    """The replica's writes that run in a transaction, its create with an Idempotency-Key
    and its manual runs (see WRITE_KINDS): CONCURRENT_WRITES of each kind at once (so that
    several of its pooled connections run each), then SEQUENTIAL_WRITES in turn."""
    done = Writes()

    async def write(i: int, kind: str) -> None:
        n = i % len(job_ids)
        url = f"{replica.url}/jobs/{job_ids[n]}"
        what = f"{label} {kind} #{i}"
        body: dict[str, Any]
        try:
            if kind == "patch":
                body = {"attributes": {"written": label, "i": i}}
                response = await http.patch(url, json=body)
            elif kind in ("pause", "resume"):
                response = await http.post(f"{url}/{kind}")
            elif kind == "create":
                headers = {"Idempotency-Key": f"{label}-{i}"}
                body = {"name": f"created {label} {i}", "schedule": NEVER}
                response = await http.post(f"{replica.url}/jobs", json=body, headers=headers)
                if response.status_code == 201:  # and its replay, read by the key
                    done.answers.append((what, response.status_code))
                    what = f"{what} (replay)"
                    response = await http.post(f"{replica.url}/jobs", json=body, headers=headers)
            elif kind == PUT_KIND:
                # Other attributes each time: the job is replaced, not left as it is.
                body = {"name": f"put {n}", "schedule": NEVER, "attributes": {label: i}}
                response = await http.put(f"{replica.url}/jobs/by-key/written-{n}", json=body)
            else:  # run: its INSERT … RETURNING * and its reads, all `*` of job_runs
                response = await http.post(f"{url}/trigger")
                if response.status_code == 202:
                    done.answers.append((what, response.status_code))
                    run = await http.get(f"{replica.url}/runs/{response.json()['id']}")
                    done.answers.append((f"{what} (GET the run)", run.status_code))
                    what = f"{what} (its job's runs)"
                    response = await http.get(f"{url}/runs?limit=5")
            answer: int | str = response.status_code
        except httpx.HTTPError as exc:
            answer = f"{type(exc).__name__}: {exc}"
        done.answers.append((what, answer))

    # At once first: after the migration, the first statement to meet a changed row type
    # must be one inside a transaction (asyncpg retries one outside and drops the pool's
    # statements), on one of the connections that ran it before; the runs come last.
    for kind in kinds:
        await asyncio.gather(*(write(100 + i, kind) for i in range(CONCURRENT_WRITES)))
    for i in range(SEQUENTIAL_WRITES):
        await write(i, kinds[i % len(kinds)])
    return done


def problems_logged(replica: Replica) -> list[str]:
    """The replica's log lines at level error or above, and lines that are not JSON
    (a traceback printed past the logger)."""
    found = []
    for line in replica.log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            found.append(line)
            continue
        if not isinstance(event, dict) or event.get("level") in ("error", "critical", "exception"):
            found.append(line)
    return found


def day_of(tick: datetime) -> int:
    return (tick.astimezone(UTC).date() - EPOCH_DAY.date()).days


@pytest.mark.parametrize("upgrade", UPGRADES, ids=lambda u: u.id)
async def test_migrating_under_an_old_replica_then_rolling_loses_no_tick_and_runs_none_twice(
    tmp_path: Path, postgres_server_url: str, releases: Releases, upgrade: Upgrade
) -> None:
    release = releases.get(upgrade.old)
    assert_installed_apart(release)
    if upgrade.new is not None:
        assert_installed_apart(releases.get(upgrade.new))
    new_command = releases.command(upgrade.new)
    kinds = (*WRITE_KINDS, PUT_KIND) if upgrade.keys else WRITE_KINDS

    async with scratch_database(postgres_server_url, "scheduler_rolling") as url:
        started: list[Replica] = []
        refusal: asyncio.Task[tuple[int | None, str, str, float]] | None = None
        old_2: Replica | None = None
        pool = await db.create_pool(url, max_size=3)
        try:
            async with serve_receiver() as receiver, httpx.AsyncClient(timeout=10) as http:
                superuser = await pool.fetchval(
                    "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                )

                # 1. The old release alone: it makes its schema.
                old = spawn(release.command, "old-1", url, tmp_path)
                started.append(old)
                await wait_ready(old)
                version_before = await pool.fetchval("SELECT version FROM schema_version")
                kind_before = await pool.fetchval(
                    "SELECT relkind::text FROM pg_class WHERE oid = 'job_runs'::regclass"
                )
                every = {"schedule": "@every 1s"}
                jobs = [
                    await create_job(http, old, name=f"forbid-{i}", **every)
                    for i in range(FORBID_JOBS)
                ] + [
                    await create_job(http, old, name=f"allow-{i}", overlap="allow", **every)
                    for i in range(ALLOW_JOBS)
                ]
                hook = await create_job(
                    http, old, name="webhook", target=http_target(receiver.url("/tick")), **every
                )
                jobs.append(hook)
                first = {job["id"]: datetime.fromisoformat(job["next_run_at"]) for job in jobs}
                job_ids = list(first)
                # The old API that is written to, and its jobs, on a schedule that does
                # not fire in the test.
                old_api = spawn(release.command, "old-api", url, tmp_path, role="api")
                started.append(old_api)
                await wait_ready(old_api)
                written_ids = [
                    (await create_job(http, old_api, name=f"written-{i}", schedule=NEVER))["id"]
                    for i in range(WRITE_JOBS)
                ]
                warm = {j: tick + (WARM_TICKS - 1) * SECOND for j, tick in first.items()}
                await ticks_reached(pool, warm, "the warm-up ticks", [old])
                # Its statements prepared, on several connections, before the migration.
                writes_before = await exercise_writes(http, old_api, written_ids, "before", kinds)

                async with watching(pool, http, old, job_ids) as seen:
                    # 2. The next release migrates the database under the old replica.
                    before = {
                        r["id"]: (r["job_id"], r["scheduled_for"])
                        for r in await pool.fetch("SELECT id, job_id, scheduled_for FROM job_runs")
                    }
                    migrate_began = time.monotonic()
                    migrated = await run_to_end(
                        "migrate",
                        [*new_command, "migrate"],
                        replica_env("migrate", url),
                        tmp_path,
                        MIGRATE_S,
                    )
                    migrate_ended = time.monotonic()
                    migrated_db: datetime = await pool.fetchval("SELECT now()")
                    assert migrated[0] == 0, f"migrate exited {migrated[0]}:\n{migrated[2]}"
                    version_after = await pool.fetchval("SELECT version FROM schema_version")
                    steps_ms = await pool.fetchval(
                        "SELECT sum(duration_ms) FROM schema_migrations WHERE version > $1",
                        upgrade.schema_before,
                    )
                    kind_after = await pool.fetchval(
                        "SELECT relkind::text FROM pg_class WHERE oid = 'job_runs'::regclass"
                    )
                    old_ready = (await http.get(f"{old.url}/readyz")).status_code
                    # The old API's writes in a transaction, and a create with an
                    # Idempotency-Key, before anything else it runs after the migration.
                    writes_after = await exercise_writes(http, old_api, written_ids, "after", kinds)
                    old_alone = dict.fromkeys(job_ids, migrated_db + OLD_ALONE_S * SECOND)
                    await ticks_reached(
                        pool, old_alone, "the old replica's ticks after the migration", [old]
                    )
                    # The old API's run paths on the migrated table: a manual run (its
                    # INSERT … RETURNING * names no id), that run, and a job's history.
                    allow_job = jobs[FORBID_JOBS]["id"]
                    triggered = await http.post(f"{old.url}/jobs/{allow_job}/trigger")
                    manual = triggered.json() if triggered.status_code == 202 else {}
                    run_answer = await http.get(f"{old.url}/runs/{manual.get('id', 0)}")
                    listed = await http.get(f"{old.url}/jobs/{job_ids[0]}/runs?limit=500")
                    in_db = await pool.fetch(
                        "SELECT id FROM job_runs WHERE job_id = $1 ORDER BY id DESC", job_ids[0]
                    )

                    # 3. A new replica beside the old one, and another old one.
                    spawned_db: datetime = await pool.fetchval("SELECT now()")
                    new = spawn(new_command, "new-1", url, tmp_path)
                    started.append(new)
                    await wait_ready(new)
                    joined_db: datetime = await pool.fetchval("SELECT now()")
                    # The new API shows what the old one wrote after the migration.
                    written_new = (await http.get(f"{new.url}/jobs/{written_ids[0]}")).json()
                    written_old = (await http.get(f"{old_api.url}/jobs/{written_ids[0]}")).json()
                    recorded = "SELECT version, checksum FROM schema_migrations ORDER BY version"
                    migrations_before_old_2 = (
                        [tuple(r) for r in await pool.fetch(recorded)] if upgrade.versioned else []
                    )
                    if upgrade.versioned:
                        # It leaves the newer schema as it is, and runs on it.
                        old_2 = spawn(release.command, "old-2", url, tmp_path)
                        started.append(old_2)
                        try:
                            await wait_ready(old_2)
                        except AssertionError as exc:
                            raise AssertionError(
                                f"{upgrade.old} started after the migration did not run: {exc}"
                            ) from None
                    elif superuser:
                        refusal = asyncio.create_task(
                            run_to_end(
                                "old-2",
                                [*release.command, "serve", "--port", str(free_port())],
                                replica_env("old-2", url),
                                tmp_path,
                                REFUSED_S,
                            )
                        )
                    side_by_side = dict.fromkeys(job_ids, joined_db + SIDE_BY_SIDE_S * SECOND)
                    await ticks_reached(
                        pool,
                        side_by_side,
                        "ticks side by side",
                        [old, new, *([old_2] if old_2 is not None else [])],
                    )
                    # A cancel beside the old replicas, of a run that has ended: the new
                    # API holds it back only beside a release that cannot read a
                    # cancelled run; else it answers that the run has ended, as does an
                    # old API that has cancel.
                    ended_run = await pool.fetchval(
                        "SELECT min(id) FROM job_runs WHERE status = 'succeeded'"
                    )
                    cancel_new = (
                        await http.post(f"{new.url}/runs/{ended_run}/cancel")
                        if upgrade.new is None
                        else None
                    )
                    cancel_old = (
                        await http.post(f"{old_api.url}/runs/{ended_run}/cancel")
                        if upgrade.cancels
                        else None
                    )
                    refused = await refusal if refusal is not None else None
                    version_after_old_2 = await pool.fetchval("SELECT version FROM schema_version")
                    migrations_after_old_2 = (
                        [tuple(r) for r in await pool.fetch(recorded)] if upgrade.versioned else []
                    )
                old_code = await stop(old)
                old_2_code = await stop(old_2) if old_2 is not None else 0
                old_api_code = await stop(old_api)
                left_db: datetime = await pool.fetchval("SELECT now()")

                # The new replica alone, up to the end; the cutoff is a tick before it.
                end = left_db + NEW_ALONE_S * SECOND
                await ticks_reached(pool, dict.fromkeys(job_ids, end), "the last ticks", [new])
                cutoff = end - SECOND
                await settled_until(pool, dict.fromkeys(job_ids, cutoff), WAIT_S)
                stuck = await pool.fetch(
                    "SELECT id, job_id, scheduled_for, status, worker, lease_expires_at"
                    " FROM job_runs WHERE status = 'running' AND lease_expires_at < now()"
                )
                rows = await pool.fetch(
                    "SELECT id, job_id, scheduled_for, trigger, status, worker, created_at, error,"
                    " attempt, started_at, finished_at,"
                    " tableoid::regclass::text AS partition FROM job_runs ORDER BY id"
                )
                # Across every run, not only those up to the cutoff.
                runs_and_ticks = tuple(
                    await pool.fetchrow(
                        "SELECT count(*), count(DISTINCT (job_id, scheduled_for)) FROM job_runs"
                    )
                    or ()
                )
                new_code = await stop(new)
                got = deliveries(receiver.requests, "/tick")
        finally:
            if refusal is not None and not refusal.done():
                refusal.cancel()
                await asyncio.gather(refusal, return_exceptions=True)
            await asyncio.gather(*(stop(r) for r in started), return_exceptions=True)
            await pool.close()

    # The watcher's view of the old replica and of the row count.
    answers = seen.answers
    failed_answers = [(round(t - migrate_began, 2), a) for t, a, _ in answers if a != 200]
    during = seen.answers_between(migrate_began - 0.5, migrate_ended)
    slowest_during = max((s for _, _, s in during), default=0.0)
    counts = [n for _, n in seen.counts]
    # Across the migration and at least two ticks of every job (a migration can take
    # less than the second between two ticks), while the old replica ran alone.
    counted_until = max(migrate_ended, migrate_began + 2.5)
    counted_during = [n for t, n in seen.counts if migrate_began <= t <= counted_until]
    decreases = [(a, b) for a, b in itertools.pairwise(counts) if b < a]

    # One run per tick, from each job's first tick to the cutoff.
    runs_by_tick: dict[int, Counter[datetime]] = defaultdict(Counter)
    for r in rows:
        if r["trigger"] == "schedule":
            runs_by_tick[r["job_id"]][r["scheduled_for"]] += 1
    missing: dict[int, list[str]] = {}
    extra: dict[int, list[str]] = {}
    twice: dict[int, list[str]] = {}
    for job, tick0 in first.items():
        expected = set(grid(tick0, cutoff))
        ticks = {t: n for t, n in runs_by_tick[job].items() if t <= cutoff}
        if lost := sorted(expected - set(ticks)):
            missing[job] = [f"{t:%H:%M:%S.%f}"[:-3] for t in lost]
        if off := sorted(set(ticks) - expected):
            extra[job] = [f"{t:%H:%M:%S.%f}"[:-3] for t in off]
        if dup := sorted(t for t, n in ticks.items() if n > 1):
            twice[job] = [f"{t:%H:%M:%S.%f}"[:-3] for t in dup]
    in_window = [r for r in rows if r["job_id"] in first and r["scheduled_for"] <= cutoff]
    not_succeeded = Counter(r["status"] for r in in_window if r["status"] != "succeeded")

    # Every run recorded before the migration is still there, as it was.
    after = {r["id"]: (r["job_id"], r["scheduled_for"]) for r in rows}
    lost_rows = {i: v for i, v in before.items() if after.get(i) != v}

    # Run ids: those the old table's identity gave (ea3fc4c) were all taken before the
    # swap; every later one tells its day, an old replica's (job_runs_id trigger) as a new
    # one's.
    day_ids = [r for r in rows if r["id"] >> DAY_SHIFT > 0]
    wrong_day = [
        (r["id"], r["id"] >> DAY_SHIFT, day_of(r["scheduled_for"]))
        for r in day_ids
        if r["id"] >> DAY_SHIFT != day_of(r["scheduled_for"])
    ]
    identity_after = [
        (r["id"], r["created_at"])
        for r in rows
        if r["id"] >> DAY_SHIFT == 0 and r["created_at"] > migrated_db
    ]
    by_old_alone = [r for r in rows if migrated_db < r["created_at"] < spawned_db]
    side_window = [r for r in rows if joined_db <= r["scheduled_for"] < left_db]
    executed_by = Counter(r["worker"] for r in side_window)
    partitions = Counter(r["partition"] for r in rows)
    listed_ids = [run["id"] for run in listed.json()] if listed.status_code == 200 else []
    # The list was read before in_db: runs recorded in between may be missing from it.
    unlisted = [r["id"] for r in in_db if r["id"] <= max(listed_ids, default=0)]
    unlisted = sorted(set(unlisted) - set(listed_ids))

    # The webhook job: each tick delivered once, as the run recorded for it.
    hook_ticks = set(grid(first[hook["id"]], cutoff))
    hook_runs = {r["scheduled_for"]: r["id"] for r in rows if r["job_id"] == hook["id"]}
    delivered = Counter(d.tick for d in got)
    undelivered = sorted(t for t in hook_ticks if t not in delivered)
    delivered_twice = sorted(t for t, n in delivered.items() if n > 1)
    wrong_run = [(d.tick, d.run_id) for d in got if hook_runs.get(d.tick) != d.run_id]

    replicas = [old, old_api, new, *([old_2] if old_2 is not None else [])]
    problems = {r.name: problems_logged(r) for r in replicas}
    if old_2 is not None:
        second = f"ran, executed {executed_by['old-2']} runs side by side"
    elif refused is not None:
        second = f"refused: exit {refused[0]} after {refused[3]:.2f} s"
    else:
        second = "not started (not a superuser: no event trigger)"
    report(
        f"{upgrade.id}: schema {version_before} -> {version_after}, job_runs {kind_before!r} "
        f"-> {kind_after!r}; migrate took {migrated[3]:.2f} s (its steps "
        f"{float(steps_ms or 0):.0f} ms), the old API's slowest answer meanwhile "
        f"{slowest_during * 1000:.0f} ms of {len(during)}; runs {len(rows)} "
        f"({len(before)} before the migration, {len(by_old_alone)} inserted by the old replica "
        f"alone after it), by partition {dict(partitions)}; side by side executed by "
        f"{dict(executed_by)}; ticks up to the cutoff {len(in_window)}, missing "
        f"{sum(map(len, missing.values()))}, twice {sum(map(len, twice.values()))}; "
        f"old API writes before / after the migration: {len(writes_before.answers)} / "
        f"{len(writes_after.answers)}, failed {len(writes_before.failed)} / "
        f"{len(writes_after.failed)}; an old replica started after the migration: {second}"
    )

    assert (version_before, kind_before) == (
        upgrade.schema_before,
        "p" if upgrade.versioned else "r",
    ), (version_before, kind_before)
    assert migrated[1].strip().endswith(f"schema at version {upgrade.schema_after}"), migrated
    assert version_after == upgrade.schema_after and kind_after == "p", (
        version_after,
        kind_after,
    )
    assert old_ready == 200, f"the old replica's /readyz after the migration: {old_ready}"
    assert not writes_before.failed, f"old API writes before the migration: {writes_before.failed}"
    assert not writes_after.failed, (
        f"old API writes after the migration (request, answer): {writes_after.failed}"
    )
    assert len(writes_after.answers) >= SEQUENTIAL_WRITES + len(kinds) * CONCURRENT_WRITES
    assert written_new["attributes"] == written_old["attributes"], (written_new, written_old)
    assert written_new["attributes"]["written"] == "after", written_new
    assert (written_new["key"], written_new["managed_by"]) == (None, None), written_new
    assert not failed_answers, (
        f"the old API failed (s after migrate began, answer): {failed_answers}"
    )
    assert len(during) >= 1, "the watcher asked nothing while migrate ran"
    assert slowest_during < 5, f"the old API stalled {slowest_during:.2f} s during the migration"
    assert not decreases, f"the runs count went down: {decreases[:5]}"
    assert counted_during and counted_during[-1] > counted_during[0], (
        f"no run recorded while migrate ran and just after: {counted_during}"
    )
    assert not lost_rows, f"runs recorded before the migration lost or changed: {sample(lost_rows)}"
    assert not missing, f"ticks without a run, by job: {sample(missing)}"
    assert not extra, f"runs off the schedule, by job: {sample(extra)}"
    assert not twice, f"ticks run twice, by job: {sample(twice)}"
    assert runs_and_ticks[0] == runs_and_ticks[1], f"runs, distinct ticks: {runs_and_ticks}"
    bad = [r for r in in_window if r["status"] != "succeeded"]
    around = [
        (
            r["scheduled_for"].time(),
            r["status"],
            r["attempt"],
            r["worker"],
            r["error"],
            r["started_at"] and r["started_at"].time(),
            r["finished_at"] and r["finished_at"].time(),
        )
        for r in rows
        if bad
        and r["job_id"] == bad[0]["job_id"]
        and abs((r["scheduled_for"] - bad[0]["scheduled_for"]).total_seconds()) <= 4
    ]
    assert not not_succeeded, (
        f"runs up to the cutoff not succeeded: {dict(not_succeeded)}; the job of the first,"
        f" {bad[0]['job_id'] if bad else None}, around it: {around}"
    )
    assert not stuck, f"runs still running past their lease: {[dict(r) for r in stuck]}"
    assert not wrong_day, (
        f"run ids whose day is not their tick's (id, id day, tick day): {wrong_day}"
    )
    assert not identity_after, (
        f"runs inserted after the migration without a day id: {identity_after}"
    )
    assert by_old_alone, "the old replica recorded no run after the migration"
    assert triggered.status_code == 202, f"old trigger: {triggered.status_code} {triggered.text}"
    assert manual["id"] >> DAY_SHIFT == day_of(datetime.fromisoformat(manual["scheduled_for"]))
    assert run_answer.status_code == 200 and run_answer.json()["id"] == manual["id"], (
        run_answer.text
    )
    assert listed.status_code == 200, f"old run list: {listed.status_code} {listed.text}"
    assert listed_ids == sorted(listed_ids, reverse=True), "the old run list is not newest first"
    assert not unlisted, f"runs of job {job_ids[0]} missing from the old run list: {unlisted}"
    assert set(listed_ids) >= {i for i, (j, _) in before.items() if j == job_ids[0]}
    assert all(r["id"] >> DAY_SHIFT > 0 for r in by_old_alone)
    assert executed_by["old-1"] and executed_by["new-1"], (
        f"side by side, runs executed by {dict(executed_by)}: not both releases"
    )
    assert not undelivered, f"webhook ticks never delivered: {sample(undelivered)}"
    assert not delivered_twice, f"webhook ticks delivered twice: {sample(delivered_twice)}"
    assert not wrong_run, f"deliveries not of the run recorded for their tick: {wrong_run[:5]}"
    if old_2 is not None:
        assert executed_by["old-2"], (
            f"{upgrade.old} started after the migration executed no run: {dict(executed_by)}"
        )
        assert migrations_after_old_2 == migrations_before_old_2, (
            f"{upgrade.old} started after the migration changed the migrations recorded:"
            f" {migrations_before_old_2} -> {migrations_after_old_2}"
        )
    if refused is not None:
        code, _, stderr, _ = refused
        assert code is not None and code != 0, (
            f"an old replica started after the migration exited {code}:\n{stderr[-2000:]}"
        )
        assert REFUSAL in stderr, stderr[-2000:]
    cancel_answer = ":run-final" if upgrade.cancels else ":upgrade-in-progress"
    if cancel_new is not None:
        assert cancel_new.status_code == 409, (cancel_new.status_code, cancel_new.text)
        assert cancel_new.json()["type"].endswith(cancel_answer), cancel_new.text
    if cancel_old is not None:
        assert cancel_old.status_code == 409, (cancel_old.status_code, cancel_old.text)
        assert cancel_old.json()["type"].endswith(":run-final"), cancel_old.text
    assert version_after_old_2 == upgrade.schema_after, version_after_old_2
    assert old_code == 0, f"the old replica exited {old_code} on SIGTERM:\n{old.log_tail()}"
    assert old_2 is None or old_2_code == 0, (
        f"old-2 exited {old_2_code} on SIGTERM:\n{old_2.log_tail()}"
    )
    assert old_api_code == 0, f"old-api exited {old_api_code} on SIGTERM:\n{old_api.log_tail()}"
    assert new_code == 0, f"the new replica exited {new_code} on SIGTERM:\n{new.log_tail()}"
    for name, logged in problems.items():
        assert not logged, f"{name} logged:\n" + "\n".join(logged[:20])


async def test_the_release_before_cancel_serves_what_only_later_releases_write(
    tmp_path: Path, postgres_server_url: str, releases: Releases
) -> None:
    """The API of the release before operator controls (schema 6), after this release's
    migrations, on what only the releases from schema 7 write: a job with tags, jitter
    and alert settings (it reads it, lists it, PATCHes, pauses, resumes and PUTs it by
    key, and those fields are still there after), and runs this release was asked to
    cancel: a `cancelled` run is a status that release cannot read (a 500 there), so this
    release refuses to cancel (409 `upgrade-in-progress`) while a replica of it is
    connected, and cancels once it is gone. Both releases serve the API only: no run is
    claimed, so a manual run stays pending until this release cancels it. (The release
    this one follows reads all of these itself.)"""
    release = releases.get(BEFORE_CANCEL_RELEASE)
    assert_installed_apart(release)
    async with scratch_database(postgres_server_url, "scheduler_rolling") as url:
        started: list[Replica] = []
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                answers: list[tuple[str, int | str]] = []

                async def ask(
                    what: str, method: str, address: str, **kw: Any
                ) -> httpx.Response | None:
                    """The answer, recorded as (what, status or error); None unless 2xx."""
                    try:
                        response = await http.request(method, address, **kw)
                    except httpx.HTTPError as exc:
                        answers.append((what, f"{type(exc).__name__}: {exc}"))
                        return None
                    answers.append((what, response.status_code))
                    return response if response.is_success else None

                old = spawn(release.command, "old-api", url, tmp_path, role="api")
                started.append(old)
                await wait_ready(old)
                # Its statements prepared before the migration: a job's reads and writes,
                # a manual run and its reads.
                prepared = await create_job(http, old, name="prepared", schedule=NEVER)
                prepared_url = f"{old.url}/jobs/{prepared['id']}"
                await ask("old PATCH before", "PATCH", prepared_url, json={"attributes": {}})
                await ask("old pause before", "POST", f"{prepared_url}/pause")
                await ask("old resume before", "POST", f"{prepared_url}/resume")
                put: dict[str, Any] = {"name": "put", "schedule": NEVER}
                await ask("old PUT before", "PUT", f"{old.url}/jobs/by-key/put", json=put)
                await ask("old list before", "GET", f"{old.url}/jobs")
                old_run = await ask("old trigger before", "POST", f"{prepared_url}/trigger")
                old_run_id = old_run.json()["id"] if old_run is not None else 0
                await ask("old GET run before", "GET", f"{old.url}/runs/{old_run_id}")
                await ask("old runs before", "GET", f"{prepared_url}/runs")

                migrated = await run_to_end(
                    "migrate",
                    [*CURRENT, "migrate"],
                    replica_env("migrate", url),
                    tmp_path,
                    MIGRATE_S,
                )
                assert migrated[0] == 0, f"migrate exited {migrated[0]}:\n{migrated[2]}"
                new = spawn(CURRENT, "new-api", url, tmp_path, role="api")
                started.append(new)
                await wait_ready(new)

                # What only this release writes.
                tagged = await create_job(
                    http,
                    new,
                    name="tagged",
                    key="tagged",
                    schedule=NEVER,
                    tags=["team-a", "nightly"],
                    jitter_s=30,
                    alerts={"on": ["failed"], "missed_after_s": 600},
                )
                tagged_url = f"{old.url}/jobs/{tagged['id']}"
                # Runs it would cancel: two of its own, pending, and the old release's. Not
                # while a replica of the old release is connected: it cannot read one.
                to_cancel: list[int] = []
                for job_id in (tagged["id"], prepared["id"]):
                    made = await ask("new trigger", "POST", f"{new.url}/jobs/{job_id}/trigger")
                    to_cancel.append(made.json()["id"] if made is not None else 0)
                if old_run_id:
                    to_cancel.append(old_run_id)
                refused = [
                    await http.post(f"{new.url}/runs/{run_id}/cancel") for run_id in to_cancel
                ]

                # The old release's API on them.
                shown_jobs = [
                    await ask("old GET tagged", "GET", tagged_url),
                    await ask("old GET tagged by key", "GET", f"{old.url}/jobs/by-key/tagged"),
                ]
                listed = await ask("old list", "GET", f"{old.url}/jobs?limit=10")
                listed_ids = [job["id"] for job in listed.json()] if listed is not None else []
                await ask(
                    "old PATCH tagged", "PATCH", tagged_url, json={"attributes": {"by": "old"}}
                )
                await ask("old pause tagged", "POST", f"{tagged_url}/pause")
                await ask("old resume tagged", "POST", f"{tagged_url}/resume")
                put = {"name": "tagged", "schedule": NEVER, "attributes": {"by": "old put"}}
                await ask("old PUT tagged", "PUT", f"{old.url}/jobs/by-key/tagged", json=put)
                shown_runs: list[dict[str, Any]] = []
                for run_id in to_cancel:
                    got = await ask(f"old GET run {run_id}", "GET", f"{old.url}/runs/{run_id}")
                    if got is not None:
                        shown_runs.append(got.json())
                for job_id in (tagged["id"], prepared["id"]):
                    got = await ask(
                        f"old runs of job {job_id}", "GET", f"{old.url}/jobs/{job_id}/runs"
                    )
                    if got is not None:
                        shown_runs.extend(got.json())
                await ask("old runs of job prepared", "GET", f"{prepared_url}/runs")
                await ask("old GET prepared", "GET", prepared_url)
                after = await ask("new GET tagged", "GET", f"{new.url}/jobs/{tagged['id']}")
                tagged_after = after.json() if after is not None else {}
                # The roll is over once the old replica is gone: now the runs cancel.
                old_code = await stop(old)
                started.remove(old)
                cancelled: list[dict[str, Any]] = []
                for run_id in to_cancel:
                    ended = await ask("new cancel", "POST", f"{new.url}/runs/{run_id}/cancel")
                    cancelled.append(ended.json() if ended is not None else {"id": run_id})
        finally:
            codes = await asyncio.gather(*(stop(r) for r in started), return_exceptions=True)

    failed = [a for a in answers if not (isinstance(a[1], int) and 200 <= a[1] < 300)]
    report(
        f"{BEFORE_CANCEL_RELEASE} API on what only later releases write: {len(answers)} requests,"
        f" failed: {failed}"
    )
    assert not failed, f"requests that failed (request, answer): {failed}"
    # While the old release was connected, no run was cancelled: it could not read one.
    assert [r.status_code for r in refused] == [409] * len(to_cancel), [r.text for r in refused]
    assert all(r.json()["type"].endswith(":upgrade-in-progress") for r in refused)
    assert [c.get("status") for c in cancelled] == ["cancelled"] * len(to_cancel), cancelled
    assert all(job is not None and job.json()["key"] == "tagged" for job in shown_jobs)
    assert tagged["id"] in listed_ids, listed_ids
    # The old release's writes keep what it does not know of.
    expected = {"tags": ["team-a", "nightly"], "jitter_s": 30, "alerts": tagged["alerts"]}
    assert {k: tagged_after.get(k) for k in expected} == expected, tagged_after
    assert tagged_after["attributes"] == {"by": "old put"}, tagged_after
    assert tagged_after["status"] == "active", tagged_after
    assert [old_code, *codes] == [0, 0], f"exit codes on SIGTERM: {[old_code, *codes]}"
    shown = {run["id"]: run["status"] for run in shown_runs}
    assert all(shown.get(run_id) == "pending" for run_id in to_cancel), (to_cancel, shown)
    for replica in started:
        logged = problems_logged(replica)
        assert not logged, f"{replica.name} logged:\n" + "\n".join(logged[:20])


@pytest.mark.parametrize("upgrade", UPGRADES, ids=lambda u: u.id)
def test_the_old_release_is_installed_apart_from_this_work_tree(
    releases: Releases, upgrade: Upgrade
) -> None:
    release = releases.get(upgrade.old)
    module = imported_from(release, "scheduler_svc.store.db")
    assert module.is_relative_to(release.venv), module
    migrations = module.parent / "migrations"
    if not upgrade.versioned:
        schema = (module.parent / "schema.sql").read_text()
        assert f"INSERT INTO schema_version (version) VALUES ({upgrade.schema_before})" in schema
        assert not migrations.exists()
        return
    # Its migrations are this release's first ones, unchanged: a database it made has
    # them recorded with the checksums this release's migrate expects.
    names = sorted(p.name for p in migrations.glob("*.sql"))
    assert names[-1].startswith(f"{upgrade.schema_before:04d}_"), names
    ours = REPO_ROOT / "scheduler_svc" / "store" / "migrations"
    changed = [n for n in names if (migrations / n).read_bytes() != (ours / n).read_bytes()]
    assert not changed, f"migrations of {upgrade.old} changed since: {changed}"
