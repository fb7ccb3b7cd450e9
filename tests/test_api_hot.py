"""GET /jobs/{id} answered by api/hot.py's lane: the route's answer, byte for byte, for
every status, with the same budget, metrics and headers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from scheduler_svc import store
from scheduler_svc.api import hot
from scheduler_svc.config import RateLimit
from tests.helpers import assert_problem, assert_unauthorized, create_job, running_app
from tests.principals import bearer, make_key

JOB = {
    "name": "nightly report",
    "attributes": {"customer": 42, "note": "ünïcode ✓", "nested": {"a": [1, 2.5, None]}},
    "schedule": "30 9 * * 1-5",
    "timezone": "America/New_York",
    "tags": ["billing", "eu"],
}
# Differ by request, or by the request's place in the rate limiter's window.
PER_REQUEST = {"x-request-id", "date", "ratelimit-remaining", "ratelimit-reset", "retry-after"}


def comparable(response: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k not in PER_REQUEST}
    return response.status_code, response.content, headers


class Lane:
    """Counts the lane's answers; `off()` leaves every request to Litestar's route."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answered = 0
        self._monkeypatch = monkeypatch
        answer = hot.HotLane._answer

        async def counted(lane: hot.HotLane, *args: Any) -> int:
            self.answered += 1
            return await answer(lane, *args)

        monkeypatch.setattr(hot.HotLane, "_answer", counted)

    @contextmanager
    def off(self) -> Iterator[None]:
        with self._monkeypatch.context() as patch:
            patch.setattr(hot, "MAX_ID", 0)  # no id in its bounds: all go to the route
            yield

    async def both(self, http: httpx.AsyncClient, path: str, **options: Any) -> httpx.Response:
        """GET `path` through the lane, then through the route; the lane's answer, once
        checked to be the route's."""
        before = self.answered
        laned = await http.get(path, **options)
        assert self.answered == before + 1, "the lane did not answer"
        with self.off():
            routed = await http.get(path, **options)
        assert self.answered == before + 1, "the lane answered with the route's bounds"
        assert comparable(laned) == comparable(routed)
        for response in (laned, routed):  # what the outer layers add is there on both
            assert len(response.headers["x-request-id"]) == 32
        return laned


async def test_the_lane_answers_as_the_route_would(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await create_job(client, **JOB)
    await client.post(f"/jobs/{job['id']}/pause")  # a version past 1: the ETag shows it
    answer = await Lane(monkeypatch).both(client, f"/jobs/{job['id']}")
    assert answer.status_code == 200, answer.text
    assert answer.headers["etag"] == '"2"'
    assert answer.headers["content-type"] == "application/json"
    assert "ratelimit-remaining" in answer.headers
    assert answer.json()["status"] == "paused"
    assert answer.json()["attributes"] == JOB["attributes"]


async def test_each_refusal_is_the_routes(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    lane = Lane(monkeypatch)
    mine = bearer(await make_key(pool, "tenant-a", "jobs:read"))
    theirs = bearer(await make_key(pool, "tenant-b", "jobs:read"))
    writer = bearer(await make_key(pool, "tenant-a", "jobs:write"))
    created = await client.post("/jobs", json=JOB, headers=bearer(await make_key(pool, "tenant-a")))
    path = f"/jobs/{created.json()['id']}"

    assert_unauthorized(await lane.both(client, path))
    bad = bearer("sch_zzzzzzzz_" + "A" * 43)
    assert assert_unauthorized(await lane.both(client, path, headers=bad))["status"] == 401
    assert_problem(await lane.both(client, path, headers=writer), 403)
    assert_problem(await lane.both(client, path, headers=theirs), 404)
    missing = assert_problem(await lane.both(client, "/jobs/987654321", headers=mine), 404)
    assert missing["detail"] == "job 987654321 does not exist"
    assert (await lane.both(client, path, headers=mine)).json()["id"] == created.json()["id"]


@pytest.mark.parametrize("job_id", ["0", "9223372036854775808", "00000000000000000000", "+1"])
async def test_what_the_lane_leaves_is_the_routes_to_refuse(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, job_id: str
) -> None:
    lane = Lane(monkeypatch)
    response = await client.get(f"/jobs/{job_id}")
    assert lane.answered == 0
    assert response.status_code in (400, 404)


async def test_a_failure_is_answered_as_the_route_answers_it(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await create_job(client, **JOB)

    async def failing(*_: Any) -> None:
        raise RuntimeError("the read failed")

    monkeypatch.setattr(store, "job_get", failing)
    problem = assert_problem(await Lane(monkeypatch).both(client, f"/jobs/{job['id']}"), 500)
    assert "the read failed" not in str(problem)


async def test_a_foreign_host_is_refused_in_open_mode(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await create_job(client, **JOB)
    foreign = {"host": "attacker.example"}
    answer = await Lane(monkeypatch).both(client, f"/jobs/{job['id']}", headers=foreign)
    assert_problem(answer, 421)


async def test_the_lane_spends_the_routes_budget(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    lane = Lane(monkeypatch)
    settings = make_settings(rate_limit=RateLimit(3, "minute"))
    async with running_app(settings, pool) as url, httpx.AsyncClient(base_url=url) as http:
        path = f"/jobs/{(await create_job(http, **JOB))['id']}"  # spends one
        assert (await http.get(path)).headers["ratelimit-remaining"] == "1"
        with lane.off():
            assert (await http.get(path)).headers["ratelimit-remaining"] == "0"
        over = await lane.both(http, path)
        assert_problem(over, 429)
        assert over.headers["ratelimit-policy"] == "3; w=60"
        assert 1 <= int(over.headers["retry-after"]) <= 60
    assert lane.answered == 2


async def test_the_lane_counts_in_the_routes_series(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await create_job(client, **JOB)
    series = {"method": "GET", "path": "/jobs/{job_id}", "app_name": "scheduler-svc"}

    def counted(status: str) -> float:
        labels = {**series, "status_code": status}
        return REGISTRY.get_sample_value("scheduler_http_requests_total", labels) or 0.0

    before = counted("200"), counted("404")
    lane = Lane(monkeypatch)
    await lane.both(client, f"/jobs/{job['id']}")
    await lane.both(client, "/jobs/987654321")
    assert (counted("200"), counted("404")) == (before[0] + 2, before[1] + 2)
    in_progress = {**series, "status_code": "200"}
    assert REGISTRY.get_sample_value("scheduler_http_requests_in_progress", in_progress) == 0
