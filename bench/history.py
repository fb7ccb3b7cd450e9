"""A database with a history: many jobs, and many finished runs over many days.

    from bench import history
    shape = history.Shape(jobs=1_000_000, runs=50_000_000, days=60)
    loaded = await history.load(conn, shape)   # on a bench_database() that has the schema

It works on either schema of job_runs, whichever the imported scheduler_svc made:

- partitioned by day on scheduled_for (migration 0005): ids are run_id(scheduled_for),
  passed explicitly (the job_runs_id trigger would give them too, a call a row slower),
  and the day partitions of the past days are created here as history_partitions_create
  makes them (job_runs_YYYYMMDD, LIKE job_runs with the storage options of
  history_tables, a primary key on id, attached FOR VALUES FROM (day) TO (day + 1));
- unpartitioned, an identity id (releases before it).

Jobs: `jobs` of them. The first `due` are due a second ago; the last `lag_jobs` are
paused `@every 1s` jobs on the log target (bench/firelag.py activates them); of the
rest every tenth is paused, the others next due 2 to 32 days ahead, so nothing but
the due ones and the fire-lag ones is ever due while the benchmark runs.

Runs: `runs` finished runs whose ticks are spread evenly from UTC midnight `days` days
ago to now, so every day but today is whole, inserted in tick order (ids grow with
time, as they do in service). Four in five belong to the `deep_jobs` first jobs (some
`0.8 * runs / deep_jobs` each: 4,000 at 50M runs over 10,000 of them), the others to
the rest, a few each.

Loading: INSERT … SELECT generate_series in chunks of CHUNK, with the secondary
indexes that would hold the loaded runs dropped (the partial ones on pending or
running runs stay, empty) and rebuilt from their definitions afterwards, the new
partitions' primary keys added after their rows, foreign-key checks and triggers off
for the loading session (session_replication_role = replica: the rows are consistent
by construction); then VACUUM ANALYZE.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

CHUNK = 1_000_000
TENANT = "bench"
DEEP_SHARE = 0.8  # four in five runs: MAKE_RUNS's `i % 5 < 4`


@dataclass(frozen=True, slots=True)
class Shape:
    """How big the history is."""

    jobs: int
    runs: int
    days: int
    due: int = 300
    lag_jobs: int = 1000
    deep_jobs: int = 0  # 0: jobs // 100, at most 10,000

    @property
    def deep(self) -> int:
        """Jobs 1 .. deep hold four in five runs."""
        return self.deep_jobs or max(1, min(10_000, self.jobs // 100))

    @property
    def first_lag_job(self) -> int:
        return self.jobs - self.lag_jobs + 1

    @property
    def runs_per_deep_job(self) -> int:
        return int(self.runs * DEEP_SHARE / self.deep)


# Jobs $1 .. $2 (by number) of $4: the first $3 due a second ago, the last $5 paused
# on '@every 1s' (fire lag), every tenth of the others paused, the rest due 2 to 32
# days ahead.
MAKE_JOBS = """
INSERT INTO jobs (tenant, name, schedule, status, next_run_at)
SELECT 'bench', 'job-' || i,
       CASE WHEN i > $4::int - $5::int THEN '@every 1s' ELSE '@every 30d' END,
       CASE WHEN i > $4 - $5 OR (i > $3 AND i % 10 = 0) THEN 'paused' ELSE 'active' END,
       CASE WHEN i > $4 - $5 OR (i > $3 AND i % 10 = 0) THEN NULL
            WHEN i <= $3 THEN now() - interval '1 second'
            ELSE now() + interval '2 days' + make_interval(secs => i::bigint * 7919 % 2592000)
       END
FROM generate_series($1::int, $2::int) AS i
"""

# Runs $1 .. $2 - 1: run i is due at $3 + i * $4 seconds; four in five (i % 5 < 4) go round the
# deep jobs 1 .. $5, the others round jobs $5 + 1 .. $6. {id} and {id_value} are empty
# on the unpartitioned schema (an identity column).
MAKE_RUNS = """
INSERT INTO job_runs ({id}job_id, tenant, scheduled_for, status, attempt, next_attempt_at,
                      started_at, finished_at, duration_ms, worker, created_at, ready_at)
SELECT {id_value}s.job, 'bench', s.t, 'succeeded', 1, s.t, s.t, s.t + interval '5 ms', 5,
       'replica-0', s.t, s.t
FROM generate_series($1::bigint, $2::bigint - 1) AS i,
     LATERAL (SELECT $3::timestamptz + make_interval(secs => i * $4::float8) AS t,
                     CASE WHEN i % 5 < 4 THEN (i / 5 * 4 + i % 5) % $5 + 1
                          ELSE $5 + 1 + (i / 5) % ($6 - $5) END AS job) AS s
"""

# The secondary indexes of job_runs that would hold finished runs: none but the
# partial ones on pending, running or leased runs (those stay, and stay empty).
LOADED_INDEXES = """
SELECT c.relname::text AS name, pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'job_runs'::regclass AND NOT i.indisprimary
  AND (i.indpred IS NULL
       OR pg_get_expr(i.indpred, i.indrelid) !~ '(status|lease_expires_at)')
ORDER BY c.relname
"""

DISK_BYTES = """
SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('job_runs')),
                pg_total_relation_size('job_runs'))::bigint
"""


async def partitioned(conn: asyncpg.Connection[Any]) -> bool:
    """Whether job_runs is partitioned (migration 0005 and later)."""
    kind: str = await conn.fetchval(
        "SELECT relkind::text FROM pg_class WHERE oid = 'job_runs'::regclass"
    )
    return kind == "p"


async def disk_bytes(conn: asyncpg.Connection[Any]) -> int:
    """job_runs on disk, every partition, index and TOAST table of it included."""
    size: int = await conn.fetchval(DISK_BYTES)
    return size


async def partitions(conn: asyncpg.Connection[Any]) -> list[tuple[str, datetime, datetime]]:
    """The day partitions of job_runs (not the default one), oldest first."""
    rows = await conn.fetch(
        "SELECT partition, lower_bound, upper_bound FROM history_partitions('job_runs')"
        " WHERE lower_bound IS NOT NULL AND lower_bound > '-infinity' ORDER BY lower_bound"
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def _create_day_partitions(
    conn: asyncpg.Connection[Any], first: date, last: date
) -> list[str]:
    """As history_partitions_create does, for the days `first` .. `last` that have no
    partition, but without a primary key yet (added after their rows); their names."""
    options: str = await conn.fetchval(
        "SELECT partition_options FROM history_tables WHERE name = 'job_runs'"
    )
    have = {lower.astimezone(UTC).date() for _, lower, _ in await partitions(conn)}
    made = []
    day = first
    while day <= last:
        if day not in have:
            name = f"job_runs_{day:%Y%m%d}"
            lower = datetime(day.year, day.month, day.day, tzinfo=UTC)
            await conn.execute(
                f"CREATE TABLE {name} (LIKE job_runs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
                f" {options}"
            )
            await conn.execute(
                f"ALTER TABLE job_runs ATTACH PARTITION {name}"
                f" FOR VALUES FROM ('{lower.isoformat()}') TO"
                f" ('{(lower + timedelta(days=1)).isoformat()}')"
            )
            made.append(name)
        day += timedelta(days=1)
    return made


async def make_jobs(conn: asyncpg.Connection[Any], shape: Shape) -> None:
    """The jobs, in chunks; ids 1 .. shape.jobs in order (a fresh table)."""
    for start in range(1, shape.jobs + 1, 200_000):
        end = min(shape.jobs, start + 199_999)
        await conn.execute(MAKE_JOBS, start, end, shape.due, shape.jobs, shape.lag_jobs)
    highest = await conn.fetchval("SELECT max(id) FROM jobs")
    assert highest == shape.jobs, f"jobs are not numbered 1 .. {shape.jobs}: {highest}"


async def load(conn: asyncpg.Connection[Any], shape: Shape, log: bool = True) -> dict[str, Any]:
    """Fill a database that has the schema and nothing else; what it took."""
    assert shape.jobs > shape.deep + shape.lag_jobs, "more jobs than deep and fire-lag ones"
    steps: dict[str, float] = {}
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        steps[name] = now - clock
        clock = now
        if log:
            print(f"  history: {name} {steps[name]:.1f} s", flush=True)

    await conn.execute("SET synchronous_commit = off")
    await conn.execute("SET maintenance_work_mem = '512MB'")
    await make_jobs(conn, shape)
    await conn.execute("VACUUM ANALYZE jobs")
    step("jobs")

    now: datetime = await conn.fetchval("SELECT now()")
    today = now.astimezone(UTC).date()
    start_day = today - timedelta(days=shape.days)
    start = datetime(start_day.year, start_day.month, start_day.day, tzinfo=UTC)
    step_s = (now - start).total_seconds() / shape.runs
    is_partitioned = await partitioned(conn)
    made: list[str] = []
    if is_partitioned:
        made = await _create_day_partitions(conn, start_day, today)
    dropped = [(r["name"], r["definition"]) for r in await conn.fetch(LOADED_INDEXES)]
    for name, _ in dropped:
        await conn.execute(f'DROP INDEX "{name}"')
    step("partitions and indexes dropped")

    sql = MAKE_RUNS.format(
        id="id, " if is_partitioned else "",
        id_value="run_id(s.t), " if is_partitioned else "",
    )
    await conn.execute("SET session_replication_role = replica")
    try:
        for first in range(0, shape.runs, CHUNK):
            last = min(shape.runs, first + CHUNK)
            await conn.execute(sql, first, last, start, step_s, shape.deep, shape.jobs)
            if log and (last // CHUNK) % 5 == 0:
                print(f"  history: {last:,} runs", flush=True)
    finally:
        await conn.execute("RESET session_replication_role")
    step("runs")

    for name in made:
        await conn.execute(f"ALTER TABLE {name} ADD PRIMARY KEY (id)")
    for _, definition in dropped:
        # A partitioned index's definition says ON ONLY: built here for every partition.
        await conn.execute(definition.replace(" ON ONLY ", " ON ", 1))
    step("indexes")

    await conn.execute("VACUUM ANALYZE job_runs")
    step("vacuum analyze")
    return {
        "partitioned": is_partitioned,
        "load_s": sum(steps.values()),
        "steps_s": steps,
        "first_tick": start,
        "last_tick": start + timedelta(seconds=step_s * (shape.runs - 1)),
        "partitions_made": len(made),
        "indexes_rebuilt": [name for name, _ in dropped],
    }


def runs_of_day(shape: Shape, loaded: dict[str, Any], day_start: datetime) -> int:
    """How many of the loaded runs have their tick in the UTC day from `day_start`."""
    first: datetime = loaded["first_tick"]
    last: datetime = loaded["last_tick"]
    step_s = (last - first).total_seconds() / max(1, shape.runs - 1)

    def index_at(moment: datetime) -> int:
        return max(0, min(shape.runs, math.ceil((moment - first).total_seconds() / step_s)))

    return index_at(day_start + timedelta(days=1)) - index_at(day_start)
