"""scheduler_svc.client against the real API over HTTP: pages, problems, retries, keys.

The app is served in this event loop, so the blocking Client runs in a thread."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from scheduler_svc.client import (
    AsyncClient,
    Client,
    ClientError,
    ProblemError,
    PutPlan,
    RetryPolicy,
    Unreachable,
)
from scheduler_svc.config import RateLimit
from scheduler_svc.models import HttpTarget, JobCreate, JobPatch
from tests.factories import make_job
from tests.flaky_proxy import flaky_proxy
from tests.helpers import free_port, running_app
from tests.principals import make_key

pytestmark = pytest.mark.timeout(60)

# Retries as the default policy makes them, but milliseconds apart.
FAST = RetryPolicy(attempts=4, backoff_s=0.005, backoff_max_s=0.02)


async def make_jobs(pool: asyncpg.Pool[Any], count: int, **fields: Any) -> list[int]:
    """Insert `count` jobs; their ids, oldest first."""
    return [
        (await make_job(pool, next_run_at=None, paused=True, name=f"job-{i}", **fields)).id
        for i in range(count)
    ]


class Counting(httpx.AsyncBaseTransport):
    """httpx's own transport, counting the requests sent through it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class RefusedFirst(httpx.BaseTransport):
    """httpx's own transport, but the first request goes to a port nothing listens on:
    a real refused connection, then the real service."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.refused_port = free_port()
        self.attempts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.attempts == 1:
            request.url = request.url.copy_with(port=self.refused_port)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


# --- pages ---------------------------------------------------------------------------------


async def test_list_jobs_yields_every_job_once_across_pages(
    api_url: str, clean: None, pool: asyncpg.Pool[Any]
) -> None:
    ids = await make_jobs(pool, 120)
    transport = Counting()
    async with AsyncClient(api_url, transport=transport) as api:
        listed = [job.id async for job in api.list_jobs(page_size=7)]
    assert listed == sorted(ids, reverse=True)  # each once, newest first
    assert len(transport.requests) == 18  # 17 full pages of 7 and one of 1
    assert all(r.url.params["limit"] == "7" for r in transport.requests)


async def test_list_jobs_keeps_filters_across_pages_and_stops_at_limit(
    api_url: str, clean: None, pool: asyncpg.Pool[Any]
) -> None:
    wanted = await make_jobs(pool, 12)
    others = await make_jobs(pool, 5)
    for job_id in wanted:
        await pool.execute("UPDATE jobs SET name = 'wanted' WHERE id = $1", job_id)
    async with AsyncClient(api_url) as api:
        named = [job.id async for job in api.list_jobs(name="wanted", page_size=5)]
        first = [job.id async for job in api.list_jobs(limit=10, page_size=4)]
    assert named == sorted(wanted, reverse=True)
    assert first == sorted(wanted + others, reverse=True)[:10]


async def test_blocking_client_pages_too(
    api_url: str, clean: None, pool: asyncpg.Pool[Any]
) -> None:
    ids = await make_jobs(pool, 120)

    def listing() -> tuple[list[int], list[int]]:
        with Client(api_url) as api:
            every = [job.id for job in api.list_jobs(page_size=50)]
            some = [job.id for job in api.list_jobs(limit=3)]
        return every, some

    every, some = await asyncio.to_thread(listing)
    assert every == sorted(ids, reverse=True)
    assert some == every[:3]


async def test_list_runs_pages_a_jobs_runs(api_url: str, clean: None) -> None:
    async with AsyncClient(api_url) as api:
        job = await api.create_job(JobCreate(name="manual", schedule="@every 1h", paused=True))
        triggered = [(await api.trigger_job(job.id)).id for _ in range(5)]
        runs = [run async for run in api.list_runs(job.id, page_size=2)]
        assert [run.id for run in runs] == sorted(triggered, reverse=True)
        assert {(run.job_id, run.trigger) for run in runs} == {(job.id, "manual")}
        assert await api.get_run(triggered[0]) == runs[-1]


async def test_pages_are_fetched_through_the_url_given_behind_a_proxy(
    api_url: str, clean: None, pool: asyncpg.Pool[Any]
) -> None:
    # The service's Link names itself; the client keeps to the proxy it was given.
    ids = await make_jobs(pool, 10)
    async with flaky_proxy(api_url, failures=0) as (url, proxy), AsyncClient(url) as api:
        listed = [job.id async for job in api.list_jobs(page_size=4)]
    assert listed == sorted(ids, reverse=True)
    assert len(proxy.requests_to("GET", "/jobs")) == 3


# --- the API's calls -----------------------------------------------------------------------


async def test_job_round_trip_with_the_services_models(api_url: str, clean: None) -> None:
    async with AsyncClient(api_url) as api:
        created = await api.create_job(
            JobCreate(
                name="report",
                schedule="30 9 * * MON-FRI",
                timezone="America/New_York",
                target=HttpTarget(
                    url="https://hooks.example.com/x", headers={"Authorization": "s"}
                ),
            )
        )
        assert created.status == "active" and created.timezone == "America/New_York"
        assert isinstance(created.target, HttpTarget)
        assert created.target.headers == {"Authorization": "***"}  # secrets stay masked
        assert isinstance(created.next_run_at, datetime)
        assert created.next_run_at.tzinfo is not None
        assert await api.get_job(created.id) == created

        renamed = await api.update_job(created.id, JobPatch(name="renamed"), if_match=1)
        assert (renamed.name, renamed.version) == ("renamed", 2)
        with pytest.raises(ProblemError) as stale:
            await api.update_job(created.id, {"name": "again"}, if_match=1)
        assert stale.value.status == 412

        paused = await api.pause_job(created.id)
        assert (paused.status, paused.next_run_at) == ("paused", None)
        resumed = await api.resume_job(created.id)
        assert resumed.status == "active" and resumed.next_run_at is not None
        run = await api.trigger_job(created.id)
        assert (run.job_id, run.trigger, run.status) == (created.id, "manual", "pending")

        await api.delete_job(created.id)
        with pytest.raises(ProblemError) as gone:
            await api.get_job(created.id)
        assert gone.value.status == 404


async def test_jobs_by_key_round_trip(api_url: str, clean: None) -> None:
    key = "team-a/reports:weekly"  # a slash and a colon travel in the path as they are
    body = {"name": "weekly", "schedule": "@weekly", "managed_by": "apply"}
    async with AsyncClient(api_url) as api:
        plan = await api.put_job_by_key(key, body, dry_run=True)
        assert isinstance(plan, PutPlan)
        assert plan.action == "create"
        created = await api.put_job_by_key(key, body)
        assert (created.key, created.managed_by, created.version) == (key, "apply", 1)
        assert await api.put_job_by_key(key, body, dry_run=True) == PutPlan("none", [])
        assert (await api.put_job_by_key(key, body)).version == 1  # unchanged: no new version
        changed = {**body, "schedule": "@daily"}
        assert await api.put_job_by_key(key, changed, dry_run=True) == PutPlan(
            "update", ["schedule"]
        )
        assert (await api.put_job_by_key(key, changed, if_match=1)).version == 2
        with pytest.raises(ProblemError) as stale:
            await api.put_job_by_key(key, body, if_match=1)
        assert stale.value.status == 412
        patched = await api.update_job_by_key(key, {"attributes": {"to": "ops"}}, if_match=2)
        assert (patched.attributes, patched.version) == ({"to": "ops"}, 3)
        assert await api.get_job_by_key(key) == patched
        await api.create_job({"name": "unkeyed", "schedule": "@daily"})
        assert [job.key async for job in api.list_jobs(key=key)] == [key]
        assert [job.id async for job in api.list_jobs(managed_by="apply")] == [created.id]
        assert [job.id async for job in api.list_jobs(managed_by="nobody")] == []
        await api.delete_job_by_key(key)
        with pytest.raises(ProblemError) as gone:
            await api.get_job_by_key(key)
        assert gone.value.status == 404
        for unaddressable in ("a/../b", "a//b", "a/", "./a", ""):
            with pytest.raises(ValueError, match="key"):
                await api.get_job_by_key(unaddressable)

    def blocking() -> None:
        with Client(api_url) as api:
            assert api.put_job_by_key("k", body, dry_run=True).action == "create"
            assert api.put_job_by_key("k", body).key == "k"
            assert api.update_job_by_key("k", {"name": "renamed"}).name == "renamed"
            assert api.get_job_by_key("k").name == "renamed"
            assert [job.key for job in api.list_jobs(key="k", managed_by="apply")] == ["k"]
            api.delete_job_by_key("k")

    await asyncio.to_thread(blocking)


async def test_create_takes_a_plain_dict_and_repeats_safely_under_one_key(
    api_url: str, clean: None
) -> None:
    async with AsyncClient(api_url) as api:
        body = {"name": "seed", "attributes": {"k": "v"}, "interval": "* * * * *"}
        first = await api.create_job(body, idempotency_key="seed-1")
        again = await api.create_job(body, idempotency_key="seed-1")
        other = await api.create_job(body)  # a fresh key per call: a second job
        assert again == first and other.id != first.id
        with pytest.raises(ProblemError) as conflict:
            await api.create_job({**body, "name": "other"}, idempotency_key="seed-1")
        assert conflict.value.status == 409


async def test_preview_schedule(api_url: str, clean: None) -> None:
    async with AsyncClient(api_url) as api:
        times = await api.preview_schedule(
            "30 2 * * *",
            timezone="America/New_York",
            after=datetime(2025, 3, 8, tzinfo=UTC),
            count=3,
        )
    assert [t.isoformat() for t in times] == [
        "2025-03-08T07:30:00+00:00",
        "2025-03-09T07:00:00+00:00",  # 02:30 does not exist that day: the first instant after
        "2025-03-10T06:30:00+00:00",
    ]


# --- problems ------------------------------------------------------------------------------


async def test_problem_error_carries_the_404_document(api_url: str, clean: None) -> None:
    def blocking() -> ProblemError:
        with Client(api_url) as api, pytest.raises(ProblemError) as caught:
            api.get_job(987654)
        return caught.value

    error = await asyncio.to_thread(blocking)
    assert isinstance(error, ClientError)
    assert (error.status, error.title, error.detail, error.errors) == (
        404,
        "Not found",
        "job 987654 does not exist",
        [],
    )
    assert error.type == "urn:scheduler-svc:problem:not-found"
    assert str(error) == "404 Not found: job 987654 does not exist"
    assert error.response is not None and error.response.status_code == 404

    async with AsyncClient(api_url) as api:
        with pytest.raises(ProblemError) as runs:
            [run async for run in api.list_runs(987654)]
    assert (runs.value.status, runs.value.detail) == (404, "job 987654 does not exist")


async def test_problem_error_names_each_bad_field(api_url: str, clean: None) -> None:
    async with AsyncClient(api_url) as api:
        with pytest.raises(ProblemError) as caught:
            await api.create_job({"name": "x", "schedule": "every day", "timezone": "Mars/Base"})
    error = caught.value
    assert (error.status, error.type) == (400, "urn:scheduler-svc:problem:invalid-request")
    assert {e.field for e in error.errors} == {"schedule", "timezone"}
    assert all(e.message for e in error.errors)


# --- retries -------------------------------------------------------------------------------


async def test_a_get_is_retried_after_503(api_url: str, clean: None) -> None:
    async with AsyncClient(api_url) as api:
        job = await api.create_job({"name": "j", "schedule": "@every 1h"})
    path = f"/jobs/{job.id}"
    async with flaky_proxy(api_url, failures=2) as (url, proxy):
        async with AsyncClient(url, retry=FAST) as api:
            assert await api.get_job(job.id) == job
        assert len(proxy.requests_to("GET", path)) == 3

    async with flaky_proxy(api_url, failures=2) as (url, proxy):

        def blocking() -> None:
            with Client(url, retry=FAST) as api:
                assert api.get_job(job.id) == job

        await asyncio.to_thread(blocking)
        assert len(proxy.requests_to("GET", path)) == 3


class Recording(httpx.AsyncHTTPTransport):
    """A real HTTP transport that keeps the status of every answer."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.statuses.append(response.status_code)
        return response


async def test_any_call_is_sent_again_after_a_429_once_its_budget_is_back(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    patient = RetryPolicy(attempts=3, backoff_s=0.01, backoff_max_s=2.0)
    wire = Recording()
    settings = make_settings(rate_limit=RateLimit(1, "second"))
    async with running_app(settings, pool) as url:
        async with AsyncClient(url, retry=patient, transport=wire) as api:
            job = await make_job(pool, next_run_at=None)
            triggered = []
            # A GET spends the second's budget, so the trigger right after it meets a 429
            # (unless the second ends in between: then again, a few times at most).
            for _ in range(5):
                await api.get_job(job.id)
                before = len(wire.statuses)
                triggered.append((await api.trigger_job(job.id)).id)
                if wire.statuses[before:] == [429, 202]:
                    break
            else:
                pytest.fail(f"no trigger met a 429: {wire.statuses}")
        # A trigger is never repeated after a failure; after a 429 nothing was done.
        runs = await pool.fetch("SELECT id FROM job_runs WHERE job_id = $1 ORDER BY id", job.id)
        assert [r["id"] for r in runs] == triggered
    settings = make_settings(rate_limit=RateLimit(1, "minute"))
    async with running_app(settings, pool) as url, AsyncClient(url, retry=patient) as api:
        await api.get_job(job.id)
        with pytest.raises(ProblemError) as caught:  # a minute away: raised at once
            await api.get_job(job.id)
        assert caught.value.status == 429


async def test_503_on_every_attempt_is_a_problem_error(api_url: str, clean: None) -> None:
    async with (
        flaky_proxy(api_url, failures=100) as (url, proxy),
        AsyncClient(url, retry=FAST) as api,
    ):
        with pytest.raises(ProblemError) as caught:
            await api.get_job(1)
    assert caught.value.status == 503
    assert len(proxy.seen) == FAST.attempts


async def test_create_retried_after_a_lost_answer_makes_one_job(
    api_url: str, clean: None, pool: asyncpg.Pool[Any]
) -> None:
    # The first POST reaches the service, which creates the job; its answer becomes a 503.
    async with flaky_proxy(api_url, failures=1, forward_failures=True) as (url, proxy):
        async with AsyncClient(url, retry=FAST) as api:
            job = await api.create_job({"name": "once", "schedule": "@every 1h"})
        posts = proxy.requests_to("POST", "/jobs")
    assert len(posts) == 2
    assert posts[0].headers["idempotency-key"] == posts[1].headers["idempotency-key"]
    assert await pool.fetchval("SELECT array_agg(id) FROM jobs") == [job.id]


async def test_calls_without_a_key_are_not_retried(
    api_url: str, clean: None, pool: asyncpg.Pool[Any]
) -> None:
    async with AsyncClient(api_url) as api:
        job = await api.create_job({"name": "j", "schedule": "@every 1h"})
    flaky = flaky_proxy(api_url, failures=100, forward_failures=True)
    async with flaky as (url, proxy), AsyncClient(url, retry=FAST) as api:
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: api.trigger_job(job.id),
            lambda: api.pause_job(job.id),
            lambda: api.update_job(job.id, {"name": "x"}),
        ]
        for call in calls:
            with pytest.raises(ProblemError) as caught:
                await call()
            assert caught.value.status == 503
    assert [(s.method, s.path) for s in proxy.seen] == [
        ("POST", f"/jobs/{job.id}/trigger"),
        ("POST", f"/jobs/{job.id}/pause"),
        ("PATCH", f"/jobs/{job.id}"),
    ]
    assert await pool.fetchval("SELECT count(*) FROM job_runs") == 1  # one trigger, once


async def test_a_get_is_retried_after_connection_refused(api_url: str, clean: None) -> None:
    async with AsyncClient(api_url) as api:
        job = await api.create_job({"name": "j", "schedule": "@every 1h"})
    transport = RefusedFirst()

    def blocking() -> None:
        with Client(api_url, retry=FAST, transport=transport) as api:
            assert api.get_job(job.id) == job

    await asyncio.to_thread(blocking)
    assert transport.attempts == 2


async def test_connection_errors_are_retried_only_for_calls_safe_to_repeat() -> None:
    sent: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        # As httpx raises it: its own error, caused by the socket's.
        refused = ConnectionRefusedError(111, "Connection refused")
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request) from refused

    async with AsyncClient(
        "http://127.0.0.1:9", retry=FAST, transport=httpx.MockTransport(refuse)
    ) as api:
        calls: list[tuple[Callable[[], Awaitable[Any]], int]] = [
            (lambda: api.get_job(1), 4),
            (lambda: api.delete_job(1), 4),
            (lambda: api.create_job({"name": "j", "schedule": "@daily"}), 4),
            (lambda: api.trigger_job(1), 1),
            (lambda: api.resume_job(1), 1),
            (lambda: api.update_job(1, {"name": "x"}), 1),
        ]
        for call, attempts in calls:
            sent.clear()
            with pytest.raises(Unreachable) as caught:
                await call()
            assert len(sent) == caught.value.attempts == attempts
            assert "connection refused" in str(caught.value)
            if sent[0].method == "POST" and sent[0].url.path == "/jobs":
                assert len({r.headers["idempotency-key"] for r in sent}) == 1


async def test_nothing_listening_is_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncClient(url, retry=FAST) as api:
        with pytest.raises(Unreachable) as caught:
            await api.get_job(1)
    assert str(caught.value) == f"cannot reach {url}: connection refused (4 attempts)"


def test_a_url_that_is_not_http_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="http://host:port"):
        Client("localhost:3000")


# --- credentials and defaults ---------------------------------------------------------------


async def test_api_key_is_sent_as_a_bearer_token(
    api_url: str, clean: None, pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = await make_key(pool, "acme")
    async with AsyncClient(api_url, api_key=key) as api:
        job = await api.create_job({"name": "acme's", "schedule": "@daily"})
    async with AsyncClient(api_url, api_key="") as api:
        with pytest.raises(ProblemError) as caught:
            await api.get_job(job.id)
    assert (caught.value.status, caught.value.type) == (
        401,
        "urn:scheduler-svc:problem:unauthorized",
    )

    monkeypatch.setenv("SCHEDULER_URL", api_url)
    monkeypatch.setenv("SCHEDULER_API_KEY", key)
    async with AsyncClient() as api:
        assert api.base_url == api_url
        assert [j.id async for j in api.list_jobs()] == [job.id]
