"""The jobs API over real HTTP against a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from scheduler_svc.config import Settings
from scheduler_svc.targets import HandlerContext
from scheduler_svc.targets import handlers as target_handlers
from tests.helpers import create_job, running_app

SEED_JOB = {"name": "Example Job", "attributes": {"key": "value"}, "interval": "* * * * *"}


def ts(value: str) -> datetime:
    assert value.endswith("Z"), f"timestamps are UTC with a Z: {value}"
    return datetime.fromisoformat(value)


async def test_seed_request_creates_job_due_within_the_next_minute(
    client: httpx.AsyncClient,
) -> None:
    before = datetime.now(UTC)
    response = await client.post("/jobs", json=SEED_JOB)
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert isinstance(job["id"], int)
    assert job["name"] == "Example Job"
    assert job["attributes"] == {"key": "value"}
    assert job["schedule"] == job["interval"] == "* * * * *"
    assert job["status"] == "active"
    next_run = ts(job["next_run_at"])
    assert before - timedelta(seconds=1) < next_run <= before + timedelta(seconds=61)
    assert next_run.second == 0 and next_run.microsecond == 0
    assert job["nextRunTimestamp"] == job["next_run_at"]
    assert job["lastRunTimestamp"] is None and job["last_run_at"] is None
    assert job["target"] == {"type": "log"}
    assert (job["max_attempts"], job["timeout_s"], job["misfire_policy"], job["overlap"]) == (
        3,
        30,
        "run_once",
        "forbid",
    )


async def test_list_is_a_bare_array_newest_first(client: httpx.AsyncClient) -> None:
    first = await create_job(client, name="first")
    second = await create_job(client, name="second")
    response = await client.get("/jobs")
    assert response.status_code == 200
    assert [j["id"] for j in response.json()] == [second["id"], first["id"]]
    assert "link" not in response.headers


async def test_get_returns_the_job_with_its_etag(client: httpx.AsyncClient) -> None:
    job = await create_job(client)
    response = await client.get(f"/jobs/{job['id']}")
    assert response.status_code == 200
    assert response.json() == job
    assert response.headers["etag"] == '"1"'


async def test_missing_job_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/jobs/987654321")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 404
    assert {"type", "title", "detail"} <= problem.keys()
    assert "987654321" in problem["detail"]


async def test_pagination_walks_every_job_once_through_link_headers(
    client: httpx.AsyncClient,
) -> None:
    ids = [(await create_job(client, name=f"job-{i}"))["id"] for i in range(7)]
    seen: list[int] = []
    url: str | None = "/jobs?limit=3"
    pages = 0
    while url is not None:
        response = await client.get(url)
        assert response.status_code == 200
        seen += [j["id"] for j in response.json()]
        pages += 1
        link = response.headers.get("link")
        url = link.split(";")[0].strip("<>") if link else None
        if link:
            assert link.endswith('rel="next"')
    assert seen == sorted(ids, reverse=True)
    assert pages == 3


async def test_filters_by_status_and_name(client: httpx.AsyncClient) -> None:
    await create_job(client, name="alpha")
    paused = await create_job(client, name="beta", paused=True)
    response = await client.get("/jobs", params={"status": "paused"})
    assert [j["id"] for j in response.json()] == [paused["id"]]
    response = await client.get("/jobs", params={"name": "alpha"})
    assert [j["name"] for j in response.json()] == ["alpha"]
    response = await client.get("/jobs", params={"name": "alpha", "status": "paused"})
    assert response.json() == []


async def test_cursor_keeps_the_filters(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await create_job(client, name="same")
        await create_job(client, name=f"other-{i}")
    response = await client.get("/jobs", params={"name": "same", "limit": 2})
    link = response.headers["link"].split(";")[0].strip("<>")
    assert "name=same" in link
    rest = await client.get(link)
    assert [j["name"] for j in rest.json()] == ["same"]


async def test_create_with_every_field(client: httpx.AsyncClient) -> None:
    body = {
        "name": "nightly report",
        "schedule": "30 2 * * MON-FRI",
        "timezone": "Europe/London",
        "attributes": {"report": "sales", "n": [1, 2]},
        "target": {
            "type": "http",
            "url": "https://example.com/hook",
            "method": "PUT",
            "headers": {"X-Team": "data"},
            "body": {"hello": "world"},
        },
        "max_attempts": 5,
        "backoff_s": 2.5,
        "backoff_max_s": 60,
        "timeout_s": 120,
        "misfire_policy": "run_all",
        "misfire_grace_s": 300,
        "overlap": "allow",
    }
    response = await client.post("/jobs", json=body)
    assert response.status_code == 201, response.text
    job = response.json()
    for key, value in body.items():
        assert job[key] == value, key
    local = ts(job["next_run_at"]).astimezone(__import__("zoneinfo").ZoneInfo("Europe/London"))
    assert (local.hour, local.minute) == (2, 30) and local.weekday() < 5


async def test_credentials_in_target_headers_are_stored_but_never_echoed(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    target = {
        "type": "http",
        "url": "https://example.com/hook",
        "headers": {"Authorization": "Bearer s3cret", "X-Team": "data"},
    }
    job = await create_job(client, target=target)
    assert job["target"]["headers"] == {"Authorization": "***", "X-Team": "data"}
    fetched = (await client.get(f"/jobs/{job['id']}")).json()
    assert "s3cret" not in str(fetched)
    stored = await pool.fetchval("SELECT target FROM jobs WHERE id = $1", job["id"])
    assert stored["headers"]["Authorization"] == "Bearer s3cret"
    # Sending back what was shown keeps the secret; sending a new value replaces it.
    shown = fetched["target"]
    response = await client.patch(f"/jobs/{job['id']}", json={"target": shown})
    assert response.status_code == 200
    stored = await pool.fetchval("SELECT target FROM jobs WHERE id = $1", job["id"])
    assert stored["headers"]["Authorization"] == "Bearer s3cret"
    shown["headers"]["Authorization"] = "Bearer new"
    await client.patch(f"/jobs/{job['id']}", json={"target": shown})
    stored = await pool.fetchval("SELECT target FROM jobs WHERE id = $1", job["id"])
    assert stored["headers"]["Authorization"] == "Bearer new"


def problem_fields(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    errors: list[dict[str, str]] = response.json()["errors"]
    return errors


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433:9/hook",  # 127.0.0.1 as one decimal number
        "http://0x7f.1:9/hook",
        "http://[::ffff:7f00:1]:9/hook",
        "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:9/hook",  # full-width digits
        "http://2852039166/latest/meta-data",  # 169.254.169.254
    ],
)
async def test_a_webhook_host_spelling_a_private_address_is_a_400_naming_target_url(
    client: httpx.AsyncClient, url: str
) -> None:
    response = await client.post("/jobs", json={**SEED_JOB, "target": {"type": "http", "url": url}})

    [error] = problem_fields(response)
    assert error["field"] == "target.url"
    assert "private, loopback or link-local" in error["message"]
    job = await create_job(client)
    response = await client.patch(
        f"/jobs/{job['id']}", json={"target": {"type": "http", "url": url}}
    )
    assert [e["field"] for e in problem_fields(response)] == ["target.url"]


async def record(context: HandlerContext) -> None:
    """A handler for jobs to name; never called here."""


async def test_a_handler_target_must_name_a_registered_handler(
    settings: Settings, pool: asyncpg.Pool[Any], clean: None
) -> None:
    async with (
        running_app(settings, pool, handlers={"record": record, "audit": record}) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        unknown = {**SEED_JOB, "target": {"type": "handler", "name": "os.system"}}
        assert problem_fields(await http.post("/jobs", json=unknown)) == [
            {
                "field": "target.name",
                "message": "no handler is registered as 'os.system' (registered: audit, record)",
            }
        ]
        known = {**SEED_JOB, "target": {"type": "handler", "name": "record"}}
        created = await http.post("/jobs", json=known)
        assert created.status_code == 201, created.text
        job = created.json()
        typo = {"target": {"type": "handler", "name": "recrod"}}
        response = await http.patch(f"/jobs/{job['id']}", json=typo)
        assert [e["field"] for e in problem_fields(response)] == ["target.name"]
        assert "registered: audit, record" in response.json()["detail"]
        assert (await http.get(f"/jobs/{job['id']}")).json() == job
        response = await http.patch(
            f"/jobs/{job['id']}", json={"target": {"type": "handler", "name": "audit"}}
        )
        assert response.status_code == 200, response.text


async def test_with_no_handler_registered_the_400_says_so(client: httpx.AsyncClient) -> None:
    body = {**SEED_JOB, "target": {"type": "handler", "name": "record"}}

    [error] = problem_fields(await client.post("/jobs", json=body))

    assert error == {
        "field": "target.name",
        "message": "no handler is registered as 'record' (none is registered)",
    }


async def test_the_api_role_loads_the_handler_entry_points(
    settings: Settings, pool: asyncpg.Pool[Any], clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(target_handlers, "load_handlers", lambda: {"from_plugin": record})
    assert settings.role == "api"
    async with (
        running_app(settings, pool) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        body = {**SEED_JOB, "target": {"type": "handler", "name": "from_plugin"}}
        response = await http.post("/jobs", json=body)
        assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("target", "then"),
    [
        # Its handler was registered then, and is not on this replica.
        ({"type": "handler", "name": "record"}, {"handlers": {"record": record}}),
        # Private webhooks were allowed then (or the guard was looser).
        ({"type": "http", "url": "http://2130706433:9/hook"}, {"webhook_allow_private": True}),
    ],
    ids=["handler gone", "webhook no longer allowed"],
)
async def test_a_job_whose_stored_target_is_no_longer_accepted_can_still_be_changed(
    make_settings: Any,
    pool: asyncpg.Pool[Any],
    client: httpx.AsyncClient,
    target: dict[str, Any],
    then: dict[str, Any],
) -> None:
    options = dict(then)
    handlers = options.pop("handlers", None)
    async with (
        running_app(make_settings(**options), pool, handlers=handlers) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        created = await http.post("/jobs", json={**SEED_JOB, "target": target})
        assert created.status_code == 201, created.text
        job = created.json()

    # The shared app would refuse that target; one a PATCH leaves alone is not judged again.
    response = await client.post(f"/jobs/{job['id']}/pause")
    assert response.status_code == 200, response.text
    response = await client.patch(f"/jobs/{job['id']}", json={"name": "renamed"})
    assert response.status_code == 200, response.text
    response = await client.patch(f"/jobs/{job['id']}", json={"target": target})
    assert response.status_code == 400, response.text


async def test_patch_changes_fields_bumps_version_and_replans(
    client: httpx.AsyncClient,
) -> None:
    job = await create_job(client, schedule="0 0 1 1 *")
    response = await client.patch(
        f"/jobs/{job['id']}", json={"name": "renamed", "schedule": "@every 10s"}
    )
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["name"] == "renamed"
    assert patched["version"] == 2
    assert response.headers["etag"] == '"2"'
    assert ts(patched["next_run_at"]) < ts(job["next_run_at"])
    assert ts(patched["next_run_at"]) - datetime.now(UTC) < timedelta(seconds=11)
    assert patched["attributes"] == job["attributes"]


async def test_patch_without_schedule_change_keeps_next_run_at(
    client: httpx.AsyncClient,
) -> None:
    job = await create_job(client, schedule="0 0 1 1 *")
    patched = (await client.patch(f"/jobs/{job['id']}", json={"name": "x"})).json()
    assert patched["next_run_at"] == job["next_run_at"]


async def test_patch_accepts_the_interval_alias(client: httpx.AsyncClient) -> None:
    job = await create_job(client)
    patched = (await client.patch(f"/jobs/{job['id']}", json={"interval": "*/5 * * * *"})).json()
    assert patched["schedule"] == "*/5 * * * *"


async def test_patch_with_stale_if_match_is_412_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    job = await create_job(client)
    await client.patch(f"/jobs/{job['id']}", json={"name": "v2"})
    response = await client.patch(
        f"/jobs/{job['id']}", json={"name": "v3"}, headers={"If-Match": '"1"'}
    )
    assert response.status_code == 412
    assert response.headers["content-type"].startswith("application/problem+json")
    assert (await client.get(f"/jobs/{job['id']}")).json()["name"] == "v2"
    response = await client.patch(
        f"/jobs/{job['id']}", json={"name": "v3"}, headers={"If-Match": '"2"'}
    )
    assert response.status_code == 200
    assert response.json()["name"] == "v3"


async def test_patch_missing_job_is_404(client: httpx.AsyncClient) -> None:
    response = await client.patch("/jobs/424242", json={"name": "x"})
    assert response.status_code == 404


async def test_delete_removes_the_job(client: httpx.AsyncClient) -> None:
    job = await create_job(client)
    response = await client.delete(f"/jobs/{job['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(f"/jobs/{job['id']}")).status_code == 404
    assert (await client.delete(f"/jobs/{job['id']}")).status_code == 404


async def test_pause_and_resume_from_now(client: httpx.AsyncClient) -> None:
    job = await create_job(client, schedule="@every 1h")
    paused = (await client.post(f"/jobs/{job['id']}/pause")).json()
    assert paused["status"] == "paused"
    assert paused["next_run_at"] is None
    resumed_response = await client.post(f"/jobs/{job['id']}/resume")
    assert resumed_response.status_code == 200
    resumed = resumed_response.json()
    assert resumed["status"] == "active"
    assert ts(resumed["next_run_at"]) >= ts(job["next_run_at"])


async def test_create_paused_has_no_next_run(client: httpx.AsyncClient) -> None:
    job = await create_job(client, paused=True)
    assert job["status"] == "paused"
    assert job["next_run_at"] is None


async def test_idempotency_key_replays_the_first_job(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "create-report-1"}
    first = await client.post("/jobs", json=SEED_JOB, headers=headers)
    again = await client.post("/jobs", json=dict(reversed(SEED_JOB.items())), headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert len((await client.get("/jobs")).json()) == 1


async def test_idempotency_key_with_another_body_is_409(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "k-409"}
    assert (await client.post("/jobs", json=SEED_JOB, headers=headers)).status_code == 201
    response = await client.post("/jobs", json={**SEED_JOB, "name": "other"}, headers=headers)
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_at_schedule_is_due_at_its_time(client: httpx.AsyncClient) -> None:
    job = await create_job(client, schedule="@at 2031-05-04T10:00:00+02:00")
    assert job["next_run_at"] == "2031-05-04T08:00:00Z"


async def test_six_field_cron_runs_at_second_resolution(client: httpx.AsyncClient) -> None:
    job = await create_job(client, schedule="*/5 * * * * *")
    next_run = ts(job["next_run_at"])
    assert next_run.second % 5 == 0
    assert next_run - datetime.now(UTC) <= timedelta(seconds=5)


async def test_preview_lists_fire_times_in_the_zone(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/schedules/preview",
        params={
            "schedule": "0 9 * * *",
            "timezone": "America/New_York",
            "after": "2025-03-08T00:00:00Z",
            "count": 3,
        },
    )
    assert response.status_code == 200, response.text
    # 9:00 EST, then 9:00 EDT after the spring-forward night.
    assert response.json() == {
        "times": ["2025-03-08T14:00:00Z", "2025-03-09T13:00:00Z", "2025-03-10T13:00:00Z"]
    }


async def test_preview_defaults_to_five_times_after_now(client: httpx.AsyncClient) -> None:
    response = await client.get("/schedules/preview", params={"schedule": "@hourly"})
    times = [ts(t) for t in response.json()["times"]]
    assert len(times) == 5
    assert times == sorted(times) and times[0] > datetime.now(UTC) - timedelta(seconds=1)


@pytest.mark.parametrize("path", ["/", "/healthz", "/readyz"])
async def test_health_routes_answer_json(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json(), dict)


async def test_readyz_reports_the_schema_version(client: httpx.AsyncClient) -> None:
    from scheduler_svc.store.migrate import SCHEMA_VERSION

    assert (await client.get("/readyz")).json() == {
        "status": "ready",
        "schema_version": SCHEMA_VERSION,
    }


async def test_every_response_carries_a_request_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    response = await client.get("/healthz")
    assert len(response.headers["x-request-id"]) == 32
