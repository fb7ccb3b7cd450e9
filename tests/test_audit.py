"""The audit trail (SPEC §8): a row per change made through the API, in the change's
transaction, with who (key prefix, JWT subject, `open`), the request id and a field diff
with secrets as "***"; read newest first by job (a deleted one's too) and by tenant,
paged, never another tenant's."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import msgspec
import pytest

from scheduler_svc import audit, store
from scheduler_svc.models import JobRow
from tests.factories import make_job
from tests.helpers import assert_problem, running_app
from tests.principals import JWT_SECRET, bearer, make_jwt, make_key

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
ROW: dict[str, Any] = {
    "id": 7,
    "tenant": "t",
    "name": "report",
    "attributes": {"n": 1},
    "schedule": "@every 1h",
    "timezone": "UTC",
    "target": {
        "type": "http",
        "url": "https://user:pa55word@example.com/hook",
        "method": "POST",
        "headers": {"Authorization": "Bearer one", "X-Hook-Token": "t1", "X-Trace": "on"},
        "body": None,
    },
    "max_attempts": 3,
    "backoff_s": 10.0,
    "backoff_max_s": 3600.0,
    "timeout_s": 30,
    "misfire_policy": "run_once",
    "misfire_grace_s": 60,
    "overlap": "forbid",
    "status": "active",
    "next_run_at": NOW,
    "last_run_at": None,
    "last_run_status": None,
    "created_at": NOW,
    "updated_at": NOW,
    "version": 1,
}
SHOWN_TARGET = {
    "type": "http",
    "url": "https://user:***@example.com/hook",
    "method": "POST",
    "headers": {"Authorization": "***", "X-Hook-Token": "***", "X-Trace": "on"},
    "body": None,
}


def row(**changes: Any) -> JobRow:
    return msgspec.convert({**ROW, **changes}, JobRow)


# --- the diff ------------------------------------------------------------------------


def test_a_create_shows_each_field_set_and_a_delete_each_field_gone() -> None:
    created = audit.job_changes(None, row())
    assert created["name"] == [None, "report"]
    assert created["target"] == [None, SHOWN_TARGET]
    assert created["status"] == [None, "active"]
    assert created["tags"] == [None, []]
    # Bookkeeping and fields without a value are left out.
    assert not {"id", "version", "next_run_at", "updated_at", "interval", "key"} & set(created)
    deleted = audit.job_changes(row(), None)
    assert deleted == {field: [new, old] for field, (old, new) in created.items()}


def test_a_change_shows_only_what_a_client_sees_change() -> None:
    before = row()
    after = row(name="renamed", version=2, updated_at=datetime.now(UTC), next_run_at=None)
    assert audit.job_changes(before, after) == {"name": ["report", "renamed"]}
    assert audit.job_changes(before, row(version=5)) == {}


def test_a_secret_header_that_changed_shows_as_changed_and_masked() -> None:
    headers = {**ROW["target"]["headers"], "Authorization": "Bearer two"}
    changes = audit.job_changes(row(), row(target={**ROW["target"], "headers": headers}))
    assert changes == {"target": [SHOWN_TARGET, SHOWN_TARGET]}
    assert "Bearer" not in msgspec.json.encode(changes).decode()


def test_an_alert_url_password_is_masked() -> None:
    alerts = {"url": "https://u:hunter22@alerts.example.com/x"}
    changes = audit.job_changes(row(), row(alerts=alerts))
    assert list(changes) == ["alerts"]
    assert changes["alerts"][0] is None
    assert changes["alerts"][1]["url"] == "https://u:***@alerts.example.com/x"


# --- writing rows ---------------------------------------------------------------------


async def test_a_row_commits_with_the_change_and_rolls_back_with_it(
    pool: asyncpg.Pool[Any],
) -> None:
    tenant = f"audit-tx-{secrets.token_hex(4)}"
    ctx = audit.AuditContext("sch_testtest", "req-1")
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await audit.record(conn, tenant, ctx, "job.pause", job_id=1, changes={"a": [1, 2]})
        await transaction.rollback()
        async with conn.transaction():
            await audit.record(conn, tenant, ctx, "job.trigger", job_id=1, run_id=99)
    rows = await store.audit_list(pool, tenant, before_id=None, limit=10)
    assert [(r.action, r.actor, r.job_id, r.run_id, r.changes, r.request_id) for r in rows] == [
        ("job.trigger", "sch_testtest", 1, 99, {}, "req-1")
    ]
    assert abs(rows[0].at - datetime.now(UTC)).total_seconds() < 60
    # The id tells the day of `at`, as every history id does.
    assert datetime(2000, 1, 1, tzinfo=UTC).toordinal() + (rows[0].id >> 37) == (
        rows[0].at.astimezone(UTC).toordinal()
    )


CREATES: list[dict[str, Any]] = [
    {"name": "minimal", "schedule": "@every 1h"},
    {
        "name": "every field ✓",
        "attributes": {"ratio": 10.0, "tiny": 1e-7, "big": 1e300, "n": -0.0, "deep": [{"a": None}]},
        "schedule": "30 9 * * 1-5",
        "timezone": "Europe/Paris",
        "target": {
            "type": "http",
            "url": "https://example.com/hook?token=abc",
            "headers": {"Authorization": "Bearer one", "X-Trace": "on"},
            "body": {"amount": 2.50},
        },
        "max_attempts": 5,
        "backoff_s": 10,
        "backoff_max_s": 60.5,
        "timeout_s": 12,
        "misfire_policy": "skip",
        "misfire_grace_s": 0,
        "overlap": "allow",
        "tags": ["billing", "eu"],
        "jitter_s": 1.5,
        "alerts": {"url": "https://alerts.example.com/x", "on": ["failed"]},
    },
    {"name": "paused", "schedule": "@every 1m", "paused": True},
    {"name": "one-off", "schedule": "@at 2099-01-01T00:00:00+05:30"},
]


async def created_rows(pool: asyncpg.Pool[Any], job_id: int) -> list[Any]:
    return [
        r["changes"]
        for r in await pool.fetch(
            "SELECT changes FROM audit WHERE job_id = $1 AND action = 'job.create'", job_id
        )
    ]


@pytest.mark.parametrize("body", CREATES, ids=[b["name"] for b in CREATES])
async def test_a_create_writes_in_its_statement_the_diff_of_the_row_it_made(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], body: dict[str, Any]
) -> None:
    posted = await client.post("/jobs", json=body)
    put = await client.put(f"/jobs/by-key/{secrets.token_hex(4)}", json=body)
    for response in (posted, put):
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        row = await store.job_get(pool, "default", job_id)
        assert row is not None
        # As the trail's JSON holds it: the numbers of a JSON field are written alike.
        expected = await pool.fetchval("SELECT $1::jsonb", audit.job_changes(None, row))
        assert await created_rows(pool, job_id) == [expected]


async def test_a_created_window_end_is_audited_in_utc(pool: asyncpg.Pool[Any]) -> None:
    paris = datetime(2099, 1, 1, 9, 30, tzinfo=UTC).astimezone(ZoneInfo("Europe/Paris"))
    row = await make_job(pool, next_run_at=None, paused=True, paused_until=paris)
    assert row.paused_until == paris
    expected = await pool.fetchval("SELECT $1::jsonb", audit.job_changes(None, row))
    assert (await created_rows(pool, row.id)) == [expected]
    assert expected["paused_until"] == [None, "2099-01-01T09:30:00Z"]


async def test_record_many_writes_a_row_per_job_in_their_order(conn: Any) -> None:
    tenant = f"audit-bulk-{secrets.token_hex(4)}"
    changes = [{"status": ["active", "paused"]}, {}, {"status": ["paused", "active"]}]
    await audit.record_many(
        conn, tenant, audit.SYSTEM, "job.resume", job_ids=[5, 3, 9], changes=changes
    )
    rows = await store.audit_list(conn, tenant, before_id=None, limit=10)
    assert [(r.job_id, r.changes, r.actor, r.request_id) for r in reversed(rows)] == [
        (5, changes[0], "system", None),
        (3, {}, "system", None),
        (9, changes[2], "system", None),
    ]
    assert len({r.at for r in rows}) == 1
    with pytest.raises(ValueError, match="one changes mapping per job"):
        await audit.record_many(conn, tenant, audit.SYSTEM, "job.pause", job_ids=[1], changes=[])


# --- over the API ---------------------------------------------------------------------

TARGET = {
    "type": "http",
    "url": "https://example.com/hook",
    "headers": {"Authorization": "Bearer first-secret", "X-Hook-Token": "tok-1"},
}
TARGET_SECRETS = ("first-secret", "Bearer second", "tok-1")


async def trail(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], limit: int = 50
) -> list[dict[str, Any]]:
    """Every audit row at `url`, following the Link headers."""
    rows: list[dict[str, Any]] = []
    next_url: str | None = f"{url}?limit={limit}"
    while next_url:
        response = await http.get(next_url, headers=headers)
        assert response.status_code == 200, response.text
        assert len(response.json()) <= limit
        rows += response.json()
        link = response.headers.get("link")
        next_url = link.split(";")[0].strip("<>") if link else None
    return rows


async def test_every_change_through_the_api_is_audited_with_its_actor_and_diff(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    tenant = f"audit-{secrets.token_hex(4)}"
    key = await make_key(pool, tenant)
    auth = bearer(key)
    request_ids: list[str] = []

    async def call(method: str, url: str, body: Any = None, status: int = 200) -> Any:
        request_id = f"req-{len(request_ids)}-{secrets.token_hex(3)}"
        response = await client.request(
            method, url, json=body, headers={**auth, "X-Request-Id": request_id}
        )
        assert response.status_code == status, response.text
        request_ids.append(request_id)
        return response.json() if response.content else None

    job = await call(
        "POST",
        "/jobs",
        {"name": "report", "schedule": "@every 1h", "key": "audit/report", "target": TARGET},
        201,
    )
    job_id = job["id"]
    await call("PATCH", f"/jobs/{job_id}", {"name": "daily report"})
    new_secret = {**TARGET, "headers": {**TARGET["headers"], "Authorization": "Bearer second"}}
    await call("PATCH", f"/jobs/{job_id}", {"target": new_secret})
    await call(
        "PUT",
        "/jobs/by-key/audit/report",
        {"name": "daily report", "schedule": "@every 2h", "target": new_secret},
    )
    await call("POST", f"/jobs/{job_id}/pause")
    await call("POST", f"/jobs/{job_id}/resume")
    run = await call("POST", f"/jobs/{job_id}/trigger", status=202)
    await call("POST", f"/runs/{run['id']}/cancel")
    await call("DELETE", f"/jobs/{job_id}", status=204)

    rows = await trail(client, f"/jobs/{job_id}/audit", auth, limit=4)
    actions = [
        "job.create",
        "job.update",
        "job.update",
        "job.replace",
        "job.pause",
        "job.resume",
        "job.trigger",
        "run.cancel",
        "job.delete",
    ]
    assert [r["action"] for r in rows] == actions[::-1]
    assert [r["request_id"] for r in rows] == request_ids[::-1]
    assert {(r["actor"], r["job_id"]) for r in rows} == {(key[:12], job_id)}
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    by_action = {r["action"]: r for r in reversed(rows)}  # the first of each
    created = by_action["job.create"]["changes"]
    assert created["name"] == [None, "report"]
    assert created["target"][1]["headers"] == {"Authorization": "***", "X-Hook-Token": "***"}
    renamed, secret_change = [r["changes"] for r in reversed(rows) if r["action"] == "job.update"]
    assert renamed == {"name": ["report", "daily report"]}
    # A new secret is a change, shown masked on both sides.
    assert list(secret_change) == ["target"]
    assert secret_change["target"][0] == secret_change["target"][1]
    assert by_action["job.replace"]["changes"]["schedule"] == ["@every 1h", "@every 2h"]
    assert by_action["job.pause"]["changes"]["status"] == ["active", "paused"]
    assert by_action["job.resume"]["changes"]["status"] == ["paused", "active"]
    assert by_action["job.trigger"]["run_id"] == run["id"]
    assert by_action["run.cancel"]["run_id"] == run["id"]
    assert by_action["run.cancel"]["changes"]["status"][1] == "cancelled"
    assert by_action["job.delete"]["changes"]["name"] == ["daily report", None]
    text = msgspec.json.encode(rows).decode()
    assert [secret for secret in TARGET_SECRETS if secret in text] == []

    # The tenant's trail has the same rows; another tenant's has none of them.
    assert await trail(client, "/audit", auth, limit=3) == rows
    other = bearer(await make_key(pool, f"audit-other-{secrets.token_hex(4)}"))
    assert await trail(client, "/audit", other) == []
    missing = await client.get(f"/jobs/{job_id}/audit", headers=other)
    assert_problem(missing, 404)


async def test_a_bulk_pause_writes_a_row_per_job(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    auth = bearer(await make_key(pool, f"audit-bulk-{secrets.token_hex(4)}"))
    ids = []
    for name in ("a", "b", "c"):
        body = {"name": name, "schedule": "@every 1h", "tags": ["nightly"]}
        response = await client.post("/jobs", json=body, headers=auth)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    response = await client.post(
        "/jobs/bulk/pause", json={"filter": {"tag": "nightly"}}, headers=auth
    )
    assert response.status_code == 200, response.text
    rows = [r for r in await trail(client, "/audit", auth) if r["action"] == "job.pause"]
    assert sorted(r["job_id"] for r in rows) == sorted(ids)
    assert {r["request_id"] for r in rows} == {response.headers["x-request-id"]}
    assert all(r["changes"]["status"] == ["active", "paused"] for r in rows)


async def test_in_open_mode_the_actor_is_open(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"name": "open", "schedule": "@every 1h"})
    job_id = response.json()["id"]
    assert (await client.post(f"/jobs/{job_id}/pause")).status_code == 200
    rows = await trail(client, f"/jobs/{job_id}/audit", {})
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("job.pause", "open"),
        ("job.create", "open"),
    ]


async def test_with_a_jwt_the_actor_is_its_subject(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    tenant = f"audit-jwt-{secrets.token_hex(4)}"
    token = bearer(make_jwt(tenant=tenant, sub="alice@example.com"))
    async with (
        running_app(make_settings(jwt_secret=JWT_SECRET), pool) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        response = await http.post(
            "/jobs", json={"name": "j", "schedule": "@every 1h"}, headers=token
        )
        assert response.status_code == 201, response.text
        rows = await trail(http, f"/jobs/{response.json()['id']}/audit", token)
    assert [(r["action"], r["actor"]) for r in rows] == [("job.create", "alice@example.com")]


async def test_a_deleted_job_keeps_its_trail_and_an_unknown_id_is_404(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    response = await client.post("/jobs", json={"name": "gone", "schedule": "@every 1h"})
    job_id = response.json()["id"]
    assert (await client.delete(f"/jobs/{job_id}")).status_code == 204
    gone = await client.get(f"/jobs/{job_id}/audit")
    assert gone.status_code == 200
    assert [r["action"] for r in gone.json()] == ["job.delete", "job.create"]
    assert_problem(await client.get("/jobs/987654321/audit"), 404)
    # A job whose trail is empty (its rows pruned) still answers 200, with nothing in it.
    quiet = await make_job(pool, next_run_at=None)
    await pool.execute("DELETE FROM audit WHERE job_id = $1", quiet.id)
    assert (await client.get(f"/jobs/{quiet.id}/audit")).json() == []


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/audit?cursor=nope", "cursor"),
        ("/audit?limit=0", "limit"),
        ("/jobs/1/audit?limit=501", "limit"),
        ("/jobs/1/audit?cursor=%%%", "cursor"),
    ],
)
async def test_bad_paging_is_a_400_naming_the_parameter(
    client: httpx.AsyncClient, url: str, field: str
) -> None:
    problem = assert_problem(await client.get(url), 400)
    assert [e["field"] for e in problem["errors"]] == [field]
