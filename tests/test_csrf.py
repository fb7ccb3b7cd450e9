"""No web page may drive the service: JSON-only bodies (415) in every mode, and in open
mode only loopback Host names and SCHEDULER_ALLOWED_HOSTS (421), over real HTTP."""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from scheduler_svc.security import crosssite
from tests.helpers import assert_problem, assert_unauthorized, running_app
from tests.principals import JWT_SECRET, bearer, make_jwt, make_key

JOB = {"name": "job", "schedule": "@every 1m"}
BODY = json.dumps(JOB).encode()
EVIL = {"Origin": "http://evil.example", "Referer": "http://evil.example/"}


async def job_count(pool: asyncpg.Pool[Any]) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM jobs")
    return count


async def make_job(client: httpx.AsyncClient, **headers: str) -> dict[str, Any]:
    response = await client.post("/jobs", json=JOB, headers=headers)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


# --- request bodies are JSON ---


async def test_a_cross_site_text_plain_post_is_415_and_creates_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    # What <form enctype="text/plain"> or fetch(..., {mode: "no-cors"}) sends: no preflight.
    response = await client.post(
        "/jobs", content=BODY, headers={**EVIL, "Content-Type": "text/plain"}
    )
    problem = assert_problem(response, 415)
    assert problem["type"] == "urn:scheduler-svc:problem:unsupported-media-type"
    assert "application/json" in problem["detail"]
    assert await job_count(pool) == 0


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param(
            "application/x-www-form-urlencoded", b"name=job&schedule=%40every+1m", id="form"
        ),
        # curl -d's default type
        pytest.param("application/x-www-form-urlencoded", BODY, id="form-with-json"),
        pytest.param(
            "multipart/form-data; boundary=x",
            b"--x\r\n\r\n" + BODY + b"\r\n--x--\r\n",
            id="multipart",
        ),
        pytest.param("text/plain;charset=UTF-8", BODY, id="text/plain"),
        pytest.param("text/json", BODY, id="text/json"),
        pytest.param("application/jsonx", BODY, id="jsonx"),
        pytest.param("application/+json", BODY, id="+json"),
        pytest.param("application/xml", b"<job/>", id="xml"),
        pytest.param("", BODY, id="empty-type"),
        # A body without a Content-Type: fetch sends a Blob's or an ArrayBuffer's bytes so.
        pytest.param(None, BODY, id="no-type"),
    ],
)
async def test_bodies_that_are_not_json_are_415(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], content_type: str | None, body: bytes
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    assert_problem(await client.post("/jobs", content=body, headers=headers), 415)
    assert await job_count(pool) == 0


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ],
)
async def test_json_media_types_are_accepted(client: httpx.AsyncClient, content_type: str) -> None:
    response = await client.post("/jobs", content=BODY, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text


async def test_patch_with_text_plain_is_415_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    job = await make_job(client)
    response = await client.patch(
        f"/jobs/{job['id']}",
        content=b'{"name": "changed"}',
        headers={**EVIL, "Content-Type": "text/plain"},
    )
    assert_problem(response, 415)
    assert (await client.get(f"/jobs/{job['id']}")).json()["name"] == "job"


@pytest.mark.parametrize(("action", "status"), [("pause", 200), ("resume", 200), ("trigger", 202)])
async def test_body_optional_routes_take_no_body_and_no_content_type(
    client: httpx.AsyncClient, api_url: str, action: str, status: int
) -> None:
    job = await make_job(client)
    path = f"/jobs/{job['id']}/{action}"
    # httpx sends Content-Length: 0; a bare request, as curl -X POST sends it, has neither.
    assert (await client.post(path)).status_code == status
    assert (await raw_request(api_url, f"POST {path} HTTP/1.1", "Host: localhost")).startswith(
        f"HTTP/1.1 {status} "
    )


@pytest.mark.parametrize("action", ["pause", "resume", "trigger"])
async def test_an_empty_form_post_to_a_body_optional_route_is_415(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], action: str
) -> None:
    # <form method="post" action="http://localhost:3000/jobs/1/trigger"> with no fields.
    job = await make_job(client)
    headers = {**EVIL, "Content-Type": "application/x-www-form-urlencoded"}
    assert_problem(await client.post(f"/jobs/{job['id']}/{action}", headers=headers), 415)
    assert await pool.fetchval("SELECT count(*) FROM job_runs") == 0
    assert await pool.fetchval("SELECT status FROM jobs") == "active"


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "https://localhost.evil"])
@pytest.mark.parametrize("action", ["pause", "resume", "trigger"])
async def test_open_mode_takes_no_change_from_another_origins_page(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], action: str, origin: str
) -> None:
    # fetch("http://localhost:3000/jobs/1/trigger", {method: "POST", mode: "no-cors"}):
    # no body, no Content-Type, no preflight; but the browser sends the page's Origin.
    job = await make_job(client)
    problem = assert_problem(
        await client.post(f"/jobs/{job['id']}/{action}", headers={"Origin": origin}), 403
    )
    assert "origin" in problem["detail"]
    assert await pool.fetchval("SELECT count(*) FROM job_runs") == 0
    assert await pool.fetchval("SELECT status FROM jobs") == "active"
    assert_problem(await client.post("/jobs", json=JOB, headers={"Origin": origin}), 403)
    assert await job_count(pool) == 1


async def test_open_mode_takes_changes_from_its_own_origins_and_keyed_mode_from_any(
    client: httpx.AsyncClient, api_url: str, pool: asyncpg.Pool[Any]
) -> None:
    port = urlsplit(api_url).port
    for origin in [api_url, f"http://localhost:{port}", "http://[::1]:3000"]:
        assert (await client.post("/jobs", json=JOB, headers={"Origin": origin})).status_code == 201
    key = bearer(await make_key(pool, "acme"))
    created = await client.post("/jobs", json=JOB, headers={**EVIL, **key})
    assert created.status_code == 201


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_readmes_curl_lines_work_and_curls_default_body_type_does_not(
    client: httpx.AsyncClient, api_url: str
) -> None:
    async def curl(*args: str) -> tuple[int, dict[str, Any]]:
        # A subprocess of this event loop's own: the server answers on this loop.
        process = await asyncio.create_subprocess_exec(
            "curl",
            "-s",
            "-m",
            "10",
            "-w",
            "\n%{http_code}",
            *args,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        body, _, code = out.decode().rpartition("\n")
        return int(code), json.loads(body) if body else {}

    url = f"localhost:{urlsplit(api_url).port}"
    status, job = await curl(
        "-X", "POST", f"{url}/jobs", "-H", "content-type: application/json", "-d", json.dumps(JOB)
    )
    assert status == 201
    status, _ = await curl(
        "-X",
        "PATCH",
        f"{url}/jobs/{job['id']}",
        "-H",
        'If-Match: "1"',
        "-H",
        "content-type: application/json",
        "-d",
        '{"schedule": "@every 30s"}',
    )
    assert status == 200
    assert (await curl("-X", "POST", f"{url}/jobs/{job['id']}/pause"))[0] == 200
    assert (await curl("-X", "POST", f"{url}/jobs/{job['id']}/resume"))[0] == 200
    status, problem = await curl("-X", "POST", f"{url}/jobs", "-d", json.dumps(JOB))
    assert status == 415 and problem["status"] == 415


async def test_keyed_mode_refuses_non_json_bodies_too_but_401_comes_first(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    key = await make_key(pool, "acme")
    text = {"Content-Type": "text/plain"}
    assert_unauthorized(await client.post("/jobs", content=BODY, headers=text))
    assert_problem(await client.post("/jobs", content=BODY, headers={**text, **bearer(key)}), 415)
    assert await job_count(pool) == 0


async def test_openapi_documents_415_on_every_method_that_may_carry_a_body(
    client: httpx.AsyncClient,
) -> None:
    paths = (await client.get("/api/openapi.json")).json()["paths"]
    may_carry_a_body = {
        (method.upper(), path): operation
        for path, item in paths.items()
        for method, operation in item.items()
        if method.upper() in crosssite.BODY_METHODS
    }
    assert {("POST", "/jobs"), ("PATCH", "/jobs/{job_id}")} <= may_carry_a_body.keys()
    for (method, path), operation in may_carry_a_body.items():
        assert "415" in operation["responses"], (method, path)
    assert "421" in paths["/jobs"]["get"]["responses"]


# --- open mode answers loopback Host names only ---


async def raw_request(url: str, request_line: str, *headers: str) -> str:
    """Send one request as written (no Host unless given); the status line and body."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        lines = [request_line, *headers, "Connection: close", "", ""]
        writer.write("\r\n".join(lines).encode())
        await writer.drain()
        response = (await reader.read()).decode()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition("\r\n\r\n")
    return f"{head.splitlines()[0]}\n{body}"


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:3000",
        "evil.example",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "localhost:3000.evil.example",
        "[::1]evil",
        "::1",
        "0x7f.1",
        "",
    ],
)
async def test_open_mode_refuses_a_foreign_host_with_421(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], host: str
) -> None:
    # DNS rebinding: the page's own name, re-pointed at 127.0.0.1, arrives as Host.
    headers = {"Host": host}
    problem = assert_problem(await client.get("/jobs", headers=headers), 421)
    assert problem["type"] == "urn:scheduler-svc:problem:misdirected-request"
    assert "SCHEDULER_ALLOWED_HOSTS" in problem["detail"]
    assert_problem(await client.post("/jobs", json=JOB, headers={**headers, **EVIL}), 421)
    assert await job_count(pool) == 0


@pytest.mark.parametrize(
    "host",
    [
        "localhost:3000",
        "localhost",
        "LocalHost:3000",
        "localhost.:3000",
        "127.0.0.1",
        "127.0.0.1:3000",
        "127.0.0.1:",
        "127.1.2.3:3000",
        "[::1]:3000",
        "[::1]",
        "[0:0::1]",
    ],
)
async def test_open_mode_serves_loopback_hosts(client: httpx.AsyncClient, host: str) -> None:
    assert (await client.get("/jobs", headers={"Host": host})).status_code == 200
    assert (await client.post("/jobs", json=JOB, headers={"Host": host})).status_code == 201


async def test_a_missing_host_is_refused_on_http_1_1_only(api_url: str, clean: None) -> None:
    answer = await raw_request(api_url, "GET /jobs HTTP/1.1")
    assert answer.startswith("HTTP/1.1 421 "), answer
    assert json.loads(answer.partition("\n")[2])["status"] == 421
    answer = await raw_request(api_url, "GET /jobs HTTP/1.0")
    assert answer.split()[1] == "200", answer
    answer = await raw_request(api_url, "GET /jobs HTTP/1.1", "Host: localhost", "Host: evil")
    assert answer.startswith("HTTP/1.1 421 "), answer


async def test_health_metrics_and_docs_answer_any_host(client: httpx.AsyncClient) -> None:
    for path in ["/", "/healthz", "/readyz", "/metrics", "/api", "/api/openapi.json"]:
        response = await client.get(path, headers={"Host": "probe.internal:8080"})
        assert response.status_code == 200, path


async def test_allowed_hosts_admits_its_names(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    settings = make_settings(allowed_hosts=("scheduler.internal", "*.corp.example"))
    async with running_app(settings, pool) as url, httpx.AsyncClient(base_url=url) as http:
        for host in ["scheduler.internal:3000", "Scheduler.Internal.", "a.b.corp.example"]:
            assert (await http.get("/jobs", headers={"Host": host})).status_code == 200, host
        for host in ["corp.example", "evil.example", "scheduler.internal.evil.example"]:
            assert_problem(await http.get("/jobs", headers={"Host": host}), 421)
        assert (await http.get("/jobs", headers={"Host": "localhost:3000"})).status_code == 200


async def test_with_an_api_key_any_host_is_served(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    key = bearer(await make_key(pool, "acme"))
    foreign = {"Host": "scheduler.example.com"}
    assert (await client.post("/jobs", json=JOB, headers={**foreign, **key})).status_code == 201
    assert (await client.get("/jobs", headers={**foreign, **key})).status_code == 200
    # Without the key: the service is closed, so 401 rather than a word about the Host.
    assert_unauthorized(await client.get("/jobs", headers=foreign))


async def test_with_jwt_configured_any_host_is_served(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    settings = make_settings(jwt_secret=JWT_SECRET)
    async with running_app(settings, pool) as url, httpx.AsyncClient(base_url=url) as http:
        headers = {"Host": "scheduler.example.com", **bearer(make_jwt())}
        assert (await http.post("/jobs", json=JOB, headers=headers)).status_code == 201
        text = {**headers, "Content-Type": "text/plain"}
        assert_problem(await http.post("/jobs", content=BODY, headers=text), 415)


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost", "localhost"),
        ("LOCALHOST.:8080", "localhost"),
        ("[::1]:3000", "[::1]"),
        ("[0:0:0:0:0:0:0:1]", "[::1]"),
        ("Example.COM:443", "example.com"),
        ("host:", "host"),
        ("::1", None),
        ("[::1", None),
        ("host:port", None),
        ("host:3000:1", None),
        ("a b", None),
        (":3000", None),
        ("localhost:\uff13\uff10\uff10\uff10", None),  # full-width digits
    ],
)
def test_host_name_drops_the_port_and_normalizes(header: str, name: str | None) -> None:
    assert crosssite.host_name(header) == name
