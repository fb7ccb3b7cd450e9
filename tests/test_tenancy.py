"""Tenants never see, change or learn of each other's jobs and runs: 404 everywhere.

The matrix is read from the OpenAPI document, so routes that land later (trigger, runs)
are tried the day they appear.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import httpx

from tests.principals import bearer, make_key

JOB = {
    "name": "tenant A's job",
    "schedule": "@every 1h",
    "target": {
        "type": "http",
        "url": "https://example.com/hook",
        "headers": {"Authorization": "Bearer a-secret"},
    },
}
# A body for routes that take one: valid for PATCH /jobs/{job_id}; others get an empty object.
BODIES = {
    ("PATCH", "/jobs/{job_id}"): {"name": "hijacked", "paused": True},
    ("PATCH", "/jobs/by-key/{key}"): {"name": "hijacked", "paused": True},
}
# Routes that create what they name: B's PUT of A's key makes B's own job, as keys are per
# tenant (tests/test_job_keys.py shows the two jobs apart).
CREATES = {("PUT", "/jobs/by-key/{key}")}
PARAMETER = re.compile(r"\{([^}]+)\}")


def id_routes(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every operation whose path names a resource by id, with its OpenAPI operation."""
    return [
        (method.upper(), path, op)
        for path, item in document["paths"].items()
        if PARAMETER.search(path)
        for method, op in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]


def anonymous(detail: str, values: dict[str, Any]) -> str:
    """A problem's detail with the ids and key it names replaced by N."""
    for value in sorted(map(str, values.values()), key=len, reverse=True):
        detail = detail.replace(value, "N")
    return detail


async def snapshot(pool: asyncpg.Pool[Any], job_id: int) -> tuple[Any, ...]:
    """Everything stored about a job: its row and its runs."""
    job = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    runs = await pool.fetch("SELECT * FROM job_runs WHERE job_id = $1 ORDER BY id", job_id)
    return (dict(job) if job else None, [dict(r) for r in runs])


async def test_another_tenants_ids_are_404_on_every_route(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    tenant_a = bearer(await make_key(pool, "tenant-a", "admin"))
    tenant_b = bearer(await make_key(pool, "tenant-b", "admin"))
    created = await client.post("/jobs", json={**JOB, "key": "a/report"}, headers=tenant_a)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    # A run of A's job, written directly: the API has no way to make one yet everywhere.
    run_id = await pool.fetchval(
        "INSERT INTO job_runs (job_id, tenant, scheduled_for) VALUES ($1, 'tenant-a', now()) "
        "RETURNING id",
        job_id,
    )
    ids = {"job_id": job_id, "run_id": run_id, "key": "a/report"}
    missing = {"job_id": job_id + 1_000_000, "run_id": run_id + 1_000_000, "key": "a/absent"}
    document = (await client.get("/api/openapi.json")).json()
    routes = id_routes(document)
    assert ("GET", "/jobs/{job_id}") in {(m, p) for m, p, _ in routes}
    before = await snapshot(pool, job_id)
    a_view = (await client.get(f"/jobs/{job_id}", headers=tenant_a)).json()

    tried = []
    for method, path, operation in routes:
        if (method, path) in CREATES:
            continue
        names = PARAMETER.findall(path)
        unknown = [n for n in names if n not in ids]
        assert not unknown, f"teach this matrix how to fill {unknown} in {method} {path}"
        body = BODIES.get((method, path), {}) if "requestBody" in operation else None

        async def call(
            values: dict[str, Any], m: str = method, p: str = path, b: Any = body
        ) -> Any:
            url = PARAMETER.sub(lambda match: str(values[match.group(1)]), p)
            return await client.request(m, url, headers=tenant_b, json=b)

        response = await call(ids)
        assert response.status_code == 404, (method, path, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        # B learns nothing: A's id answers exactly as an id that does not exist.
        absent = await call(missing)
        assert absent.status_code == 404
        assert anonymous(response.json()["detail"], ids) == anonymous(
            absent.json()["detail"], missing
        ), (method, path)
        assert "a-secret" not in response.text
        tried.append((method, path))

    assert len(tried) >= 5, tried
    assert await snapshot(pool, job_id) == before
    assert (await client.get(f"/jobs/{job_id}", headers=tenant_a)).json() == a_view


async def test_lists_show_only_your_own_tenants_jobs(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    tenant_a = bearer(await make_key(pool, "tenant-a"))
    tenant_b = bearer(await make_key(pool, "tenant-b"))
    a_ids = [
        (await client.post("/jobs", json={**JOB, "name": f"a{i}"}, headers=tenant_a)).json()["id"]
        for i in range(3)
    ]
    b_id = (await client.post("/jobs", json={**JOB, "name": "b"}, headers=tenant_b)).json()["id"]
    listed_a = (await client.get("/jobs", headers=tenant_a)).json()
    listed_b = (await client.get("/jobs", headers=tenant_b)).json()
    assert [j["id"] for j in listed_a] == sorted(a_ids, reverse=True)
    assert [j["id"] for j in listed_b] == [b_id]
    # Filters and cursors stay within the tenant too.
    assert (await client.get("/jobs", params={"name": "a0"}, headers=tenant_b)).json() == []
    page = await client.get("/jobs", params={"limit": 1}, headers=tenant_b)
    assert "link" not in page.headers


async def test_the_same_idempotency_key_in_two_tenants_makes_two_jobs(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    headers = {"Idempotency-Key": "nightly"}
    tenant_a = {**bearer(await make_key(pool, "tenant-a")), **headers}
    tenant_b = {**bearer(await make_key(pool, "tenant-b")), **headers}
    first = await client.post("/jobs", json=JOB, headers=tenant_a)
    other = await client.post("/jobs", json={**JOB, "name": "different"}, headers=tenant_b)
    assert first.status_code == other.status_code == 201
    assert first.json()["id"] != other.json()["id"]
    assert "idempotent-replayed" not in other.headers
