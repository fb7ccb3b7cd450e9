"""Run search (GET /runs, SPEC §8): a tenant's runs across its jobs, newest first,
filtered by status, job and tick, paged by cursor; never another tenant's; 400 for bad
filters."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler_svc.store.audit import day_of, windows
from tests.factories import make_job
from tests.helpers import assert_problem
from tests.principals import bearer, make_key

pytestmark = pytest.mark.timeout(60)

# Days before today of the seeded ticks: older ones than the first windows of the search
# read, and today's.
DAYS = (45, 9, 2, 1, 0)
STATUSES = ("succeeded", "failed", "pending", "running", "skipped", "cancelled")


async def seed(pool: asyncpg.Pool[Any], tenant: str) -> list[int]:
    """Two jobs of `tenant`, each with a run of every status on each day of DAYS; their ids."""
    jobs = [(await make_job(pool, tenant=tenant, next_run_at=None, name=n)).id for n in "ab"]
    now = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    ticks = [now - timedelta(days=d, minutes=i) for d in DAYS for i in range(len(STATUSES))]
    await pool.execute(
        """
        INSERT INTO job_runs (id, job_id, tenant, scheduled_for, status, lease_expires_at)
        SELECT run_id(t.tick), j.id, $1, t.tick, t.status,
               CASE WHEN t.status = 'running' THEN now() + interval '1 hour' END
        FROM unnest($2::bigint[]) AS j(id),
             unnest($3::timestamptz[], $4::text[]) AS t(tick, status)
        """,
        tenant,
        jobs,
        ticks,
        [STATUSES[i % len(STATUSES)] for i in range(len(ticks))],
    )
    return jobs


async def runs_of(pool: asyncpg.Pool[Any], tenant: str) -> list[dict[str, Any]]:
    """Every run of `tenant`, newest (highest id) first."""
    rows = await pool.fetch(
        "SELECT id, job_id, status, scheduled_for FROM job_runs WHERE tenant = $1 ORDER BY id DESC",
        tenant,
    )
    return [dict(r) for r in rows]


async def search(http: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> list[int]:
    """The ids GET /runs gives for `params`, following its Link headers to the end."""
    ids: list[int] = []
    url: str | None = "/runs"
    query: dict[str, Any] | None = params
    while url:
        response = await http.get(url, params=query, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page) <= int(params.get("limit", 50))
        ids += [r["id"] for r in page]
        link = response.headers.get("link")
        url, query = (link.split(";")[0].strip("<>"), None) if link else (None, None)
    return ids


@pytest.fixture
async def tenant(client: httpx.AsyncClient, pool: asyncpg.Pool[Any]) -> tuple[str, dict[str, str]]:
    """A tenant of its own with a key, and its bearer header."""
    name = f"search-{secrets.token_hex(4)}"
    return name, bearer(await make_key(pool, name))


async def test_runs_of_every_job_page_newest_first_to_the_oldest(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], tenant: tuple[str, dict[str, str]]
) -> None:
    name, headers = tenant
    await seed(pool, name)
    expected = [r["id"] for r in await runs_of(pool, name)]
    assert len(expected) == 2 * len(DAYS) * len(STATUSES)
    assert await search(client, headers, limit=7) == expected
    assert await search(client, headers) == expected
    # A run from before runs were partitioned has a small id, which tells no day: it is
    # found too, last.
    job_id = (await runs_of(pool, name))[0]["job_id"]
    await pool.execute(
        "INSERT INTO job_runs (id, job_id, tenant, scheduled_for, status) "
        "VALUES (4242, $1, $2, now() - interval '50 days', 'succeeded')",
        job_id,
        name,
    )
    assert await search(client, headers, limit=25) == [*expected, 4242]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_filters_by_status_job_and_tick_combine(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], tenant: tuple[str, dict[str, str]]
) -> None:
    name, headers = tenant
    jobs = await seed(pool, name)
    runs = await runs_of(pool, name)
    now = datetime.now(UTC)
    since, until = now - timedelta(days=10), now - timedelta(days=1, hours=12)
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"status": "failed"}, lambda r: r["status"] == "failed"),
        ({"status": "cancelled", "limit": 3}, lambda r: r["status"] == "cancelled"),
        ({"job_id": jobs[1]}, lambda r: r["job_id"] == jobs[1]),
        (
            {"job_id": jobs[0], "status": "running", "limit": 2},
            lambda r: r["job_id"] == jobs[0] and r["status"] == "running",
        ),
        ({"since": _iso(since)}, lambda r: r["scheduled_for"] >= since),
        ({"until": _iso(until), "limit": 4}, lambda r: r["scheduled_for"] < until),
        (
            {"since": _iso(since), "until": _iso(until), "status": "succeeded"},
            lambda r: since <= r["scheduled_for"] < until and r["status"] == "succeeded",
        ),
        (
            {"since": _iso(since), "until": _iso(until), "job_id": jobs[1], "limit": 1},
            lambda r: since <= r["scheduled_for"] < until and r["job_id"] == jobs[1],
        ),
        # A tick exactly at `since` is in, one exactly at `until` out.
        (
            {"since": _iso(runs[0]["scheduled_for"])},
            lambda r: r["scheduled_for"] >= runs[0]["scheduled_for"],
        ),
        (
            {"until": _iso(runs[0]["scheduled_for"])},
            lambda r: r["scheduled_for"] < runs[0]["scheduled_for"],
        ),
        # An offset other than Z means the same instant.
        (
            {"since": since.astimezone(timezone(timedelta(hours=-5))).isoformat()},
            lambda r: r["scheduled_for"] >= since,
        ),
    ]
    for params, keep in cases:
        expected = [r["id"] for r in runs if keep(r)]
        assert expected, params
        assert await search(client, headers, **params) == expected, params


async def test_a_tenant_finds_only_its_own_runs(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], tenant: tuple[str, dict[str, str]]
) -> None:
    name, headers = tenant
    other = f"search-other-{secrets.token_hex(4)}"
    other_headers = bearer(await make_key(pool, other))
    jobs = await seed(pool, name)
    other_jobs = await seed(pool, other)
    assert await search(client, headers) == [r["id"] for r in await runs_of(pool, name)]
    assert await search(client, other_headers) == [r["id"] for r in await runs_of(pool, other)]
    # Another tenant's job and run ids lead nowhere, even as a cursor.
    assert await search(client, other_headers, job_id=jobs[0]) == []
    assert await search(client, headers, job_id=other_jobs[0], status="failed") == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "lost"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2024-05-01T10:00:00"}, "since"),
        ({"until": "2024-13-01T00:00:00Z"}, "until"),
        ({"since": "2024-05-02T00:00:00Z", "until": "2024-05-01T00:00:00Z"}, "until"),
        ({"until": "0001-01-01T00:00:00+01:00"}, "until"),
        ({"job_id": "seven"}, "job_id"),
        ({"job_id": "0"}, "job_id"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"cursor": "not-ours"}, "cursor"),
    ],
)
async def test_a_bad_filter_is_a_400_naming_it(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    problem = assert_problem(await client.get("/runs", params=params), 400)
    assert [e["field"] for e in problem["errors"]] == [field], problem


moments = st.datetimes(
    min_value=datetime(1999, 6, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(
    before_id=st.none() | st.integers(1, (1 << 53) - 1) | st.integers(1, 1 << 37),
    since=st.none() | moments,
    until=st.none() | moments,
)
def test_the_windows_hold_every_id_below_the_cursor_once_newest_first(
    before_id: int | None, since: datetime | None, until: datetime | None
) -> None:
    found = list(windows(before_id, since, until))
    top = before_id if before_id is not None else 1 << 53
    if until is not None and day_of(until) >= 1:
        top = min(top, (day_of(until) + 1) << 37)
    assert [w.id_below for w in found] == sorted((w.id_below for w in found), reverse=True)
    # Together they hold every id below the top once, but those of whole days before
    # `since` (never ids of day 0, whose time can be any).
    covered = 0
    for w in sorted(found, key=lambda w: w.id_from):
        if w.id_from >= w.id_below:
            continue
        assert w.id_from >= covered
        if w.id_from > covered:  # a gap: days before `since` only
            assert since is not None and covered >= 1 << 37, (covered, w)
            assert (w.id_from - 1) >> 37 < day_of(since)
        covered = w.id_below
    assert covered == top or (since is not None and (top - 1) >> 37 < day_of(since))
    # Each window's times hold those of its ids' days, within [since, until).
    day_zero = datetime(2000, 1, 1, tzinfo=UTC)
    for w in found:
        assert since is None or (w.since is not None and w.since >= since)
        assert until is None or (w.until is not None and w.until <= until)
        first_day, last_day = w.id_from >> 37, (w.id_below - 1) >> 37
        if w.id_from == 0 or w.id_from >= w.id_below:
            assert w.id_from != 0 or (w.since, w.until) == (since, until)
            continue
        for day in (first_day, last_day):
            start, end = day_zero + timedelta(days=day), day_zero + timedelta(days=day + 1)
            if day >= 2 and (until is None or start < until) and (since is None or end > since):
                assert w.since is None or w.since <= max(start, since or start), (w, day)
                assert w.until is None or w.until >= min(end, until or end), (w, day)
