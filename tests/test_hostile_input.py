"""Regressions found by fuzzing (tests/test_fuzz.py), each once a 500, now a named 400."""

from __future__ import annotations

import socket
import time
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest

from scheduler_svc import store
from scheduler_svc.api.bodies import TOO_DEEP
from scheduler_svc.api.routes import nul_field
from scheduler_svc.schedule import PREVIEW_HORIZON

GOOD = {"name": "job", "schedule": "@hourly"}
HOOK = {"type": "http", "url": "https://example.com/hook"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**GOOD, "name": "a\x00b"}, "name"),
        ({**GOOD, "attributes": {"k": "a\x00"}}, "attributes.k"),
        ({**GOOD, "attributes": {"k\x00": 1}}, "attributes.k\x00"),
        ({**GOOD, "attributes": {"deep": [1, {"x": ["\x00"]}]}}, "attributes.deep[1].x[0]"),
        ({**GOOD, "target": {**HOOK, "url": "https://example.com/\x00"}}, "target.url"),
        ({**GOOD, "target": {**HOOK, "body": {"text": "\x00"}}}, "target.body.text"),
        ({**GOOD, "target": {**HOOK, "body": "\x00"}}, "target.body"),
    ],
)
async def test_nul_characters_in_a_job_are_a_400_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/jobs", json=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in response.json()["errors"]] == [field]
    job = (await client.post("/jobs", json=GOOD)).json()
    patch = {k: v for k, v in body.items() if k not in GOOD or body[k] != GOOD[k]}
    response = await client.patch(f"/jobs/{job['id']}", json=patch)
    assert response.status_code == 400, response.text
    assert (await client.get(f"/jobs/{job['id']}")).json() == job


async def test_a_backslash_before_u0000_is_just_text(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={**GOOD, "attributes": {"k": "\\u0000"}})
    assert response.status_code == 201, response.text
    assert response.json()["attributes"] == {"k": "\\u0000"}


async def test_nul_in_the_name_filter_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/jobs", params={"name": "a\x00"})
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["field"] == "name"


def test_nul_field_names_the_path() -> None:
    assert nul_field({"a": [{"b": "ok"}, {"c": "\x00"}]}) == "a[1].c"
    assert nul_field(["\x00"]) == "[0]"
    assert nul_field("\x00") == "body"
    assert nul_field({"a": 1, "b": None, "c": 1.5}) is None


@pytest.mark.parametrize(
    "error", [asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError]
)
async def test_text_the_database_cannot_store_is_a_400_not_a_500(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    # Whatever a future field lets through, the database's refusal is the client's 400.
    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise error("invalid byte sequence for encoding UTF8: 0x00")

    monkeypatch.setattr(store, "jobs_list", refuse)
    response = await client.get("/jobs")
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["field"] == "body"


async def test_request_bodies_are_documented_as_closed(client: httpx.AsyncClient) -> None:
    schemas = (await client.get("/api/openapi.json")).json()["components"]["schemas"]
    for name in ("JobCreate", "JobPatch", "HttpTarget", "LogTarget", "HandlerTarget"):
        assert schemas[name]["additionalProperties"] is False, name
    assert "additionalProperties" not in schemas["JobOut"]
    response = await client.post("/jobs", json={**GOOD, "colour": "red"})
    assert response.status_code == 400


async def test_creating_a_webhook_job_looks_up_no_host(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fuzzed webhook hosts must cost nothing at creation: no DNS, no connection.
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def spy(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", b"127.0.0.1"):
            looked_up.append(str(host))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    target = {"type": "http", "url": "https://hook.fuzz-target.invalid/x"}
    response = await client.post("/jobs", json={**GOOD, "target": target})
    assert response.status_code == 201, response.text
    assert looked_up == []


def nested(levels: int) -> bytes:
    return b'{"k":' * levels + b"1" + b"}" * levels


def raw_job(**fields: bytes) -> bytes:
    """A job body with each of `fields` spliced in as raw JSON."""
    spliced = b"".join(b',"' + k.encode() + b'":' + v for k, v in fields.items())
    return b'{"name":"job","schedule":"@hourly"' + spliced + b"}"


# (id, raw JSON body, field the 400 names): a field's value is level 1, and 33 levels
# are refused, before anything recursive (the decoder, the database's encoder, the
# idempotency hash) reads them. Once a 500: msgspec's RecursionError.
TOO_DEEP_BODIES = [
    ("attributes 10,000 levels", raw_job(attributes=b"[" * 10_000 + b"]" * 10_000), "attributes"),
    ("attributes 33 levels", raw_job(attributes=nested(33)), "attributes.k"),
    ("attributes never closed", raw_job(attributes=b'{"a":' + b"[" * 10_000), "attributes.a"),
    (
        "webhook body 10,000 levels",
        raw_job(
            target=b'{"type":"http","url":"https://example.com/","body":' + nested(10_000) + b"}"
        ),
        "target.body",
    ),
    ("body an array 10,000 deep", b"[" * 10_000 + b"]" * 10_000, "body"),
]


@pytest.mark.parametrize(
    ("body", "field"), [pytest.param(*case[1:], id=case[0]) for case in TOO_DEEP_BODIES]
)
async def test_json_nested_too_deep_is_a_400_naming_the_field(
    client: httpx.AsyncClient, body: bytes, field: str
) -> None:
    job = (await client.post("/jobs", json=GOOD)).json()
    for method, path in (("POST", "/jobs"), ("PATCH", f"/jobs/{job['id']}")):
        headers = {"content-type": "application/json", "Idempotency-Key": "deep"}
        response = await client.request(method, path, content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["errors"] == [{"field": field, "message": TOO_DEEP}]
    assert (await client.get("/jobs")).json() == [job]


async def test_json_nested_32_levels_is_stored_whole(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json"}
    response = await client.post("/jobs", content=raw_job(attributes=nested(32)), headers=headers)
    assert response.status_code == 201, response.text
    attributes = response.json()["attributes"]
    for _ in range(31):
        attributes = attributes["k"]
    assert attributes == {"k": 1}


# (id, method, path, query or body, status, field the 400 names): inputs that once cost
# seconds of croniter or date arithmetic, or a 500 at the end of the calendar.
SLOW_OR_BROKEN: list[tuple[str, str, str, dict[str, Any], int, str | None]] = [
    (
        "preview of a cron firing once in decades",
        "GET",
        "/schedules/preview",
        {"schedule": "0 0 29 2 1#5", "count": 100},
        200,
        None,
    ),
    (
        "preview of a leap day, 100 times",
        "GET",
        "/schedules/preview",
        {"schedule": "0 0 29 2 *", "count": 100, "after": "2025-01-01T00:00:00Z"},
        200,
        None,
    ),
    (
        "preview near the end of the calendar",
        "GET",
        "/schedules/preview",
        {"schedule": "0 0 29 2 *", "count": 100, "after": "9990-01-01T00:00:00Z"},
        200,
        None,
    ),
    (
        "preview of @every past the end of the calendar",
        "GET",
        "/schedules/preview",
        {"schedule": "@every 1s", "count": 100, "after": "9999-12-31T23:59:59Z"},
        200,
        None,
    ),
    (
        "preview after a time before year 1 in UTC",
        "GET",
        "/schedules/preview",
        {"schedule": "@daily", "after": "0001-01-01T00:00:00+23:59"},
        400,
        "after",
    ),
    (
        "preview after a time past year 9999 in UTC",
        "GET",
        "/schedules/preview",
        {"schedule": "@daily", "after": "9999-12-31T23:59:59-23:59"},
        400,
        "after",
    ),
    (
        "preview of a schedule too long",
        "GET",
        "/schedules/preview",
        {"schedule": "1," * 100 + "1 * * * *"},
        400,
        "schedule",
    ),
    (
        "a job firing once in decades",
        "POST",
        "/jobs",
        {**GOOD, "schedule": "0 0 29 2 1#5"},
        201,
        None,
    ),
    (
        "a job on February's last day when a fifth Monday",
        "POST",
        "/jobs",
        {**GOOD, "schedule": "0 0 L 2 1#5"},
        201,
        None,
    ),
    ("a leap-day job", "POST", "/jobs", {**GOOD, "schedule": "0 0 29 2 *"}, 201, None),
]


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in SLOW_OR_BROKEN],
)
async def test_schedule_inputs_are_answered_quickly(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    payload: dict[str, Any],
    status: int,
    field: str | None,
) -> None:
    options = {"params": payload} if method == "GET" else {"json": payload}
    started = time.perf_counter()
    response = await client.request(method, path, **options)
    assert time.perf_counter() - started < 2
    assert response.status_code == status, response.text
    if field is not None:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in response.json()["errors"]] == [field]
    if path == "/schedules/preview" and status == 200:
        times = [datetime.fromisoformat(t) for t in response.json()["times"]]
        assert times == sorted(set(times)) and len(times) <= payload["count"]
        if "after" in payload:  # no further ahead than the preview's horizon
            after = datetime.fromisoformat(payload["after"])
            assert all(after < t and t - after <= PREVIEW_HORIZON for t in times)
