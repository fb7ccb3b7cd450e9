"""Jobs as code (SPEC §11, Keys): a job's `key` and `managed_by`, PUT /jobs/by-key/{key}
(create, replace, change nothing, dry run), GET, PATCH and DELETE by key, over real HTTP
against a real database; and migration 0006, which adds them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from scheduler_svc import store
from scheduler_svc.api import jobs, writes
from scheduler_svc.audit import AuditContext
from scheduler_svc.models import JobCreate, JobPatch
from scheduler_svc.store import db, migrate
from tests.factories import audited
from tests.helpers import assert_problem, create_job, scratch_database
from tests.principals import bearer, make_key
from tests.replicas import eventually
from tests.test_migrations import FIXTURES, catalog, connect, migrate_url

JOB: dict[str, Any] = {"name": "nightly report", "schedule": "0 3 * * *"}
SECRET = "Bearer s3cret-value"
HOOK = {
    "type": "http",
    "url": "https://example.com/hook",
    "headers": {"Authorization": SECRET, "X-Team": "data"},
}
EVERY_FIELD = [
    "name",
    "managed_by",
    "schedule",
    "timezone",
    "attributes",
    "target",
    "max_attempts",
    "backoff_s",
    "backoff_max_s",
    "timeout_s",
    "misfire_policy",
    "misfire_grace_s",
    "overlap",
    "tags",
    "jitter_s",
    "alerts",
    "paused",
]


async def put(
    client: httpx.AsyncClient, key: str, body: dict[str, Any], **options: Any
) -> httpx.Response:
    return await client.put(f"/jobs/by-key/{key}", json=body, **options)


async def plan(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.put(f"/jobs/by-key/{key}", params={"dry_run": "true"}, json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def stored(pool: asyncpg.Pool[Any], job_id: int) -> dict[str, Any]:
    row = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    assert row is not None
    return dict(row)


# --- PUT: create, replace, change nothing ----------------------------------------------


async def test_a_put_creates_the_job_and_an_identical_one_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    created = await put(client, "reports/nightly", {**JOB, "managed_by": "apply"})
    assert created.status_code == 201, created.text
    job = created.json()
    assert created.headers["location"] == f"/jobs/{job['id']}"
    assert created.headers["etag"] == '"1"'
    assert (job["key"], job["managed_by"], job["version"]) == ("reports/nightly", "apply", 1)

    again = await put(client, "reports/nightly", {**JOB, "managed_by": "apply"})
    assert again.status_code == 200, again.text
    assert again.json() == job  # the same version and updated_at: nothing was written
    assert again.headers["etag"] == '"1"'
    # The key may be sent in the body too, if it is the path's.
    same = await put(
        client, "reports/nightly", {**JOB, "key": "reports/nightly", "managed_by": "apply"}
    )
    assert (same.status_code, same.json()["version"]) == (200, 1)
    assert [j["id"] for j in (await client.get("/jobs")).json()] == [job["id"]]


async def test_a_changed_put_replaces_the_whole_job_and_bumps_its_version(
    client: httpx.AsyncClient,
) -> None:
    first = (await put(client, "k1", {**JOB, "max_attempts": 5, "attributes": {"a": 1}})).json()
    body = {**JOB, "name": "renamed", "schedule": "@every 10s"}  # max_attempts, attributes left out

    assert await plan(client, "k1", body) == {
        "action": "update",
        "changed": ["name", "schedule", "attributes", "max_attempts"],
    }
    response = await put(client, "k1", body)
    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["id"], job["version"], response.headers["etag"]) == (first["id"], 2, '"2"')
    assert (job["name"], job["schedule"], job["max_attempts"], job["attributes"]) == (
        "renamed",
        "@every 10s",
        3,
        {},
    )
    assert job["next_run_at"] < first["next_run_at"]  # replanned for the new schedule
    assert job["updated_at"] > first["updated_at"]


async def test_the_interval_alias_and_spacing_of_a_schedule_are_no_change(
    client: httpx.AsyncClient,
) -> None:
    await put(client, "k1", {"name": "n", "schedule": "*/5 * * * *"})
    response = await put(client, "k1", {"name": "n", "interval": " */5 * * * * "})
    assert (response.status_code, response.json()["version"]) == (200, 1)


async def test_a_put_without_paused_keeps_a_paused_job_paused(client: httpx.AsyncClient) -> None:
    job = (await put(client, "k1", JOB)).json()
    assert job["status"] == "active"
    paused = (await client.post(f"/jobs/{job['id']}/pause")).json()
    assert paused["status"] == "paused"

    # A maintenance window survives an apply of the unchanged file...
    again = await put(client, "k1", JOB)
    assert again.json() == paused
    # ...and of a changed one.
    changed = (await put(client, "k1", {**JOB, "name": "renamed"})).json()
    assert (changed["status"], changed["next_run_at"], changed["version"]) == (
        "paused",
        None,
        paused["version"] + 1,
    )
    assert await plan(client, "k1", {**JOB, "name": "renamed", "paused": False}) == {
        "action": "update",
        "changed": ["paused"],
    }
    resumed = (await put(client, "k1", {**JOB, "name": "renamed", "paused": False})).json()
    assert resumed["status"] == "active" and resumed["next_run_at"] is not None
    # An active job stays active without `paused` too.
    assert (await put(client, "k1", {**JOB, "name": "renamed"})).json() == resumed


async def test_a_completed_job_stays_completed_unless_its_schedule_changes(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    once = {"name": "once", "schedule": "@at 2020-01-01T00:00:00Z"}
    job = (await put(client, "once", once)).json()
    # As the scheduler leaves a one-off that has fired.
    await pool.execute(
        "UPDATE jobs SET status = 'completed', next_run_at = NULL WHERE id = $1", job["id"]
    )
    fired = (await client.get(f"/jobs/{job['id']}")).json()
    assert (await put(client, "once", once)).json() == fired
    renamed = (await put(client, "once", {**once, "name": "still once"})).json()
    assert (renamed["status"], renamed["version"]) == ("completed", 2)
    later = (await put(client, "once", {**once, "schedule": "@at 2040-01-01T00:00:00Z"})).json()
    assert (later["status"], later["next_run_at"]) == ("active", "2040-01-01T00:00:00Z")


async def test_a_masked_secret_keeps_the_stored_one_and_a_changed_secret_shows_by_name(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    job = (await put(client, "hook", {**JOB, "target": HOOK})).json()
    shown = job["target"]
    assert shown["headers"] == {"Authorization": "***", "X-Team": "data"}

    # What export writes (the mask) plans and applies as no change.
    assert await plan(client, "hook", {**JOB, "target": shown}) == {
        "action": "none",
        "changed": [],
    }
    response = await put(client, "hook", {**JOB, "target": shown})
    assert (response.status_code, response.json()["version"]) == (200, 1)
    assert (await stored(pool, job["id"]))["target"]["headers"]["Authorization"] == SECRET

    # A new secret is a change the plan names, without showing either value.
    rotated = {**HOOK, "headers": {**HOOK["headers"], "Authorization": "Bearer rotated"}}
    answer = await client.put(
        "/jobs/by-key/hook", params={"dry_run": "true"}, json={**JOB, "target": rotated}
    )
    assert answer.json() == {"action": "update", "changed": ["target"]}
    assert "rotated" not in answer.text and "s3cret" not in answer.text
    assert (await stored(pool, job["id"]))["target"]["headers"]["Authorization"] == SECRET
    applied = await put(client, "hook", {**JOB, "target": rotated})
    assert applied.json()["version"] == 2 and "rotated" not in applied.text
    assert (await stored(pool, job["id"]))["target"]["headers"]["Authorization"] == "Bearer rotated"


async def test_a_dry_run_says_create_update_or_none_and_writes_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    assert await plan(client, "k1", JOB) == {"action": "create", "changed": EVERY_FIELD}
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 0

    job = (await put(client, "k1", JOB)).json()
    before = await stored(pool, job["id"])
    assert await plan(client, "k1", JOB) == {"action": "none", "changed": []}
    assert await plan(client, "k1", {**JOB, "overlap": "allow", "managed_by": "apply"}) == {
        "action": "update",
        "changed": ["managed_by", "overlap"],
    }
    assert await stored(pool, job["id"]) == before
    # A dry run checks the body as a PUT would.
    response = await client.put(
        "/jobs/by-key/k1", params={"dry_run": "true"}, json={**JOB, "schedule": "nope"}
    )
    assert assert_problem(response, 400)["errors"][0]["field"] == "schedule"


async def test_if_match_guards_a_put_and_fails_on_a_job_that_does_not_exist(
    client: httpx.AsyncClient,
) -> None:
    for etag in ('"1"', "*"):  # RFC 9110: no current representation, so If-Match is false
        response = await put(client, "k1", JOB, headers={"If-Match": etag})
        assert_problem(response, 412)
    assert (await client.get("/jobs")).json() == []

    await put(client, "k1", JOB)
    await put(client, "k1", {**JOB, "name": "v2"})
    stale = await put(client, "k1", {**JOB, "name": "v3"}, headers={"If-Match": '"1"'})
    assert_problem(stale, 412)
    dry = await client.put(
        "/jobs/by-key/k1", params={"dry_run": "1"}, json=JOB, headers={"If-Match": '"1"'}
    )
    assert_problem(dry, 412)
    assert (await client.get("/jobs/by-key/k1")).json()["name"] == "v2"
    fresh = await put(client, "k1", {**JOB, "name": "v3"}, headers={"If-Match": '"2"'})
    assert (fresh.status_code, fresh.json()["version"]) == (200, 3)
    anything = await put(client, "k1", {**JOB, "name": "v4"}, headers={"If-Match": "*"})
    assert anything.status_code == 200


# --- GET, PATCH, DELETE by key -----------------------------------------------------------


async def test_get_patch_and_delete_by_key_answer_as_their_id_forms(
    client: httpx.AsyncClient,
) -> None:
    job = await create_job(client, key="team/reports:nightly", managed_by="apply")
    by_id = await client.get(f"/jobs/{job['id']}")
    by_key = await client.get("/jobs/by-key/team/reports:nightly")
    assert by_key.status_code == 200
    assert by_key.json() == by_id.json() == job
    assert by_key.headers["etag"] == by_id.headers["etag"] == '"1"'
    # Escaped slashes name the same job.
    assert (await client.get("/jobs/by-key/team%2Freports%3Anightly")).json() == job

    patched = await client.patch("/jobs/by-key/team/reports:nightly", json={"name": "renamed"})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["name"], patched.json()["version"]) == ("renamed", 2)
    assert patched.headers["etag"] == '"2"'
    stale = await client.patch(
        "/jobs/by-key/team/reports:nightly", json={"name": "x"}, headers={"If-Match": '"1"'}
    )
    assert_problem(stale, 412)
    paused = await client.patch("/jobs/by-key/team/reports:nightly", json={"paused": True})
    assert paused.json()["status"] == "paused"

    deleted = await client.delete("/jobs/by-key/team/reports:nightly")
    assert (deleted.status_code, deleted.content) == (204, b"")
    for method in ("GET", "PATCH", "DELETE"):
        body = {"name": "x"} if method == "PATCH" else None
        missing = await client.request(method, "/jobs/by-key/team/reports:nightly", json=body)
        problem = assert_problem(missing, 404)
        assert "team/reports:nightly" in problem["detail"]
    assert_problem(await client.get(f"/jobs/{job['id']}"), 404)


async def test_a_key_that_looks_like_another_route_is_still_a_key(
    client: httpx.AsyncClient,
) -> None:
    job = await create_job(client)
    keyed = (await put(client, f"{job['id']}/runs", JOB)).json()
    assert keyed["key"] == f"{job['id']}/runs" and keyed["id"] != job["id"]
    assert (await client.get(f"/jobs/by-key/{job['id']}/runs")).json()["id"] == keyed["id"]
    assert (await client.get(f"/jobs/{job['id']}/runs")).json() == []
    assert (await client.post(f"/jobs/by-key/{job['id']}/pause")).status_code == 405


async def test_patch_sets_changes_and_clears_a_key(client: httpx.AsyncClient) -> None:
    job = await create_job(client)
    assert job["key"] is None and job["managed_by"] is None
    keyed = (
        await client.patch(f"/jobs/{job['id']}", json={"key": "a:b", "managed_by": "t"})
    ).json()
    assert (keyed["key"], keyed["managed_by"]) == ("a:b", "t")
    moved = (await client.patch("/jobs/by-key/a:b", json={"key": "c"})).json()
    assert moved["key"] == "c"
    assert_problem(await client.get("/jobs/by-key/a:b"), 404)
    cleared = (await client.patch("/jobs/by-key/c", json={"key": None, "managed_by": None})).json()
    assert (cleared["key"], cleared["managed_by"], cleared["version"]) == (None, None, 4)


async def test_a_key_another_job_has_is_a_409(client: httpx.AsyncClient) -> None:
    await create_job(client, key="taken")
    other = await create_job(client)
    problem = assert_problem(await client.post("/jobs", json={**JOB, "key": "taken"}), 409)
    assert problem["type"] == "urn:scheduler-svc:problem:key-conflict"
    assert "taken" in problem["detail"]
    response = await client.patch(f"/jobs/{other['id']}", json={"key": "taken"})
    assert assert_problem(response, 409)["type"].endswith(":key-conflict")
    assert (await client.get(f"/jobs/{other['id']}")).json()["key"] is None
    # With an Idempotency-Key: a replay is still a replay, a new key's create a conflict.
    headers = {"Idempotency-Key": "once"}
    first = await client.post("/jobs", json={**JOB, "key": "k2"}, headers=headers)
    replay = await client.post("/jobs", json={**JOB, "key": "k2"}, headers=headers)
    assert (first.status_code, replay.headers["idempotent-replayed"]) == (201, "true")
    taken = await client.post(
        "/jobs", json={**JOB, "key": "taken"}, headers={"Idempotency-Key": "2"}
    )
    assert_problem(taken, 409)


# --- the list filters ----------------------------------------------------------------------


async def test_the_list_filters_by_key_and_by_managed_by(client: httpx.AsyncClient) -> None:
    a = (await put(client, "a", {**JOB, "managed_by": "apply"})).json()
    b = (await put(client, "b/c", {**JOB, "managed_by": "apply"})).json()
    c = (await put(client, "d", {**JOB, "managed_by": "terraform"})).json()
    await create_job(client)

    async def listed(**params: Any) -> list[int]:
        response = await client.get("/jobs", params=params)
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()]

    assert await listed(key="b/c") == [b["id"]]
    assert await listed(key="nope") == []
    assert await listed(managed_by="apply") == [b["id"], a["id"]]
    assert await listed(managed_by="terraform", key="d") == [c["id"]]
    assert await listed(managed_by="apply", key="d") == []
    page = await client.get("/jobs", params={"managed_by": "apply", "limit": 1})
    assert "managed_by=apply" in page.headers["link"]
    assert [j["id"] for j in page.json()] == [b["id"]]
    following = page.headers["link"].split(";")[0].strip("<>")
    rest = await client.get(following)
    assert [j["id"] for j in rest.json()] == [a["id"]], following
    # The other filters apply to the jobs found by key or owner.
    await client.post(f"/jobs/{a['id']}/pause")
    assert await listed(managed_by="apply", status="paused") == [a["id"]]
    assert await listed(managed_by="apply", name=JOB["name"]) == [b["id"], a["id"]]
    assert await listed(key="b/c", status="paused") == []


# --- tenants ------------------------------------------------------------------------------


async def test_the_same_key_in_two_tenants_is_two_jobs(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    tenant_a = bearer(await make_key(pool, "tenant-a"))
    tenant_b = bearer(await make_key(pool, "tenant-b"))
    a = await put(client, "shared/key", {**JOB, "name": "A's"}, headers=tenant_a)
    b = await put(client, "shared/key", {**JOB, "name": "B's"}, headers=tenant_b)
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]
    got = await client.get("/jobs/by-key/shared/key", headers=tenant_b)
    assert got.json()["name"] == "B's"
    assert (await client.get("/jobs", params={"key": "shared/key"}, headers=tenant_a)).json() == [
        a.json()
    ]
    assert (await client.delete("/jobs/by-key/shared/key", headers=tenant_a)).status_code == 204
    assert_problem(await client.get("/jobs/by-key/shared/key", headers=tenant_a), 404)
    assert (await client.get("/jobs/by-key/shared/key", headers=tenant_b)).json() == got.json()
    # Reading by key takes jobs:read, writing jobs:write, as by id.
    reader = bearer(await make_key(pool, "tenant-b", "jobs:read"))
    assert (await client.get("/jobs/by-key/shared/key", headers=reader)).status_code == 200
    for method in ("PUT", "PATCH", "DELETE"):
        response = await client.request(method, "/jobs/by-key/shared/key", json=JOB, headers=reader)
        assert_problem(response, 403)


# --- what a key may be ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "-starts-with-a-dash",
        "has space",
        "ümlaut",
        "semi;colon",
        "x" * 201,
        "a/",
        "a//b",
        "a/./b",
        "a/../b",
        "a/..",
    ],
)
async def test_a_bad_key_in_a_body_is_a_400_naming_the_field(
    client: httpx.AsyncClient, key: str
) -> None:
    response = await client.post("/jobs", json={**JOB, "key": key})
    assert [e["field"] for e in assert_problem(response, 400)["errors"]] == ["key"]
    job = await create_job(client)
    response = await client.patch(f"/jobs/{job['id']}", json={"key": key})
    assert [e["field"] for e in assert_problem(response, 400)["errors"]] == ["key"]
    if len(key) <= 200:  # a longer filter is a 400 itself
        assert (await client.get("/jobs", params={"key": key})).json() == []


@pytest.mark.parametrize("path", ["-dash", "has%20space", "%C3%BCmlaut", "x" * 201, "a%0A"])
@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
async def test_a_bad_key_in_the_path_is_a_400_naming_it(
    client: httpx.AsyncClient, path: str, method: str
) -> None:
    body = JOB if method == "PUT" else {"name": "x"} if method == "PATCH" else None
    response = await client.request(method, f"/jobs/by-key/{path}", json=body)
    problem = assert_problem(response, 400)
    assert [e["field"] for e in problem["errors"]] == ["key"]
    assert (await client.get("/jobs")).json() == []


async def test_a_body_key_other_than_the_paths_is_a_400(client: httpx.AsyncClient) -> None:
    response = await put(client, "k1", {**JOB, "key": "k2"})
    assert [e["field"] for e in assert_problem(response, 400)["errors"]] == ["key"]


@pytest.mark.parametrize("managed_by", ["", "x" * 201, 7])
async def test_managed_by_is_a_short_string(client: httpx.AsyncClient, managed_by: Any) -> None:
    response = await put(client, "k1", {**JOB, "managed_by": managed_by})
    assert [e["field"] for e in assert_problem(response, 400)["errors"]] == ["managed_by"]


# --- concurrency ----------------------------------------------------------------------------


async def test_twenty_concurrent_puts_of_a_new_key_make_exactly_one_job(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    answers = await asyncio.gather(*(put(client, "race/one", JOB) for _ in range(20)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 19 + [201], [a.text for a in answers if a.status_code >= 300]
    assert {a.json()["id"] for a in answers} == {answers[0].json()["id"]}
    assert {a.json()["version"] for a in answers} == {1}
    assert await pool.fetchval("SELECT count(*) FROM job_keys WHERE key = 'race/one'") == 1
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 1


async def test_concurrent_puts_of_different_bodies_end_with_one_job_of_the_last_write(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    bodies = [{**JOB, "name": f"writer {i}"} for i in range(10)]
    answers = await asyncio.gather(*(put(client, "race/two", b) for b in bodies))
    assert sorted(a.status_code for a in answers) == [200] * 9 + [201]
    rows = await pool.fetch(
        "SELECT name, version FROM jobs JOIN job_keys ON job_id = id WHERE key = 'race/two'"
    )
    assert len(rows) == 1
    # Every writer's PUT took effect in turn: the version counts the changes.
    final = max(answers, key=lambda a: a.json()["version"]).json()
    assert (rows[0]["name"], rows[0]["version"]) == (final["name"], final["version"])


async def key_changed_while_a_request_waits(
    pool: asyncpg.Pool[Any], job_id: int, patch: JobPatch, request: Awaitable[httpx.Response]
) -> httpx.Response:
    """Run `request` while a transaction holds the job's lock and applies `patch` (as a
    PATCH does: job_lock, job_update), committing once `request` waits for the lock."""
    async with pool.acquire() as conn, conn.transaction():
        tenant = await conn.fetchval("SELECT tenant FROM jobs WHERE id = $1", job_id)
        row = await store.job_lock(conn, tenant, job_id)
        assert row is not None
        spec = jobs.spec_from_patch(row, patch, jobs.Rules())
        await store.job_update(
            conn, tenant, job_id, spec, status=row.status, next_run_at=row.next_run_at
        )
        task = asyncio.ensure_future(request)

        async def waiting() -> bool:
            return bool(
                await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )

        await eventually(waiting, 10, "the request to wait for the job's lock")
        assert not task.done()
    return await task


async def test_a_patch_that_waited_for_a_key_change_keeps_it(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    job = await create_job(client)
    renamed = await key_changed_while_a_request_waits(
        pool,
        job["id"],
        JobPatch(key="set-meanwhile", managed_by="t"),
        client.patch(f"/jobs/{job['id']}", json={"name": "renamed"}),
    )
    assert renamed.status_code == 200, renamed.text
    answer = renamed.json()
    assert (answer["name"], answer["key"], answer["managed_by"], answer["version"]) == (
        "renamed",
        "set-meanwhile",
        "t",
        3,
    )
    assert (await client.get("/jobs/by-key/set-meanwhile")).json() == answer


async def test_a_put_or_delete_by_a_key_moved_while_it_waited_does_not_touch_that_job(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    job = (await put(client, "k1", JOB)).json()
    created = await key_changed_while_a_request_waits(
        pool, job["id"], JobPatch(key="k2"), put(client, "k1", {**JOB, "name": "new"})
    )
    assert created.status_code == 201, created.text
    assert created.json()["id"] != job["id"]
    kept = (await client.get(f"/jobs/{job['id']}")).json()
    assert (kept["key"], kept["name"]) == ("k2", JOB["name"])

    deleted = await key_changed_while_a_request_waits(
        pool, job["id"], JobPatch(key="k3"), client.delete("/jobs/by-key/k2")
    )
    assert_problem(deleted, 404)
    assert (await client.get(f"/jobs/{job['id']}")).json()["key"] == "k3"


# --- the API document ---------------------------------------------------------------------


async def test_the_openapi_document_describes_the_by_key_routes(client: httpx.AsyncClient) -> None:
    document = (await client.get("/api/openapi.json")).json()
    item = document["paths"]["/jobs/by-key/{key}"]
    assert {m: op["operationId"] for m, op in item.items()} == {
        "get": "getJobByKey",
        "put": "putJobByKey",
        "patch": "updateJobByKey",
        "delete": "deleteJobByKey",
    }
    responses = item["put"]["responses"]
    assert responses["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobOut"
    }
    assert {"$ref": "#/components/schemas/JobPlan"} in responses["200"]["content"][
        "application/json"
    ]["schema"]["oneOf"]
    assert {"400", "404", "412"} <= responses.keys()
    schemas = document["components"]["schemas"]
    assert schemas["JobPut"]["additionalProperties"] is False
    assert "paused" not in schemas["JobPut"].get("required", [])
    assert {"key", "managed_by"} <= schemas["JobOut"]["properties"].keys()
    assert {"key", "managed_by"} <= schemas["JobCreate"]["properties"].keys()
    parameters = {p["name"] for p in document["paths"]["/jobs"]["get"]["parameters"]}
    assert {"key", "managed_by"} <= parameters


# --- the rules, without HTTP --------------------------------------------------------------


def test_a_create_request_without_a_key_hashes_as_before_keys_existed() -> None:
    # The fingerprint of this body under the previous release: an Idempotency-Key retry
    # that reaches a replica of either release during an upgrade is a replay, not a 409.
    body = msgspec.json.decode(
        b'{"name": "Example Job", "attributes": {"key": "value"}, "interval": "* * * * *"}',
        type=JobCreate,
    )
    assert jobs.request_hash(body) == (
        "6c01c7cfd7ae2a2882e7331d66c41a729267d98f5fca298eb26290c0fda58f48"
    )
    assert jobs.request_hash(msgspec.structs.replace(body, key="k")) != jobs.request_hash(body)


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("a", True),
        ("A0_.:/-z", True),
        ("team/reports/nightly.v2", True),
        ("a/.b/..c/...", True),
        ("x" * 200, True),
        ("x" * 201, False),
        ("", False),
        ("/a", False),
        (".a", False),
        ("a\n", False),
        ("a/", False),
        ("a//b", False),
        ("a/./b", False),
        ("a/..", False),
    ],
)
def test_what_a_key_may_be(key: str, valid: bool) -> None:
    assert (jobs.key_problem(key) is None) == valid


# --- migration 0006 -------------------------------------------------------------------------

# Statements of the previous release (ea3fc4c's queries.sql) on jobs and its view, the
# kinds it runs inside a transaction (PATCH, pause, resume; a create with an
# Idempotency-Key reads the first job by it), each taking (tenant, id).
PREVIOUS_STATEMENTS = (
    "INSERT INTO jobs (tenant, name, schedule, status) VALUES ($1, 'n' || $2::bigint, '@daily',"
    " 'paused') ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL"
    " DO NOTHING RETURNING *, NULL::timestamptz AS last_run_at, NULL::text AS last_run_status",
    "SELECT * FROM jobs_with_last_run WHERE tenant = $1 AND id = $2",
    "SELECT *, NULL::timestamptz AS last_run_at, NULL::text AS last_run_status"
    " FROM jobs WHERE tenant = $1 AND id = $2 FOR UPDATE",
    "WITH updated AS (UPDATE jobs SET version = version + 1 WHERE tenant = $1 AND id = $2"
    " RETURNING *) SELECT updated.*, NULL::timestamptz AS last_run_at FROM updated",
)


async def run_previous_statements(conn: asyncpg.Connection[Any], job_id: int) -> None:
    """The previous release's statements, in one transaction, as its PATCH runs them."""
    async with conn.transaction():
        for statement in PREVIOUS_STATEMENTS:
            await conn.fetch(statement, "t", job_id)


async def test_migration_0006_changes_no_row_type_the_previous_release_reads(
    postgres_server_url: str,
) -> None:
    """Under the previous release (schema 4, then 0005 while it runs), 0006 leaves jobs and
    jobs_with_last_run as they were: the statements it has prepared run on inside a
    transaction. A column added to jobs would fail them (the last part shows it)."""
    async with scratch_database(postgres_server_url, "scheduler_keys") as url:
        conn = await connect(url)
        old = await connect(url)
        try:
            await conn.execute((FIXTURES / "schema_v4.sql").read_text())
            for migration in migrate.MIGRATIONS:
                for step in migration.steps if migration.version < 6 else ():
                    async with conn.transaction():
                        await conn.execute(step.sql)
            job_id = await conn.fetchval(
                "INSERT INTO jobs (tenant, name, schedule) VALUES ('t', 'j', '@daily') RETURNING id"
            )
            shapes = {
                name: [(a.name, a.type.name) for a in (await old.prepare(q)).get_attributes()]
                for name, q in [
                    ("jobs", "SELECT * FROM jobs"),
                    ("view", "SELECT * FROM jobs_with_last_run"),
                ]
            }
            view = "SELECT pg_get_viewdef('jobs_with_last_run'::regclass)"
            definition = await conn.fetchval(view)
            await run_previous_statements(old, job_id)

            (keys,) = [m for m in migrate.MIGRATIONS if m.version == 6]
            for step in keys.steps:
                async with conn.transaction():
                    await conn.execute(step.sql)
            await conn.execute(
                "INSERT INTO job_keys (job_id, tenant, key) VALUES ($1, 't', 'k')", job_id
            )

            await run_previous_statements(old, job_id)
            assert await conn.fetchval(view) == definition
            for name, q in [
                ("jobs", "SELECT * FROM jobs"),
                ("view", "SELECT * FROM jobs_with_last_run"),
            ]:
                attributes = (await old.prepare(q)).get_attributes()
                assert [(a.name, a.type.name) for a in attributes] == shapes[name]
            # The previous release deletes a job; its keys go with it.
            await old.execute("DELETE FROM jobs WHERE tenant = 't' AND id = $1", job_id)
            assert await conn.fetchval("SELECT count(*) FROM job_keys") == 0

            # What the columns on jobs of an earlier draft of 0006 did to it.
            job_id = await conn.fetchval(
                "INSERT INTO jobs (tenant, name, schedule) VALUES ('t', 'j', '@daily') RETURNING id"
            )
            await run_previous_statements(old, job_id)
            await conn.execute("ALTER TABLE jobs ADD COLUMN key text")
            with pytest.raises(asyncpg.InvalidCachedStatementError):
                await run_previous_statements(old, job_id)
        finally:
            await old.close()
            await conn.close()


async def test_migration_0006_is_safe_to_run_again(postgres_server_url: str) -> None:
    """Run again on the database it brought to 6, as after a crash between its commit and
    its record (a later migration's columns of jobs would change its view's `j.*`)."""
    (migration,) = [m for m in migrate.MIGRATIONS if m.name == "job_keys"]
    assert migration.version == 6 and len(migration.steps) == 1
    async with scratch_database(postgres_server_url, "scheduler_keys") as url:
        conn = await connect(url)
        try:
            await conn.execute((FIXTURES / "schema_v4.sql").read_text())
            for earlier in migrate.MIGRATIONS:
                if earlier.version <= 6:
                    await migrate._apply(conn, earlier)
        finally:
            await conn.close()
        before = await catalog(url)
        conn = await connect(url)
        try:
            for step in migration.steps:
                async with conn.transaction():
                    await conn.execute(step.sql)
        finally:
            await conn.close()
        assert await catalog(url) == before


async def test_a_column_a_later_release_adds_to_jobs_changes_none_of_this_ones_statements(
    postgres_server_url: str,
) -> None:
    """This release names the columns of jobs its statements return, and reads the rest
    through jobs_api, whose columns are fixed: the next release may add columns to jobs
    while this one runs, as 0006 does not to the previous one."""
    async with scratch_database(postgres_server_url, "scheduler_keys") as url:
        await migrate_url(url)
        pool = await db.create_pool(url, max_size=1)  # one connection: its statement cache
        rules = jobs.Rules()
        spec = jobs.spec_from_create(JobCreate(name="j", schedule="@daily", key="a"), rules)

        async def every_job_statement(round_: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                other = msgspec.structs.replace(spec, key=f"b{round_}", managed_by="apply")
                row = await store.job_insert(
                    conn, "t", other, status="paused", next_run_at=None, **audited(other, "paused")
                )
                assert row is not None and row.key == f"b{round_}"
                assert await store.job_lock(conn, "t", job_id) is not None
                locked = await store.job_lock_by_key(conn, "t", "a")
                assert locked is not None and locked.id == job_id
                await store.job_update(conn, "t", job_id, spec, status="paused", next_run_at=None)
                assert await store.job_get_by_key(conn, "t", "a") is not None
                assert await store.job_get(conn, "t", job_id) is not None
                for owner in (None, "apply"):
                    page = await store.jobs_list(
                        conn,
                        "t",
                        before_id=None,
                        status=None,
                        name=None,
                        limit=9,
                        managed_by=owner,
                    )
                    assert page

        try:
            created = await store.job_insert(
                pool, "t", spec, status="paused", next_run_at=None, **audited(spec, "paused")
            )
            assert created is not None
            job_id = created.id
            await every_job_statement(1)
            await pool.execute("ALTER TABLE jobs ADD COLUMN later_release text")
            await every_job_statement(2)
            actor = AuditContext("test", None)
            row = await writes.update(pool, "t", job_id, JobPatch(name="two"), rules, None, actor)
            assert (row.name, row.key, row.version) == ("two", "a", 4)
        finally:
            await pool.close()
