"""Regressions found by fuzzing (tests/test_fuzz.py), each once a 500, now a named 400."""

from __future__ import annotations

import socket
from typing import Any

import asyncpg
import httpx
import pytest

from scheduler_svc import store
from scheduler_svc.api import nul_field

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
