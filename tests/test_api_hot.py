"""GET /jobs/{id} answered by api/hot.py's hook: the handler's answer, byte for byte."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from scheduler_svc.api import hot
from tests.helpers import assert_problem, assert_unauthorized, create_job
from tests.principals import bearer, make_key

JOB = {
    "name": "nightly report",
    "attributes": {"customer": 42, "note": "ünïcode ✓", "nested": {"a": [1, 2.5, None]}},
    "schedule": "30 9 * * 1-5",
    "timezone": "America/New_York",
    "tags": ["billing", "eu"],
}
# Differ by request, or by the request's place in the rate limiter's window.
PER_REQUEST = {"x-request-id", "date", "ratelimit-remaining", "ratelimit-reset", "ratelimit"}


def comparable(response: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k not in PER_REQUEST}
    return response.status_code, response.content, headers


async def test_the_hook_answers_as_the_handler_would(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await create_job(client, **JOB)
    await client.post(f"/jobs/{job['id']}/pause")  # a version past 1: the ETag shows it
    encoded: list[Any] = []
    encode = hot._encode
    monkeypatch.setattr(hot, "_encode", lambda out: encoded.append(out) or encode(out))
    hooked = await client.get(f"/jobs/{job['id']}")
    assert len(encoded) == 1, "the hook did not answer"
    # With no id in its bounds, the hook leaves every request to the handler.
    monkeypatch.setattr(hot, "MAX_ID", 0)
    handled = await client.get(f"/jobs/{job['id']}")

    assert hooked.status_code == 200, hooked.text
    assert comparable(hooked) == comparable(handled)
    assert hooked.headers["etag"] == '"2"'
    assert hooked.headers["content-type"] == "application/json"
    assert hooked.json()["status"] == "paused"
    assert hooked.json()["attributes"] == JOB["attributes"]
    # What the middleware add is there on both.
    for response in (hooked, handled):
        assert len(response.headers["x-request-id"]) == 32
        assert "ratelimit-remaining" in response.headers


@pytest.mark.parametrize(
    ("job_id", "status"), [("0", 400), ("9223372036854775808", 400), ("987654321", 404)]
)
async def test_what_the_hook_leaves_is_the_handlers_to_refuse(
    client: httpx.AsyncClient, job_id: str, status: int
) -> None:
    problem = assert_problem(await client.get(f"/jobs/{job_id}"), status)
    if status == 404:
        assert problem["detail"] == f"job {job_id} does not exist"


async def test_the_middleware_still_guard_the_hooked_route(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    mine = bearer(await make_key(pool, "tenant-a", "jobs:read"))
    theirs = bearer(await make_key(pool, "tenant-b", "jobs:read"))
    writer = bearer(await make_key(pool, "tenant-a", "jobs:write"))
    created = await client.post("/jobs", json=JOB, headers=bearer(await make_key(pool, "tenant-a")))
    job = created.json()

    assert_unauthorized(await client.get(f"/jobs/{job['id']}"))
    assert_problem(await client.get(f"/jobs/{job['id']}", headers=writer), 403)
    assert_problem(await client.get(f"/jobs/{job['id']}", headers=theirs), 404)
    mine_view = await client.get(f"/jobs/{job['id']}", headers=mine)
    assert mine_view.status_code == 200 and mine_view.json()["id"] == job["id"]
