"""The rules of a job (scheduler_svc/api/jobs.py) below the HTTP layer: how requests are
judged, when a job next runs, and what counts as the same request again.

Each bad field's 400 over HTTP is in test_api_errors.py; creating, patching, pausing and
replays over HTTP in test_api_jobs.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from scheduler_svc import store
from scheduler_svc.api import jobs, writes
from scheduler_svc.audit import AuditContext
from scheduler_svc.errors import InvalidRequest
from scheduler_svc.models import JobCreate, JobPatch, JobSpec
from tests.factories import DEFAULTS, make_job

NOW = datetime(2030, 3, 4, 12, 0, 0, tzinfo=UTC)  # a Monday; Berlin is on UTC+1
RULES = jobs.Rules()


def create_body(**fields: Any) -> JobCreate:
    """A create request as the API decodes it from JSON."""
    return msgspec.convert({"name": "job", **fields}, JobCreate)


def fields_of(error: pytest.ExceptionInfo[InvalidRequest]) -> list[str]:
    return [e.field for e in error.value.errors]


# --- judging a request ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "stored"),
    [
        ({"schedule": "@hourly"}, "@hourly"),
        ({"interval": "@hourly"}, "@hourly"),
        ({"schedule": "@hourly", "interval": "@hourly"}, "@hourly"),
        ({"schedule": "  0 9 * * 1  "}, "0 9 * * 1"),
    ],
    ids=["schedule", "interval alias", "both, the same", "spaces around"],
)
def test_the_schedule_comes_from_either_name_without_surrounding_space(
    fields: dict[str, str], stored: str
) -> None:
    assert jobs.spec_from_create(create_body(**fields), RULES).schedule == stored


def test_a_bad_zone_and_a_bad_schedule_are_reported_together() -> None:
    body = create_body(schedule="every day at noon", timezone="Mars/Olympus_Mons")

    with pytest.raises(InvalidRequest) as error:
        jobs.spec_from_create(body, RULES)

    assert fields_of(error) == ["timezone", "schedule"]


def test_the_minimum_interval_is_the_rules_not_the_first_ones_asked() -> None:
    # The answer is cached per schedule: the rule must be part of what is cached.
    lenient, strict = jobs.Rules(min_interval_s=1), jobs.Rules(min_interval_s=60)

    assert jobs.schedule_errors("@every 10s", "UTC", lenient) == []
    [error] = jobs.schedule_errors("@every 10s", "UTC", strict)
    assert error.field == "schedule"
    assert jobs.schedule_errors("@every 10s", "UTC", lenient) == []


async def test_a_patch_of_the_zone_judges_the_stored_schedule_in_the_new_zone(conn: Any) -> None:
    stored = await make_job(conn, next_run_at=None, schedule="0 9 * * *")

    with pytest.raises(InvalidRequest) as error:
        jobs.spec_from_patch(stored, JobPatch(timezone="Nowhere/Atlantis"), RULES)
    assert fields_of(error) == ["timezone"]

    moved = jobs.spec_from_patch(stored, JobPatch(timezone="Europe/Berlin"), RULES)
    assert (moved.schedule, moved.timezone) == ("0 9 * * *", "Europe/Berlin")


# --- when a job next runs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "timezone", "paused", "planned"),
    [
        ("0 * * * *", "UTC", False, ("active", datetime(2030, 3, 4, 13, tzinfo=UTC))),
        ("@every 10s", "UTC", False, ("active", datetime(2030, 3, 4, 12, 0, 10, tzinfo=UTC))),
        ("0 9 * * *", "Europe/Berlin", False, ("active", datetime(2030, 3, 5, 8, tzinfo=UTC))),
        ("@at 2020-01-01T00:00:00Z", "UTC", False, ("active", datetime(2020, 1, 1, tzinfo=UTC))),
        ("0 * * * *", "UTC", True, ("paused", None)),
    ],
    ids=[
        "cron: the next boundary, not now",
        "every: one interval from now",
        "cron in a zone",
        "at in the past: still due once",
        "paused: no next run",
    ],
)
def test_plan_starts_from_now_and_never_from_missed_ticks(
    schedule: str, timezone: str, paused: bool, planned: tuple[str, datetime | None]
) -> None:
    spec = JobSpec(**{**DEFAULTS, "schedule": schedule, "timezone": timezone, "paused": paused})
    assert jobs.schedule_state(spec, NOW) == planned


# Who the changes these tests make are audited as.
ACTOR = AuditContext("test", None)


async def test_a_change_of_zone_alone_replans_the_job(pool: Any, clean: None) -> None:
    body = create_body(schedule="0 9 * * *")
    job, _ = await writes.create(pool, "default", body, RULES, None, ACTOR)
    assert job.next_run_at is not None and job.next_run_at.hour == 9

    patch = JobPatch(timezone="Asia/Tokyo")
    moved = await writes.update(pool, "default", job.id, patch, RULES, None, ACTOR)

    assert moved.next_run_at is not None
    assert (moved.next_run_at.hour, moved.next_run_at.minute) == (0, 0)  # 09:00 in Tokyo
    assert timedelta(0) < moved.next_run_at - await store.db_now(pool) <= timedelta(days=1)


# --- the same request again ---------------------------------------------------------------


def test_a_request_hash_ignores_spelling_but_not_content() -> None:
    def hashed(raw: bytes) -> str:
        return jobs.request_hash(msgspec.json.decode(raw, type=JobCreate))

    plain = hashed(b'{"name":"a","schedule":"@daily","attributes":{"x":1}}')

    assert plain == hashed(b'{ "attributes": {"x": 1},\n  "schedule": "@daily", "name": "a" }')
    assert plain == hashed(
        b'{"name":"a","schedule":"@daily","attributes":{"x":1},"timezone":"UTC"}'
    )
    assert plain != hashed(b'{"name":"a","schedule":"@daily","attributes":{"x":2}}')


def test_a_request_hash_ignores_the_order_of_keys_inside_attributes() -> None:
    def hashed(raw: bytes) -> str:
        return jobs.request_hash(msgspec.json.decode(raw, type=JobCreate))

    assert hashed(b'{"name":"a","schedule":"@daily","attributes":{"x":1,"y":2}}') == hashed(
        b'{"name":"a","schedule":"@daily","attributes":{"y":2,"x":1}}'
    )


async def test_a_key_whose_job_was_deleted_creates_a_new_job(conn: Any) -> None:
    body = create_body(schedule="@daily")
    first, replayed = await writes.create(conn, "default", body, RULES, "key-1", ACTOR)
    assert not replayed
    assert await store.job_delete(conn, "default", first.id)

    again, replayed = await writes.create(conn, "default", body, RULES, "key-1", ACTOR)

    assert not replayed
    assert again.id != first.id
