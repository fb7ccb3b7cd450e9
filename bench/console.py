"""Console: the server time of every console page, on 100,000 jobs and 10 million runs.

    python -m bench.console [--quick] [--jobs 100000] [--runs 10000000] [--days 14]
                            [--repeat 30] [--keep NAME [--reload]] [--explain] [--out PATH]

Data (`load`): a database with the current schema, `--jobs` jobs of two tenants (every
twentieth `acme`'s, the rest `default`'s, the tenant open mode shows) and `--runs` runs
whose ticks are spread evenly from UTC midnight `--days` days ago to now:

- jobs: named `<team>-<verb>-<number>`, but one in 100 `customer-report`; cron of
  several shapes in four zones, `@every`, macros and a few `@at` (the past ones
  completed); 0 to 3 of 10 tags; a tenth paused (some with a maintenance window); a
  third with a webhook target; a quarter with a key.
  The first `deep` jobs (one in 250) tick every minute and hold four in five runs (some
  20,000 each at full size); the others a few each;
- runs: mostly succeeded, 3 % failed with one of five errors (and every 97th job fails
  always, so it is in jobs_failing), a few skipped, cancelled or manual; the last few
  hundred ticks pending or running. Ids are `run_id(tick)`, as the service makes them;
  the day partitions are made by `history_partitions_create` (maintenance's function,
  asked for the past days too); loaded day by day by INSERT … SELECT generate_series
  with the secondary indexes dropped and rebuilt after (bench/history.py's way), then
  VACUUM ANALYZE (this machine's server runs without autovacuum, and the pages only read);
- audit rows for paused, deep and some other jobs; `run_minutes` for the last day (what
  maintenance keeps; the overview reads its last hour), two replicas per minute.

`--keep NAME` keeps the database (`scheduler_bench_console_NAME`) and uses it again on the
next run with the same sizes (its comment records them); `--reload` loads it afresh.
Without `--keep` the database is dropped at the end.

Timing: one `scheduler-svc serve --role api` process in open mode on 127.0.0.1; each page
requested `--repeat` times after WARM_UP untimed requests, one at a time. Server time is
the `Server-Timing: app;dur=<ms>` header of the answer; where a page sends none, the
client's time (request sent to answer read) stands in and the table says so. The pages:
the overview (whole, and as the htmx partial), jobs (first page, by tag, by the shared name,
paused, a page by cursor half-way down), a job with a deep history (first page of runs,
and by cursor half-way down it), a failed run, the new-job form, and the confirmation of
a bulk pause by tag (a POST with the CSRF cookie and field, without `confirm`: it
changes nothing).

`--explain`: afterwards, a second server whose sessions load auto_explain (set on the
database, reset after) requests each page once more; the plans, with ANALYZE and BUFFERS,
are read back from the PostgreSQL server's log (it must be readable here) and printed,
slowest statement first. (Only the pages' SQL: where a page's server time is far above
its statements', the time goes to Python, which a profiler finds.)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import html
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx

from bench import common, history
from bench.common import Result, apply_schema, bench_database, ms, replicas, spread
from bench.scale import RUN_AT
from scheduler_svc.api.paging import decode_cursor, encode_cursor
from scheduler_svc.errors import InvalidRequest
from scheduler_svc.models import LAG_BUCKETS_MS

TARGET_MS = 50.0
WARM_UP = 3
REPEAT = 30
DEEP_EVERY = 250  # one job in 250 ticks every minute and holds four in five runs
UNFINISHED = 300  # the last ticks: pending or running
TAG = "critical"
NAME = "customer-report"  # one job in 100 has it
KEEP_PREFIX = "scheduler_bench_console_"
TENANTS = ("default", "acme")  # open mode is tenant `default`


@dataclass(frozen=True, slots=True)
class Shape:
    """How much data."""

    jobs: int = 100_000
    runs: int = 10_000_000
    days: int = 14

    @property
    def deep(self) -> int:
        """Jobs 1 .. deep tick every minute and hold four in five runs."""
        return max(1, self.jobs // DEEP_EVERY)

    @property
    def unfinished(self) -> int:
        return min(UNFINISHED, max(1, self.runs // 1000))


FULL = Shape()
QUICK = Shape(jobs=10_000, runs=1_000_000)

# Jobs $1 .. $2 (by number); $3: the deep ones; $4: seconds of created_at per job number.
MAKE_JOBS = """
INSERT INTO jobs (tenant, name, attributes, schedule, timezone, target, status, next_run_at,
                  paused_until, tags, created_at, updated_at)
SELECT CASE WHEN i % 20 = 0 THEN 'acme' ELSE 'default' END,
       CASE WHEN i % 100 = 7 THEN 'customer-report' ELSE
       (ARRAY['billing', 'search', 'reports', 'ingest', 'mail', 'backup', 'metrics',
              'invoices', 'sync', 'cleanup'])[i % 10 + 1]
         || '-' || (ARRAY['export', 'refresh', 'digest', 'rollup', 'purge', 'import',
                          'check'])[i % 7 + 1]
         || '-' || lpad(i::text, 6, '0') END,
       jsonb_build_object('customer', i % 500, 'region', 'eu-west-1'),
       c.schedule, c.timezone,
       CASE WHEN i % 3 = 1 OR i % 97 = 0
            THEN jsonb_build_object('type', 'http', 'url', 'https://hooks.example.com/jobs/' || i,
                                    'method', 'POST', 'headers', '{}'::jsonb, 'body', NULL)
            ELSE '{"type": "log"}' END,
       c.status,
       CASE WHEN c.status <> 'active' THEN NULL
            WHEN c.at IS NOT NULL THEN c.at
            WHEN i <= $3 THEN now() + make_interval(secs => 1 + i % 59)
            ELSE now() + make_interval(secs => 60 + i::bigint * 7919 % 21600) END,
       CASE WHEN c.status = 'paused' AND i % 100 = 13 THEN now() + interval '1 day' END,
       ARRAY(SELECT (ARRAY['prod', 'staging', 'nightly', 'critical', 'etl', 'reports', 'eu',
                           'us', 'team-billing', 'experimental'])[(i * 7 + k * 3) % 10 + 1]
             FROM generate_series(1, i * 13 % 4) AS k ORDER BY k),
       now() - interval '60 days' + make_interval(secs => i * $4::float8),
       now() - interval '60 days' + make_interval(secs => i * $4::float8)
FROM generate_series($1::int, $2::int) AS i,
     LATERAL (SELECT i * 37 % 100 AS k,
                     CASE WHEN i > $3 AND i * 37 % 100 = 99
                          THEN date_trunc('minute', now()) + make_interval(days => i % 30 - 10)
                     END AS at) AS h,
     LATERAL (SELECT CASE WHEN i <= $3 THEN '* * * * *'
                          WHEN h.at IS NOT NULL
                          THEN '@at ' || to_char(h.at AT TIME ZONE 'UTC',
                                                 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                          WHEN h.k < 30 THEN '*/5 * * * *'
                          WHEN h.k < 45 THEN '30 9 * * 1-5'
                          WHEN h.k < 55 THEN '30 2 * * *'
                          WHEN h.k < 63 THEN '0 */6 * * *'
                          WHEN h.k < 67 THEN '15 3 1 * *'
                          WHEN h.k < 71 THEN '0 0 * * 0'
                          WHEN h.k < 81 THEN '@every 1h'
                          WHEN h.k < 87 THEN '@every 15m'
                          WHEN h.k < 91 THEN '@daily'
                          WHEN h.k < 95 THEN '@hourly'
                          WHEN h.k < 98 THEN '*/10 * * * *'
                          ELSE '0 8-18 * * 1-5' END AS schedule,
                     CASE WHEN i <= $3 THEN 'UTC'
                          ELSE (ARRAY['UTC', 'UTC', 'America/New_York', 'Europe/Paris',
                                      'Asia/Tokyo'])[i % 5 + 1] END AS timezone,
                     CASE WHEN h.at < now() THEN 'completed'
                          WHEN i > $3 AND i % 10 = 3 THEN 'paused'
                          ELSE 'active' END AS status,
                     h.at) AS c
"""

MAKE_KEYS = """
INSERT INTO job_keys (job_id, tenant, key, managed_by)
SELECT id, tenant, 'app/' || name, CASE WHEN id % 8 = 0 THEN 'terraform' END
FROM jobs WHERE id % 4 = 0
"""

# Runs $1 .. $2 - 1: run i ticks at $3 + i * $4 seconds; four in five (i % 5 < 4) go round
# the deep jobs 1 .. $5, the others round jobs $5 + 1 .. $6; from run $7 on they are
# pending or running. A run's tenant is its job's (MAKE_JOBS: every twentieth is acme's).
MAKE_RUNS = """
INSERT INTO job_runs (id, job_id, tenant, scheduled_for, trigger, status, attempt,
                      next_attempt_at, started_at, finished_at, duration_ms, error, output,
                      worker, lease_expires_at, created_at, ready_at)
SELECT run_id(s.t), s.job, CASE WHEN s.job % 20 = 0 THEN 'acme' ELSE 'default' END, s.t,
       CASE WHEN s.h BETWEEN 40 AND 44 THEN 'manual' ELSE 'schedule' END,
       o.status,
       CASE o.status WHEN 'pending' THEN 0 WHEN 'skipped' THEN 0 WHEN 'failed' THEN 3
                     ELSE 1 + (s.h / 990) END,
       s.t,
       CASE WHEN o.status NOT IN ('pending', 'skipped') THEN o.started END,
       CASE WHEN o.status = 'skipped' THEN s.t
            WHEN o.status NOT IN ('pending', 'running')
            THEN o.started + make_interval(secs => o.duration / 1000) END,
       CASE WHEN o.status NOT IN ('pending', 'running', 'skipped') THEN o.duration END,
       CASE o.status
            WHEN 'failed' THEN CASE WHEN s.job % 97 = 0 THEN 'HTTP 503 from hooks.example.com'
                 ELSE (ARRAY['HTTP 500 from hooks.example.com',
                             'read timeout: hooks.example.com:443',
                             'connect timeout: api.internal.example:8443',
                             'timed out after 30 s',
                             'HTTP 404 from hooks.example.com'])[i / 7 % 5 + 1] END
            WHEN 'skipped' THEN 'the previous run had not finished (overlap forbid)'
            WHEN 'cancelled' THEN 'cancelled by open'
       END,
       CASE WHEN o.status = 'succeeded' AND s.job % 3 = 1
            THEN '{"status_code": 200, "body": "{\\"ok\\": true}"}'::jsonb END,
       CASE WHEN o.status <> 'pending' THEN 'replica-' || i % 2 END,
       CASE WHEN o.status = 'running' THEN now() + interval '5 minutes' END,
       s.t, s.t
FROM generate_series($1::bigint, $2::bigint - 1) AS i,
     LATERAL (SELECT $3::timestamptz + make_interval(secs => i * $4::float8) AS t,
                     CASE WHEN i % 5 < 4 THEN (i / 5 * 4 + i % 5) % $5 + 1
                          ELSE $5 + 1 + (i / 5) % ($6 - $5) END AS job,
                     i * 7919 % 1000 AS h) AS s,
     LATERAL (SELECT CASE WHEN i >= $7 THEN CASE WHEN i % 3 = 0 THEN 'running' ELSE 'pending' END
                          WHEN s.job % 97 = 0 OR s.h < 30 THEN 'failed'
                          WHEN s.h < 35 THEN 'skipped'
                          WHEN s.h < 37 THEN 'cancelled'
                          ELSE 'succeeded' END AS status,
                     s.t + make_interval(secs => (i * 37 % 200) / 1000.0) AS started,
                     20 + (i * 31 % 5000) / 10.0 AS duration) AS o
"""

# The audit trail of the last $1 days: the paused jobs' pause, each deep job's daily manual
# trigger and a schedule change, a tag change of every 50th job.
MAKE_AUDIT = """
INSERT INTO audit (id, at, tenant, actor, action, job_id, changes)
SELECT history_id('audit_id_seq', a.at), a.at, j.tenant, 'open', a.action, j.id, a.changes
FROM jobs j,
     LATERAL (
         SELECT now() - make_interval(secs => j.id * 7919 % ($1 * 86400)) AS at,
                'job.pause' AS action, '{"status": ["active", "paused"]}'::jsonb AS changes
         WHERE j.status = 'paused'
         UNION ALL
         SELECT now() - make_interval(days => d, secs => j.id), 'job.trigger', '{}'
         FROM generate_series(1, $1 - 1) AS d WHERE j.id <= $2
         UNION ALL
         SELECT now() - make_interval(days => $1 - 1), 'job.update',
                '{"schedule": ["*/2 * * * *", "* * * * *"]}' WHERE j.id <= $2
         UNION ALL
         SELECT now() - make_interval(secs => j.id * 31 % ($1 * 86400)), 'job.update',
                jsonb_build_object('tags', jsonb_build_array('[]'::jsonb, to_jsonb(j.tags)))
         WHERE j.id % 50 = 0
     ) AS a
"""

# Per tenant ($1: tenants, $2: their runs per minute), minute of the last day and replica
# (two), the counts of the runs that ended and of fire lag by bucket ($3: each bucket's
# share), varied a little from minute to minute.
MAKE_MINUTES = """
INSERT INTO run_minutes (tenant, minute, worker, succeeded, failed, skipped, cancelled,
                         retried, lag_counts)
SELECT t.tenant, m.minute, w.worker,
       round(n.runs * 0.96)::int, round(n.runs * 0.03)::int, round(n.runs * 0.005)::int,
       round(n.runs * 0.002)::int, round(n.runs * 0.01)::int,
       ARRAY(SELECT round(n.runs * share)::int FROM unnest($3::float8[]) AS share)
FROM unnest($1::text[], $2::float8[]) AS t(tenant, per_minute),
     generate_series(date_trunc('minute', now()) - interval '1439 minutes',
                     date_trunc('minute', now()), interval '1 minute') AS m(minute),
     (VALUES ('replica-0'), ('replica-1')) AS w(worker),
     LATERAL (SELECT t.per_minute / 2
                     * (0.8 + 0.4 * ((extract(epoch FROM m.minute)::bigint / 60) * 7919 % 100)
                        / 100.0) AS runs) AS n
"""

# Shares of runs by fire-lag bucket (LAG_BUCKETS_MS: ≤ 1, 2, 5, 10, 20, 50, 100 … ms).
LAG_SHARES = [0.05, 0.25, 0.4, 0.15, 0.08, 0.04, 0.02, 0.007, 0.002, 0.001]


def lag_shares() -> list[float]:
    """A share of runs for each of the rollup's fire-lag buckets."""
    return [LAG_SHARES[i] if i < len(LAG_SHARES) else 0.0 for i in range(len(LAG_BUCKETS_MS))]


def day_ranges(start: datetime, now: datetime, runs: int) -> list[tuple[int, int]]:
    """The runs of each UTC day from `start` to `now`, as index ranges [lo, hi) of the
    evenly spread ticks (tick i at start + i * step)."""
    step = (now - start).total_seconds() / runs
    ranges = []
    day = start
    while day < now:
        end = day + timedelta(days=1)
        lo = min(runs, math.ceil((day - start).total_seconds() / step))
        hi = runs if end >= now else min(runs, math.ceil((end - start).total_seconds() / step))
        if hi > lo:
            ranges.append((lo, hi))
        day = end
    return ranges


async def make_minutes(conn: asyncpg.Connection[Any], shape: Shape) -> None:
    """run_minutes for the last day, at the loaded runs' rate."""
    per_minute = shape.runs / (shape.days * 1440)
    await conn.execute("DELETE FROM run_minutes")
    await conn.execute(
        MAKE_MINUTES, list(TENANTS), [per_minute * 0.95, per_minute * 0.05], lag_shares()
    )


async def load(conn: asyncpg.Connection[Any], shape: Shape, log: bool = True) -> dict[str, Any]:
    """Fill a database that has the schema and nothing else; what it took."""
    assert shape.jobs > shape.deep, "more jobs than deep ones"
    steps: dict[str, float] = {}
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        steps[name] = now - clock
        clock = now
        if log:
            print(f"  load: {name} {steps[name]:.1f} s", flush=True)

    await conn.execute("SET synchronous_commit = off")
    await conn.execute("SET maintenance_work_mem = '512MB'")
    # Triggers (notifications, run ids) and foreign-key checks off: the rows are
    # consistent by construction and carry their ids.
    await conn.execute("SET session_replication_role = replica")
    try:
        spacing = 59 * 86400 / shape.jobs
        for first in range(1, shape.jobs + 1, 50_000):
            last = min(shape.jobs, first + 49_999)
            await conn.execute(MAKE_JOBS, first, last, shape.deep, spacing)
        highest = await conn.fetchval("SELECT max(id) FROM jobs")
        assert highest == shape.jobs, f"jobs are not numbered 1 .. {shape.jobs}: {highest}"
        await conn.execute(MAKE_KEYS)
        await conn.execute(
            "INSERT INTO jobs_failing (job_id, since)"
            " SELECT id, now() - interval '3 days' FROM jobs WHERE id % 97 = 0"
        )
        step("jobs")

        # Maintenance's own function makes the day partitions, the past days' included.
        await conn.execute("SELECT history_partitions_create(7, $1)", shape.days)
        dropped = [(r["name"], r["definition"]) for r in await conn.fetch(history.LOADED_INDEXES)]
        for name, _ in dropped:
            await conn.execute(f'DROP INDEX "{name}"')
        step("partitions made, indexes dropped")

        now: datetime = await conn.fetchval("SELECT now()")
        first_day = now.astimezone(UTC).date() - timedelta(days=shape.days)
        start = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC)
        step_s = (now - start).total_seconds() / shape.runs
        unfinished_from = shape.runs - shape.unfinished
        for lo, hi in day_ranges(start, now, shape.runs):
            await conn.execute(
                MAKE_RUNS, lo, hi, start, step_s, shape.deep, shape.jobs, unfinished_from
            )
            if log:
                print(f"  load: {hi:,} runs", flush=True)
        step("runs")
        for _, definition in dropped:
            # A partitioned index's definition says ON ONLY: built here for every partition.
            await conn.execute(definition.replace(" ON ONLY ", " ON ", 1))
        step("indexes")
        await conn.execute(MAKE_AUDIT, shape.days, shape.deep)
        await make_minutes(conn, shape)
        step("audit and run_minutes")
    finally:
        await conn.execute("RESET session_replication_role")
    await conn.execute("VACUUM ANALYZE")
    step("vacuum analyze")
    return {
        "load_s": sum(steps.values()),
        "steps_s": steps,
        "loaded_at": now.isoformat(),
        "runs_bytes": await history.disk_bytes(conn),
        "partitions": len(await history.partitions(conn)),
    }


async def _comment(admin: asyncpg.Connection[Any], name: str) -> dict[str, Any] | None:
    text = await admin.fetchval(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1", name
    )
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        marker: dict[str, Any] = json.loads(text)
        return marker
    return None


def _url(name: str) -> str:
    return urlunsplit(urlsplit(common.SERVER_URL)._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def database(
    shape: Shape, keep: str | None = None, reload: bool = False
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A database loaded with `shape`: a scratch one dropped afterwards, or with `keep`
    the kept one of that name, loaded if it is not (or `reload`); its URL and what
    loading it took."""
    if keep is None:
        async with bench_database() as url:
            conn = await asyncpg.connect(url)
            try:
                loaded = await load(conn, shape)
            finally:
                await conn.close()
            yield url, loaded
        return
    if not re.fullmatch(r"[a-z0-9_]{1,30}", keep):
        raise SystemExit("--keep takes a name of lower-case letters, digits and _")
    name = KEEP_PREFIX + keep
    admin = await asyncpg.connect(common.SERVER_URL)
    try:
        exists = await admin.fetchval("SELECT true FROM pg_database WHERE datname = $1", name)
        marker = await _comment(admin, name) if exists else None
        if exists and (reload or marker is None or marker["shape"] != dataclasses.asdict(shape)):
            # Only this bench makes databases of this prefix: an interrupted load, other
            # sizes, or asked for.
            print(f"dropping {name} to load it again", flush=True)
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            marker = None
        if marker is None:
            await admin.execute(f'CREATE DATABASE "{name}"')
            conn = await asyncpg.connect(_url(name))
            try:
                await apply_schema(conn)
                loaded = await load(conn, shape)
            finally:
                await conn.close()
            marker = {"shape": dataclasses.asdict(shape), "loaded": loaded}
            text = json.dumps(marker)
            await admin.execute(f'COMMENT ON DATABASE "{name}" IS $marker${text}$marker$')
        else:
            loaded = {**marker["loaded"], "reused": True}
            conn = await asyncpg.connect(_url(name))
            try:
                await apply_schema(conn)  # a migration added since: applied; one changed: refused
                await make_minutes(conn, shape)
                await conn.execute("ANALYZE run_minutes")
            finally:
                await conn.close()
            age = datetime.now(UTC) - datetime.fromisoformat(loaded["loaded_at"])
            print(f"using {name}, loaded {age.total_seconds() / 3600:.1f} h ago", flush=True)
            if age > timedelta(hours=1):
                print(
                    "  its runs end then, not now: the overview's last hour has fewer of them "
                    "than it would (--reload for figures to report)",
                    flush=True,
                )
    finally:
        await admin.close()
    print(f"keeping database {name}", flush=True)
    yield _url(name), loaded


@dataclass(slots=True)
class Page:
    """One request to time."""

    label: str
    path: str
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    form: dict[str, str] | None = None


_CSRF_FIELD = re.compile(
    r"""name=["']csrf["'][^>]*?value=["']([^"']+)|value=["']([^"']+)["'][^>]*?name=["']csrf["']"""
)
_SERVER_TIMING = re.compile(r"(?:^|,)\s*app\s*;[^,]*?dur=([0-9.]+)")


def _link_param(page: str, param: str) -> str | None:
    """The value of `param` in the first link of `page` that has it."""
    for href in re.findall(r"""href=["']([^"']+)["']""", page):
        values = parse_qs(urlsplit(html.unescape(href)).query).get(param)
        if values:
            return values[0]
    return None


async def _cursor(
    client: httpx.AsyncClient, path: str, param: str, middle: int, pages: int = 20
) -> str:
    """A `param` cursor deep down `path`'s pages: the one that continues below id `middle`
    when the page's cursors are the API's keyset cursors (api/paging.py) or plain ids,
    else the one reached by following `pages` next links."""
    first = await client.get(path)
    value = _link_param(first.text, param)
    if value is None:
        raise RuntimeError(f"{path} answered {first.status_code} without a link with {param}=")
    if value.isdigit():
        return str(middle)
    with contextlib.suppress(InvalidRequest):
        decode_cursor(value)
        return encode_cursor(middle)
    for _ in range(pages):
        separator = "&" if "?" in path else "?"
        body = (await client.get(f"{path}{separator}{urlencode({param: value})}")).text
        value = _link_param(body, param) or value
    return value


async def pages(
    conn: asyncpg.Connection[Any], client: httpx.AsyncClient, shape: Shape
) -> list[Page]:
    """The pages to time, with ids and cursors from the loaded data."""
    job = 1  # a deep job of tenant default
    runs_of_job: int = await conn.fetchval("SELECT count(*) FROM job_runs WHERE job_id = $1", job)
    middle_run = await conn.fetchval(RUN_AT, job, runs_of_job // 2)
    failed_run = await conn.fetchval(
        "SELECT id FROM job_runs WHERE job_id = $1 AND status = 'failed' ORDER BY id DESC LIMIT 1",
        job,
    )
    middle_job = await conn.fetchval(
        "SELECT id FROM jobs WHERE tenant = 'default' AND id <= $1 ORDER BY id DESC LIMIT 1",
        shape.jobs // 2,
    )
    jobs_cursor = await _cursor(client, "/ui/jobs", "cursor", middle_job)
    runs_cursor = await _cursor(client, f"/ui/jobs/{job}", "runs_cursor", middle_run)
    listing = await client.get("/ui/jobs")
    match = _CSRF_FIELD.search(listing.text)
    csrf = (match.group(1) or match.group(2)) if match else ""
    return [
        Page("/ui", "/ui"),
        Page("/ui (htmx partial)", "/ui", headers={"HX-Request": "true"}),
        Page("/ui/jobs", "/ui/jobs"),
        Page(f"/ui/jobs?tag={TAG}", f"/ui/jobs?tag={TAG}"),
        Page(f"/ui/jobs?name={NAME}", f"/ui/jobs?name={NAME}"),
        Page("/ui/jobs?status=paused", "/ui/jobs?status=paused"),
        Page("/ui/jobs?cursor= (half-way)", f"/ui/jobs?{urlencode({'cursor': jobs_cursor})}"),
        Page(f"/ui/jobs/{{id}} ({runs_of_job:,} runs)", f"/ui/jobs/{job}"),
        Page(
            "/ui/jobs/{id}?runs_cursor= (half-way)",
            f"/ui/jobs/{job}?{urlencode({'runs_cursor': runs_cursor})}",
        ),
        Page("/ui/runs/{id} (failed)", f"/ui/runs/{failed_run}"),
        Page("/ui/jobs/new", "/ui/jobs/new"),
        Page(
            f"POST /ui/jobs/bulk/pause tag={TAG} (confirmation)",
            "/ui/jobs/bulk/pause",
            method="POST",
            form={"tag": TAG, "csrf": csrf},
        ),
    ]


async def request(client: httpx.AsyncClient, page: Page) -> tuple[httpx.Response, float]:
    """The answer, and the client's time for it in ms."""
    headers = page.headers
    if page.method == "POST":  # as a browser's form sends it, from this server's origin
        headers = {**headers, "Origin": str(client.base_url).rstrip("/")}
    started = time.perf_counter()
    response = await client.request(page.method, page.path, headers=headers, data=page.form)
    return response, (time.perf_counter() - started) * 1000


def server_ms(response: httpx.Response) -> float | None:
    match = _SERVER_TIMING.search(response.headers.get("server-timing", ""))
    return float(match.group(1)) if match else None


async def time_pages(
    client: httpx.AsyncClient, to_time: list[Page], repeat: int
) -> list[dict[str, Any]]:
    """Each page WARM_UP times untimed, then `repeat` times timed."""
    measured = []
    for page in to_time:
        for _ in range(WARM_UP):
            await request(client, page)
        server: list[float] = []
        client_ms: list[float] = []
        statuses: set[int] = set()
        size = 0
        for _ in range(repeat):
            response, elapsed = await request(client, page)
            statuses.add(response.status_code)
            size = len(response.content)
            client_ms.append(elapsed)
            figure = server_ms(response)
            if figure is not None:
                server.append(figure)
        measured.append(
            {
                "page": page.label,
                "path": page.path,
                "method": page.method,
                "statuses": sorted(statuses),
                "bytes": size,
                # Server-Timing on every answer, or the client's time for all of them.
                "source": "server" if len(server) == repeat else "client",
                "ms": spread(server if len(server) == repeat else client_ms),
                "client_ms": spread(client_ms),
            }
        )
    return measured


# auto_explain's settings for the explain pass: every statement's plan, with what it did,
# as JSON (a query's own line breaks are escaped there, so the log entry parses).
EXPLAIN_SETTINGS = {
    "session_preload_libraries": "auto_explain",
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_analyze": "on",
    "auto_explain.log_buffers": "on",
    "auto_explain.log_nested_statements": "on",
    "auto_explain.log_format": "json",
}
_LOG_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_PLAN = re.compile(r"@(\S+) LOG:  duration: ([0-9.]+) ms  plan:\n(.*)", re.DOTALL)


async def server_log(conn: asyncpg.Connection[Any]) -> Path | None:
    """The PostgreSQL server's log file, if this process can read it."""
    current = await conn.fetchval("SELECT pg_current_logfile()")
    if current is not None:
        directory = await conn.fetchval("SHOW data_directory")
        path = Path(current) if current.startswith("/") else Path(directory) / current
    else:  # Debian's clusters log stderr to /var/log/postgresql/postgresql-<major>-<name>.log
        major = (await conn.fetchval("SHOW server_version")).split(".")[0]
        path = Path(f"/var/log/postgresql/postgresql-{major}-main.log")
    return path if os.access(path, os.R_OK) else None


def plans_in(text: str, database: str) -> list[dict[str, Any]]:
    """auto_explain's plans of `database` in a piece of the server's log (stderr format:
    a message's lines after the first start with a tab)."""
    entries: list[list[str]] = []
    for line in text.splitlines():
        if _LOG_ENTRY.match(line):
            entries.append([line])
        elif entries:
            entries[-1].append(line.removeprefix("\t"))
    plans = []
    for entry in entries:
        match = _PLAN.search("\n".join(entry))
        if match is None or match.group(1) != database:
            continue
        with contextlib.suppress(ValueError):
            document = json.loads(match.group(3))
            plans.append(
                {
                    "ms": float(match.group(2)),
                    "query": " ".join(document.get("Query Text", "").split()),
                    "plan": plan_lines(document["Plan"]),
                }
            )
    return plans


def plan_lines(node: dict[str, Any], depth: int = 0) -> list[str]:
    """A JSON plan node and its children as EXPLAIN's text form says them, shortened."""
    what = node["Node Type"]
    if "Index Name" in node:
        what += f" using {node['Index Name']}"
    if "Relation Name" in node:
        what += f" on {node['Relation Name']}"
    start, total = node.get("Actual Startup Time", 0), node.get("Actual Total Time", 0)
    figures = (
        f"(actual time={start:.3f}..{total:.3f}"
        f" rows={node.get('Actual Rows', 0)} loops={node.get('Actual Loops', 0)})"
    )
    if node.get("Actual Loops") == 0:
        figures = "(never executed)"
    indent = "  " * depth + ("->  " if depth else "")
    lines = [f"{indent}{what}  {figures}"]
    detail = "  " * depth + ("    " if depth else "  ")
    for key in ("Index Cond", "Recheck Cond", "Filter", "Join Filter", "Hash Cond", "Sort Key"):
        if key in node:
            lines.append(f"{detail}{key}: {node[key]}")
    if node.get("Subplans Removed"):
        lines.append(f"{detail}Subplans Removed: {node['Subplans Removed']}")
    if node.get("Rows Removed by Filter"):
        lines.append(f"{detail}Rows Removed by Filter: {node['Rows Removed by Filter']}")
    hit, read = node.get("Shared Hit Blocks", 0), node.get("Shared Read Blocks", 0)
    if hit or read:
        lines.append(f"{detail}Buffers: shared hit={hit} read={read}")
    for child in node.get("Plans", []):
        lines += plan_lines(child, depth + 1)
    return lines


async def explain_pages(
    url: str, to_time: list[Page], cookies: httpx.Cookies, work: Path
) -> dict[str, list[dict[str, Any]]] | str:
    """Each page requested once by a server whose sessions log every plan; the plans of
    each (or why there are none)."""
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(url)
    try:
        log = await server_log(conn)
        if log is None:
            return "the server's log is not readable here: no plans"
        await conn.execute("LOAD 'auto_explain'")
        for setting, value in EXPLAIN_SETTINGS.items():
            await conn.execute(f"ALTER DATABASE \"{name}\" SET {setting} = '{value}'")
        try:
            found: dict[str, list[dict[str, Any]]] = {}
            with replicas(url, 1, work, role="api", **server_env()) as (process,):
                async with client_for(process.port, cookies) as client:  # type: ignore[attr-defined]
                    for page in to_time:
                        await request(client, page)  # connections and caches warm
                        offset = log.stat().st_size
                        response, _ = await request(client, page)
                        with log.open("rb") as file:
                            file.seek(offset)
                            text = file.read().decode("utf-8", "replace")
                        label = page.label
                        if response.status_code != 200:
                            label += f" (answered {response.status_code})"
                        found[label] = sorted(
                            plans_in(text, name), key=lambda p: p["ms"], reverse=True
                        )
            return found
        finally:
            for setting in EXPLAIN_SETTINGS:
                await conn.execute(f'ALTER DATABASE "{name}" RESET {setting}')
    finally:
        await conn.close()


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def server_env() -> dict[str, str]:
    """The measured server's settings: production's, but no rate limit in the way."""
    return {"SCHEDULER_RATE_LIMIT": "1000000/second", "SCHEDULER_LOG_LEVEL": "warning"}


def client_for(port: int, cookies: httpx.Cookies | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", cookies=cookies, timeout=60, follow_redirects=False
    )


async def measure(
    shape: Shape,
    repeat: int = REPEAT,
    keep: str | None = None,
    reload: bool = False,
    explain: bool = False,
) -> Result:
    """Load (or reuse), time every page, and with `explain` the plans of each."""
    async with database(shape, keep, reload) as (url, loaded):
        print(f"load: {loaded['load_s']:.1f} s", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            conn = await asyncpg.connect(url)
            try:
                with replicas(url, 1, work, role="api", **server_env()) as (process,):
                    async with client_for(process.port) as client:  # type: ignore[attr-defined]
                        to_time = await pages(conn, client, shape)
                        timed = await time_pages(client, to_time, repeat)
                        cookies = client.cookies
            except RuntimeError:  # the server did not start: say why before its log goes
                print(_tail(work / "replica-0.log"), file=sys.stderr)
                raise
            finally:
                await conn.close()
            plans = await explain_pages(url, to_time, cookies, work) if explain else None
    return report(shape, repeat, loaded, timed, plans)


def report(
    shape: Shape,
    repeat: int,
    loaded: dict[str, Any],
    timed: list[dict[str, Any]],
    plans: dict[str, list[dict[str, Any]]] | str | None,
) -> Result:
    rows: list[list[object]] = []
    for t in timed:
        figures = t["ms"]
        ok = t["statuses"] == [200]
        verdict = "PASS" if ok and figures["max"] <= TARGET_MS else "FAIL"
        rows.append(
            [
                t["page"],
                ms(figures["p50"]),
                ms(figures["p99"]),
                ms(figures["max"]),
                t["source"],
                ",".join(map(str, t["statuses"])),
                verdict if ok else f"FAIL (status {t['statuses']})",
            ]
        )
    return Result(
        title=f"Console pages: {shape.jobs:,} jobs, {shape.runs:,} runs over {shape.days} days,"
        f" {repeat} requests each after {WARM_UP} untimed; ms of server time (Server-Timing),"
        f" PASS: max ≤ {TARGET_MS:g} ms",
        header=["page", "p50", "p99", "max", "time", "status", f"≤ {TARGET_MS:g} ms"],
        rows=rows,
        figures={
            "shape": dataclasses.asdict(shape),
            "repeat": repeat,
            "warm_up": WARM_UP,
            "load": loaded,
            "pages": timed,
            "plans": plans,
        },
    )


def print_plans(plans: dict[str, list[dict[str, Any]]] | str | None, top: int = 3) -> None:
    if isinstance(plans, str):
        print(plans)
        return
    for page, found in (plans or {}).items():
        total = sum(p["ms"] for p in found)
        print(f"== {page}: {len(found)} statements, {total:.1f} ms in the executor")
        for plan in found[:top]:
            print(f"-- {plan['ms']:.2f} ms: {plan['query'][:600]}")
            print("\n".join(plan["plan"]))


async def run(quick: bool) -> list[Result]:
    """Every page on 100,000 jobs and 10M runs (quick: 10,000 jobs, 1M runs, 10 requests)."""
    return [await measure(QUICK if quick else FULL, 10 if quick else REPEAT)]


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10,000 jobs, 1M runs, 10 requests")
    parser.add_argument("--jobs", type=int, help="jobs (100,000; quick 10,000)")
    parser.add_argument("--runs", type=int, help="runs (10,000,000; quick 1,000,000)")
    parser.add_argument("--days", type=int, default=FULL.days, help="days of runs up to now")
    parser.add_argument("--repeat", type=int, help="timed requests per page (30; quick 10)")
    parser.add_argument("--keep", metavar="NAME", help="keep the database, or use it again")
    parser.add_argument("--reload", action="store_true", help="with --keep: load it afresh")
    parser.add_argument("--explain", action="store_true", help="print each page's plans")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    default = QUICK if args.quick else FULL
    shape = Shape(jobs=args.jobs or default.jobs, runs=args.runs or default.runs, days=args.days)
    repeat = args.repeat or (10 if args.quick else REPEAT)
    result = await measure(shape, repeat, args.keep, args.reload, args.explain)
    print(result.table())
    if args.explain:
        print_plans(result.figures["plans"])  # type: ignore[arg-type]
    if args.out:
        args.out.write_text(json.dumps(result.figures, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    import uvloop

    sys.exit(uvloop.run(main()))
