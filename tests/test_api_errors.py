"""Bad requests get a 4xx RFC 9457 problem document naming what is wrong; never a 500."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from scheduler_svc import store
from scheduler_svc.config import RateLimit
from scheduler_svc.errors import PROBLEM_TYPE_PREFIX, PROBLEM_TYPES, SchedulerError, problem_of
from scheduler_svc.security import principals
from scheduler_svc.store import db
from tests.helpers import running_app
from tests.principals import bearer, make_key

GOOD = {"name": "job", "schedule": "* * * * *"}


def body(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


# (id, method, path, json body or raw bytes, expected status, field the errors list must name)
BAD_REQUESTS: list[tuple[str, str, str, Any, int, str | None]] = [
    ("malformed json", "POST", "/jobs", b'{"name": "x", ', 400, None),
    ("json array body", "POST", "/jobs", [GOOD], 400, None),
    ("json string body", "POST", "/jobs", "hello", 400, None),
    ("empty body", "POST", "/jobs", b"", 400, None),
    ("missing name", "POST", "/jobs", without("name"), 400, "name"),
    ("missing schedule", "POST", "/jobs", without("schedule"), 400, "schedule"),
    ("empty name", "POST", "/jobs", body(name=""), 400, "name"),
    ("name too long", "POST", "/jobs", body(name="x" * 201), 400, "name"),
    ("name not a string", "POST", "/jobs", body(name=42), 400, "name"),
    ("attributes not an object", "POST", "/jobs", body(attributes=[1, 2]), 400, "attributes"),
    ("unknown field", "POST", "/jobs", body(colour="red"), 400, None),
    ("cron with 4 fields", "POST", "/jobs", body(schedule="* * * *"), 400, "schedule"),
    ("cron with 7 fields", "POST", "/jobs", body(schedule="* * * * * * *"), 400, "schedule"),
    ("cron minute 60", "POST", "/jobs", body(schedule="60 * * * *"), 400, "schedule"),
    ("cron garbage", "POST", "/jobs", body(schedule="every day at noon"), 400, "schedule"),
    ("cron never fires", "POST", "/jobs", body(schedule="0 0 30 2 *"), 400, "schedule"),
    ("unknown macro", "POST", "/jobs", body(schedule="@fortnightly"), 400, "schedule"),
    ("every zero", "POST", "/jobs", body(schedule="@every 0s"), 400, "schedule"),
    ("every below a second", "POST", "/jobs", body(schedule="@every 500ms"), 400, "schedule"),
    ("every garbage", "POST", "/jobs", body(schedule="@every soon"), 400, "schedule"),
    (
        "at without offset",
        "POST",
        "/jobs",
        body(schedule="@at 2030-01-01T00:00:00"),
        400,
        "schedule",
    ),
    ("at not a time", "POST", "/jobs", body(schedule="@at tomorrow"), 400, "schedule"),
    ("schedule and interval differ", "POST", "/jobs", body(interval="@hourly"), 400, "interval"),
    ("schedule not a string", "POST", "/jobs", body(schedule=5), 400, "schedule"),
    ("unknown time zone", "POST", "/jobs", body(timezone="Mars/Olympus_Mons"), 400, "timezone"),
    ("time zone path trick", "POST", "/jobs", body(timezone="../../etc/passwd"), 400, "timezone"),
    ("max_attempts zero", "POST", "/jobs", body(max_attempts=0), 400, "max_attempts"),
    ("max_attempts too big", "POST", "/jobs", body(max_attempts=101), 400, "max_attempts"),
    ("max_attempts huge", "POST", "/jobs", body(max_attempts=10**30), 400, "max_attempts"),
    ("timeout zero", "POST", "/jobs", body(timeout_s=0), 400, "timeout_s"),
    ("timeout over a day", "POST", "/jobs", body(timeout_s=86401), 400, "timeout_s"),
    ("negative backoff", "POST", "/jobs", body(backoff_s=-1), 400, "backoff_s"),
    ("backoff a string", "POST", "/jobs", body(backoff_s="10"), 400, "backoff_s"),
    ("negative grace", "POST", "/jobs", body(misfire_grace_s=-5), 400, "misfire_grace_s"),
    (
        "unknown misfire policy",
        "POST",
        "/jobs",
        body(misfire_policy="maybe"),
        400,
        "misfire_policy",
    ),
    ("unknown overlap", "POST", "/jobs", body(overlap="sometimes"), 400, "overlap"),
    ("paused not a bool", "POST", "/jobs", body(paused="yes"), 400, "paused"),
    ("unknown target type", "POST", "/jobs", body(target={"type": "email"}), 400, "target"),
    ("target without type", "POST", "/jobs", body(target={"url": "https://x.io"}), 400, "target"),
    ("http target without url", "POST", "/jobs", body(target={"type": "http"}), 400, "target"),
    (
        "webhook ftp url",
        "POST",
        "/jobs",
        body(target={"type": "http", "url": "ftp://example.com/x"}),
        400,
        "target.url",
    ),
    (
        "webhook no host",
        "POST",
        "/jobs",
        body(target={"type": "http", "url": "https://"}),
        400,
        "target.url",
    ),
    (
        "webhook bad port",
        "POST",
        "/jobs",
        body(target={"type": "http", "url": "https://example.com:99999/"}),
        400,
        "target.url",
    ),
    (
        "webhook loopback",
        "POST",
        "/jobs",
        body(target={"type": "http", "url": "http://127.0.0.1:8080/"}),
        400,
        "target.url",
    ),
    (
        "webhook metadata address",
        "POST",
        "/jobs",
        body(target={"type": "http", "url": "http://169.254.169.254/latest"}),
        400,
        "target.url",
    ),
    (
        "webhook credentials in url",
        "POST",
        "/jobs",
        body(target={"type": "http", "url": "https://u:p@example.com/"}),
        400,
        "target.url",
    ),
    (
        "webhook bad method",
        "POST",
        "/jobs",
        body(target={"type": "http", "url": "https://example.com/", "method": "TRACE"}),
        400,
        "target",
    ),
    (
        "webhook header with newline",
        "POST",
        "/jobs",
        body(target={"type": "http", "url": "https://example.com/", "headers": {"X-A": "a\r\nb"}}),
        400,
        "target",
    ),
    (
        "handler with a path",
        "POST",
        "/jobs",
        body(target={"type": "handler", "name": "os.system; rm"}),
        400,
        "target",
    ),
    (
        "handler not registered",
        "POST",
        "/jobs",
        body(target={"type": "handler", "name": "os.system"}),
        400,
        "target.name",
    ),
    (
        "webhook loopback as a decimal number",
        "POST",
        "/jobs",
        body(target={"type": "http", "url": "http://2130706433:9/hook"}),
        400,
        "target.url",
    ),
    (
        "patch webhook loopback in hex",
        "PATCH",
        "/jobs/1",
        {"target": {"type": "http", "url": "http://0x7f.0.0.1/"}},
        400,
        "target.url",
    ),
    ("non-numeric id", "GET", "/jobs/abc", None, 404, None),
    ("id out of range", "GET", "/jobs/99999999999999999999", None, 400, None),
    ("id zero", "GET", "/jobs/0", None, 400, None),
    ("negative id", "GET", "/jobs/-1", None, 400, "job_id"),
    ("limit zero", "GET", "/jobs?limit=0", None, 400, "limit"),
    ("limit too big", "GET", "/jobs?limit=501", None, 400, "limit"),
    ("limit not a number", "GET", "/jobs?limit=ten", None, 400, "limit"),
    ("garbage cursor", "GET", "/jobs?cursor=%%%", None, 400, "cursor"),
    ("forged cursor", "GET", "/jobs?cursor=eDE", None, 400, "cursor"),
    ("unknown status filter", "GET", "/jobs?status=sleeping", None, 400, "status"),
    ("patch unknown field", "PATCH", "/jobs/1", {"colour": "red"}, 400, None),
    ("patch bad schedule", "PATCH", "/jobs/1", {"schedule": "nope"}, 400, "schedule"),
    ("patch malformed json", "PATCH", "/jobs/1", b"{", 400, None),
    ("preview without schedule", "GET", "/schedules/preview", None, 400, "schedule"),
    ("preview bad cron", "GET", "/schedules/preview?schedule=x", None, 400, "schedule"),
    (
        "preview bad zone",
        "GET",
        "/schedules/preview?schedule=@daily&timezone=Nowhere",
        None,
        400,
        "timezone",
    ),
    ("preview count zero", "GET", "/schedules/preview?schedule=@daily&count=0", None, 400, "count"),
    (
        "preview count 101",
        "GET",
        "/schedules/preview?schedule=@daily&count=101",
        None,
        400,
        "count",
    ),
    (
        "preview bad after",
        "GET",
        "/schedules/preview?schedule=@daily&after=yesterday",
        None,
        400,
        "after",
    ),
    (
        "preview naive after",
        "GET",
        "/schedules/preview?schedule=@daily&after=2030-01-01T00:00:00",
        None,
        400,
        "after",
    ),
    ("unknown route", "GET", "/nope", None, 404, None),
    ("method not allowed", "PUT", "/jobs", GOOD, 405, None),
]


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
async def test_bad_request_gets_a_problem_document(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    payload: Any,
    status: int,
    field: str | None,
) -> None:
    if method == "PATCH":  # the job must exist for the body to be what is wrong
        created = await client.post("/jobs", json=GOOD)
        path = path.replace("/1", f"/{created.json()['id']}")
    kwargs: dict[str, Any] = {}
    if isinstance(payload, bytes):
        kwargs = {"content": payload, "headers": {"content-type": "application/json"}}
    elif payload is not None:
        kwargs = {"json": payload}
    response = await client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    assert problem["title"] and problem["type"] and problem["detail"]
    if field is not None:
        named = [e["field"] for e in problem["errors"]]
        assert any(f == field or f.startswith(field) for f in named), named


async def test_there_are_at_least_thirty_distinct_bad_requests() -> None:
    assert len({case[0] for case in BAD_REQUESTS}) >= 30


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    huge = {**GOOD, "attributes": {"blob": "x" * 70_000}}
    response = await client.post("/jobs", json=huge)
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")
    assert (await client.get("/jobs")).json() == []


async def test_sub_minimum_interval_is_refused_per_setting(make_settings: Any, pool: Any) -> None:
    async with (
        running_app(make_settings(min_interval_s=60), pool) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        response = await http.post("/jobs", json=body(schedule="@every 30s"))
        assert response.status_code == 400
        assert response.json()["errors"][0]["field"] == "schedule"
        response = await http.post("/jobs", json=body(schedule="*/10 * * * * *"))
        assert response.status_code == 400
        assert (await http.post("/jobs", json=body(schedule="@every 1m"))).status_code == 201


async def test_private_webhooks_are_allowed_when_configured(make_settings: Any, pool: Any) -> None:
    target = {"type": "http", "url": "http://127.0.0.1:9/hook"}
    async with (
        running_app(make_settings(webhook_allow_private=True), pool) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        assert (await http.post("/jobs", json=body(target=target))).status_code == 201


async def test_every_problem_type_keeps_one_title(
    client: httpx.AsyncClient,
    pool: Any,
    make_settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
) -> None:
    # RFC 9457: a problem type keeps its title. Drive every type the API answers with,
    # each by every path that builds one (domain errors, Litestar's own exceptions, the
    # middleware's answers), and compare with the one table, errors.PROBLEM_TYPES.
    json_type = {"content-type": "application/json"}
    job = (await client.post("/jobs", json=GOOD)).json()
    assert (await client.post("/jobs", json=GOOD, headers={"Idempotency-Key": "k"})).is_success
    assert (await client.post("/jobs", json=body(key="taken"))).is_success
    run = (await client.post(f"/jobs/{job['id']}/trigger")).json()
    assert (await client.post(f"/runs/{run['id']}/cancel")).is_success
    answers: list[tuple[int, httpx.Response]] = [
        (400, await client.post("/jobs", content=b"{", headers=json_type)),
        (400, await client.post("/jobs", json=body(schedule="nope"))),
        (400, await client.get("/jobs?limit=0")),
        (400, await client.post("/jobs", content=b'{"attributes":' + b"[" * 40, headers=json_type)),
        (404, await client.get("/nope")),
        (404, await client.get("/jobs/999999")),
        (405, await client.put("/jobs", json=GOOD)),
        (409, await client.post("/jobs", json=body(name="x"), headers={"Idempotency-Key": "k"})),
        (409, await client.post("/jobs", json=body(key="taken"))),
        (409, await client.post(f"/runs/{run['id']}/cancel")),
        (412, await client.patch(f"/jobs/{job['id']}", json={}, headers={"If-Match": '"99"'})),
        (413, await client.post("/jobs", json=body(attributes={"blob": "x" * 70_000}))),
        (415, await client.post("/jobs", content=b"{}", headers={"content-type": "text/plain"})),
        (421, await client.get("/jobs", headers={"Host": "evil.example"})),
        (403, await client.post("/jobs", json=GOOD, headers={"Origin": "http://evil.example"})),
    ]
    # A replica of a release before run cancel, by the name its sessions have.
    other = (await client.post(f"/jobs/{job['id']}/trigger")).json()
    older = await asyncpg.connect(
        db.connect_options(database_url)[0],
        server_settings={"application_name": "scheduler-svc:old-release"},
    )
    try:
        answers.append((409, await client.post(f"/runs/{other['id']}/cancel")))
    finally:
        await older.close()

    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    with monkeypatch.context() as patched:
        patched.setattr(store, "job_get", fail)
        answers.append((500, await client.get(f"/jobs/{job['id']}")))
    async with (
        running_app(make_settings(rate_limit=RateLimit(1, "minute")), pool) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        answers += [(200, await http.get("/jobs")), (429, await http.get("/jobs"))]
    reader = await make_key(pool, "acme", principals.READ)
    answers.append((401, await client.get("/jobs")))
    answers.append((403, await client.post("/jobs", json=GOOD, headers=bearer(reader))))

    titles: dict[str, set[str]] = {}
    for status, response in answers:
        assert response.status_code == status, response.text
        if status < 400:
            continue
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["status"] == status
        assert problem["type"].startswith(PROBLEM_TYPE_PREFIX), problem
        slug = problem["type"].removeprefix(PROBLEM_TYPE_PREFIX)
        assert PROBLEM_TYPES[slug].status == status, problem
        titles.setdefault(slug, set()).add(problem["title"])
    assert titles == {slug: {problem.title} for slug, problem in PROBLEM_TYPES.items()}


def test_every_domain_error_has_a_problem_type_of_its_status() -> None:
    classes, found = [SchedulerError], []
    while classes:
        cls = classes.pop()
        found.append(cls)
        classes += cls.__subclasses__()
    for cls in found:
        type_, title = problem_of(cls.status_code, cls.problem_type)
        assert type_.startswith(PROBLEM_TYPE_PREFIX), cls
        problem = PROBLEM_TYPES[type_.removeprefix(PROBLEM_TYPE_PREFIX)]
        assert (problem.status, problem.title) == (cls.status_code, title), cls
