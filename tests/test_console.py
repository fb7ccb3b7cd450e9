"""The console (/ui) over real HTTP, without a browser: every page and live fragment, the
forms (through the API's own rules), access (open mode, sign-in, read-only keys,
tenants, CSRF, origins, hosts) and the security headers. The browser flows are in
test_console_browser.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from scheduler_svc import store
from scheduler_svc.console.render import STATIC
from scheduler_svc.security import auth, principals
from tests.console import csrf_token, page_of, post_form
from tests.helpers import create_job, running_app
from tests.principals import bearer, make_key
from tests.replicas import eventually

HX = {"HX-Request": "true"}
WRITE_BUTTONS = {"Run now", "Pause", "Resume", "Delete", "Cancel run", "Run again"}


# --- pages and fragments (open mode: no key exists, loopback) ---------------------------


async def test_every_page_answers_html_with_the_security_headers(
    client: httpx.AsyncClient,
) -> None:
    job = await create_job(client, schedule="30 9 * * 1-5", timezone="America/New_York")
    run = (await client.post(f"/jobs/{job['id']}/trigger")).json()
    for path in ["/ui", "/ui/jobs", "/ui/jobs/new", f"/ui/jobs/{job['id']}",
                 f"/ui/jobs/{job['id']}/edit", f"/ui/runs/{run['id']}"]:  # fmt: skip
        response = await client.get(path)
        assert response.status_code == 200, (path, response.text[:500])
        assert response.headers["content-type"].startswith("text/html")
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
        assert re.fullmatch(r"app;dur=\d+\.\d\d", response.headers["server-timing"])
        assert "<html" in response.text
    cookie = response.headers.get("set-cookie") or ""
    # The client kept the CSRF cookie from the first page; a fresh client gets one.
    async with httpx.AsyncClient(base_url=str(client.base_url)) as fresh:
        cookie = (await fresh.get("/ui")).headers["set-cookie"]
    assert "scheduler_csrf=" in cookie and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie or "samesite=strict" in cookie.lower()
    assert "Path=/ui" in cookie


async def test_live_fragments_answer_htmx_with_the_fragment_only(
    client: httpx.AsyncClient,
) -> None:
    job = await create_job(client, tags=["nightly"])
    run = (await client.post(f"/jobs/{job['id']}/trigger")).json()
    expected = {
        "/ui": 'id="overview"',
        "/ui/jobs?tag=nightly": 'id="jobs-rows"',
        f"/ui/jobs/{job['id']}": 'id="job-live"',
        f"/ui/runs/{run['id']}": 'id="run-live"',
    }
    for path, marker in expected.items():
        response = await client.get(path, headers=HX)
        assert response.status_code == 200, (path, response.text[:300])
        assert "<html" not in response.text
        assert response.text.lstrip().startswith("<") and marker in response.text, path
        assert "data-live" in response.text and 'hx-trigger="live"' in response.text


async def test_jobs_list_filters_pages_by_cursor_and_shows_plain_schedules(
    client: httpx.AsyncClient,
) -> None:
    for i in range(53):
        await create_job(client, name=f"job-{i:02}", schedule="*/5 * * * *")
    tagged = await create_job(client, name="tagged", schedule="30 9 * * 1-5", tags=["nightly"])
    first = await client.get("/ui/jobs")
    rows = re.findall(r'data-job-id="(\d+)"', first.text)
    assert len(rows) == 50 and rows[0] == str(tagged["id"])
    assert "every weekday at 09:30" in first.text
    older = [href for text, href in page_of(first.text).links if text == "Older jobs"]
    assert len(older) == 1
    second = await client.get(older[0].replace("&amp;", "&"))
    rest = re.findall(r'data-job-id="(\d+)"', second.text)
    assert len(rest) == 4 and not set(rest) & set(rows)
    only = await client.get("/ui/jobs", params={"tag": "nightly"})
    assert re.findall(r'data-job-id="(\d+)"', only.text) == [str(tagged["id"])]
    by_name = await client.get("/ui/jobs", params={"name": "job-07"})
    assert len(re.findall(r'data-job-id="(\d+)"', by_name.text)) == 1
    bad = await client.get("/ui/jobs", params={"cursor": "nonsense"})
    assert bad.status_code == 400 and "<html" in bad.text


async def test_job_page_gives_next_fires_in_its_zone_and_utc_across_dst(
    client: httpx.AsyncClient,
) -> None:
    job = await create_job(client, schedule="30 9 * * *", timezone="America/New_York")
    text = (await client.get(f"/ui/jobs/{job['id']}")).text
    fires = re.search(r'<table id="fires">(.*?)</table>', text, re.S)
    assert fires is not None
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td></tr>", fires.group(1), re.S)
    assert len(rows) == 8
    for local, utc in rows:
        assert "09:30:00 E" in local  # EST or EDT, always 09:30 on the wall
        assert re.search(r"(13|14):30:00 UTC", utc)
    assert "every day at 09:30 (America/New_York)" in text


async def test_a_job_created_through_the_form_is_the_apis_and_audited(
    client: httpx.AsyncClient,
) -> None:
    csrf = await csrf_token(client)
    fields = {"name": "from the form", "schedule": "@every 1h", "timezone": "UTC",
              "target_type": "log", "tags": "alpha, beta", "max_attempts": "2",
              "timeout_s": "10", "overlap": "forbid", "jitter_s": "0"}  # fmt: skip
    response = await post_form(client, "/ui/jobs", fields, csrf=csrf)
    assert response.status_code == 303
    job_id = int(response.headers["location"].rsplit("/", 1)[1])
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert (job["name"], job["tags"], job["max_attempts"]) == (
        "from the form",
        ["alpha", "beta"],
        2,
    )
    audit = (await client.get(f"/jobs/{job_id}/audit")).json()
    assert [a["action"] for a in audit] == ["job.create"] and audit[0]["actor"] == "open"


async def test_a_bad_cron_shows_the_apis_own_error_beside_the_schedule(
    client: httpx.AsyncClient,
) -> None:
    api = await client.post("/jobs", json={"name": "x", "schedule": "61 * * * *"})
    message = next(e["message"] for e in api.json()["errors"] if e["field"] == "schedule")
    csrf = await csrf_token(client)
    response = await post_form(
        client, "/ui/jobs", {"name": "x", "schedule": "61 * * * *"}, csrf=csrf
    )
    assert response.status_code == 400
    field = re.search(
        r'<div class="field">\s*<label for="f-schedule">.*?</div>', response.text, re.S
    )
    assert field is not None and 'aria-invalid="true"' in field.group(0)
    assert 'class="field-error"' in field.group(0)
    assert message.replace("'", "&#39;") in field.group(0) or message in field.group(0)
    assert 'value="61 * * * *"' in field.group(0)  # what was typed is kept
    assert (await client.get("/jobs")).json() == []
    typo = await post_form(
        client, "/ui/jobs", {"name": "x", "schedule": "@daily", "max_attempts": "x"}, csrf=csrf
    )
    assert typo.status_code == 400 and "must be a whole number, not &#39;x&#39;" in typo.text


async def test_edit_form_changes_the_job_as_patch_would(client: httpx.AsyncClient) -> None:
    job = await create_job(client, schedule="@every 1h")
    csrf = await csrf_token(client)
    fields = {"name": "renamed", "schedule": "0 3 * * *", "timezone": "Europe/Paris",
              "target_type": "log", "max_attempts": "3", "timeout_s": "30",
              "overlap": "allow", "jitter_s": "1.5"}  # fmt: skip
    response = await post_form(client, f"/ui/jobs/{job['id']}", fields, csrf=csrf)
    assert response.status_code == 303
    after = (await client.get(f"/jobs/{job['id']}")).json()
    assert (after["name"], after["schedule"], after["timezone"], after["overlap"]) == (
        "renamed", "0 3 * * *", "Europe/Paris", "allow"
    )  # fmt: skip
    assert after["jitter_s"] == 1.5


async def test_controls_run_now_pause_resume_delete(client: httpx.AsyncClient) -> None:
    job = await create_job(client)
    csrf = await csrf_token(client)
    base = f"/ui/jobs/{job['id']}"
    assert (await post_form(client, f"{base}/trigger", csrf=csrf)).status_code == 303
    runs = (await client.get(f"/jobs/{job['id']}/runs")).json()
    assert [r["trigger"] for r in runs] == ["manual"]
    assert (await post_form(client, f"{base}/pause", csrf=csrf)).status_code == 303
    assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "paused"
    assert "Resume" in page_of((await client.get(base)).text).buttons
    assert (await post_form(client, f"{base}/resume", csrf=csrf)).status_code == 303
    assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "active"
    assert (await post_form(client, f"{base}/delete", csrf=csrf)).status_code == 303
    assert (await client.get(f"/jobs/{job['id']}")).status_code == 404
    gone = await client.get(base)
    assert gone.status_code == 404 and "<h1>Not Found</h1>" in gone.text


async def test_bulk_pause_shows_the_count_then_pauses_exactly_those(
    client: httpx.AsyncClient,
) -> None:
    tagged = [await create_job(client, name=f"n{i}", tags=["nightly"]) for i in range(3)]
    other = await create_job(client, name="other")
    csrf = await csrf_token(client)
    ask = await post_form(client, "/ui/jobs/bulk/pause", {"tag": "nightly"}, csrf=csrf)
    assert ask.status_code == 200 and "Pause 3 jobs" in page_of(ask.text).buttons
    for job in tagged:
        assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "active"
    done = await post_form(
        client, "/ui/jobs/bulk/pause", {"tag": "nightly", "confirm": "3"}, csrf=csrf
    )
    assert done.status_code == 303 and "paused+3+of+3" in done.headers["location"]
    statuses = {}
    for job in [*tagged, other]:
        statuses[job["id"]] = (await client.get(f"/jobs/{job['id']}")).json()["status"]
    assert statuses == {**{j["id"]: "paused" for j in tagged}, other["id"]: "active"}
    page = await client.get(done.headers["location"])
    assert "Paused 3 of 3 matching jobs." in page.text


async def cancels_counted(pool: asyncpg.Pool[Any]) -> int:
    """Cancels in the overview's rollup (run_minutes) of the last hour, tenant default."""
    since = datetime.now(UTC) - timedelta(hours=1)
    return sum(m.cancelled for m in await store.run_minutes_read(pool, "default", since))


async def test_cancel_and_run_again_from_the_run_page(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    job = await create_job(client)
    run = (await client.post(f"/jobs/{job['id']}/trigger")).json()  # pending: no worker
    csrf = await csrf_token(client)
    assert "Cancel run" in page_of((await client.get(f"/ui/runs/{run['id']}")).text).buttons
    counted = await cancels_counted(pool)
    cancelled = await post_form(client, f"/ui/runs/{run['id']}/cancel", csrf=csrf)
    assert cancelled.status_code == 303
    assert (await client.get(f"/runs/{run['id']}")).json()["status"] == "cancelled"

    # The overview counts it (its replica's engine adds its counts every few seconds).
    async def counted_now() -> bool:
        return await cancels_counted(pool) == counted + 1

    await eventually(counted_now, 15, "the cancel in run_minutes")
    again = await post_form(client, f"/ui/runs/{run['id']}/cancel", csrf=csrf)
    assert again.status_code == 409 and "<html" in again.text
    rerun = await post_form(client, f"/ui/runs/{run['id']}/again", csrf=csrf)
    assert rerun.status_code == 303
    new_id = int(rerun.headers["location"].rsplit("/", 1)[1])
    assert new_id != run["id"]
    assert (await client.get(f"/runs/{new_id}")).json()["trigger"] == "manual"


async def test_overview_shows_next_fires_running_and_failures(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    job = await create_job(client, name="soon", schedule="@every 1h")
    run = (await client.post(f"/jobs/{job['id']}/trigger")).json()
    await pool.execute(
        "UPDATE job_runs SET status = 'failed', attempt = 1, started_at = now(),"
        " finished_at = now(), error = 'connection refused' WHERE id = $1",
        run["id"],
    )
    text = (await client.get("/ui")).text
    assert ">soon</a>" in text  # next fires
    assert "connection refused" in text  # failures by error
    assert "Replicas connected now" in text  # open mode holds admin


# --- what the console refuses ----------------------------------------------------------


async def test_forms_without_the_csrf_token_or_from_another_origin_are_refused(
    client: httpx.AsyncClient,
) -> None:
    job = await create_job(client)
    csrf = await csrf_token(client)
    url = f"/ui/jobs/{job['id']}/pause"
    assert (await post_form(client, url, csrf=None)).status_code == 403
    assert (await post_form(client, url, csrf="x" * 43)).status_code == 403
    foreign = await client.post(url, data={"csrf": csrf}, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    async with httpx.AsyncClient(base_url=str(client.base_url)) as stranger:
        # Another browser's token, without its cookie (what a foreign page could send).
        assert (await post_form(stranger, url, csrf=csrf)).status_code == 403
    assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "active"
    # The API's JSON-only rule still holds outside /ui.
    urlencoded = await client.post("/jobs", data={"name": "x", "schedule": "@every 1h"})
    assert urlencoded.status_code == 415


async def test_open_mode_answers_loopback_host_names_only(client: httpx.AsyncClient) -> None:
    response = await client.get("/ui", headers={"Host": "rebound.example"})
    assert response.status_code == 421 and "<html" in response.text


async def test_no_page_or_asset_names_another_origin(client: httpx.AsyncClient) -> None:
    job = await create_job(client)
    pages = ["/ui", "/ui/jobs", "/ui/jobs/new", f"/ui/jobs/{job['id']}", "/ui/login"]
    referenced: list[str] = []
    for path in pages:
        referenced += page_of((await client.get(path)).text).srcs
    # data: (the empty favicon) is no request; "#…" stays on the page.
    allowed = ("/ui", "#", "data:,")
    assert referenced and all(ref.startswith(allowed) for ref in referenced), referenced
    for asset in sorted(STATIC.iterdir()):
        served = await client.get(f"/ui/static/{asset.name}")
        assert served.status_code == 200
        assert not re.search(rb"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", served.content), asset.name


# --- sign-in, read-only keys, tenants ---------------------------------------------------


@pytest.fixture
async def keyed(pool: asyncpg.Pool[Any], client: httpx.AsyncClient) -> str:
    """The shared app's URL once an API key exists: no longer open."""
    await make_key(pool, "someone-else")
    return str(client.base_url)


@asynccontextmanager
async def sign_in(url: str, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client signed in to the console with `key`."""
    async with httpx.AsyncClient(base_url=url) as http:
        csrf = await csrf_token(http, "/ui/login")
        fields = {"key": key, "next": "/ui/jobs"}
        response = await post_form(http, "/ui/login", fields, csrf=csrf)
        assert response.status_code == 303 and response.headers["location"] == "/ui/jobs"
        cookie = response.headers["set-cookie"]
        assert "scheduler_session=" in cookie and "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower() and "Path=/ui" in cookie
        assert key not in cookie
        yield http


async def test_without_a_session_pages_lead_to_the_sign_in_form(keyed: str) -> None:
    async with httpx.AsyncClient(base_url=keyed) as http:
        response = await http.get("/ui/jobs?tag=x")
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/login?next=%2Fui%2Fjobs%3Ftag%3Dx"
        login = await http.get("/ui/login")
        assert login.status_code == 200 and 'for="key">API key<' in login.text
        csrf = await csrf_token(http, "/ui/login")
        bad = await post_form(http, "/ui/login", {"key": "sch_nope"}, csrf=csrf)
        assert bad.status_code == 401 and "not valid" in bad.text
        assert (await http.get("/ui/events")).status_code == 401


async def test_a_read_only_key_sees_no_write_control_and_cannot_write(
    keyed: str, pool: asyncpg.Pool[Any]
) -> None:
    writer = await make_key(pool, "acme")
    reader = await make_key(pool, "acme", principals.READ)
    async with httpx.AsyncClient(base_url=keyed, headers=bearer(writer)) as api:
        job = await create_job(api, tags=["t"])
        run = (await api.post(f"/jobs/{job['id']}/trigger")).json()
    async with sign_in(keyed, reader) as http:
        for path in ["/ui", "/ui/jobs", f"/ui/jobs/{job['id']}", f"/ui/runs/{run['id']}"]:
            response = await http.get(path)
            assert response.status_code == 200, path
            page = page_of(response.text)
            assert not WRITE_BUTTONS & set(page.buttons), (path, page.buttons)
            assert not {"New job", "Edit"} & {text for text, _ in page.links}, path
            assert "read-only" in response.text
        csrf = await csrf_token(http)
        for url in [f"/ui/jobs/{job['id']}/pause", f"/ui/runs/{run['id']}/cancel", "/ui/jobs"]:
            refused = await post_form(http, url, {"name": "x", "schedule": "@daily"}, csrf=csrf)
            assert refused.status_code == 403, url
        signed_out = await post_form(http, "/ui/logout", csrf=csrf)
        assert (
            signed_out.status_code == 303
            and "scheduler_session=" in signed_out.headers["set-cookie"]
        )
    async with httpx.AsyncClient(base_url=keyed, headers=bearer(writer)) as api:
        assert (await api.get(f"/jobs/{job['id']}")).json()["status"] == "active"
        assert (await api.get(f"/runs/{run['id']}")).json()["status"] == "pending"


async def test_a_session_acts_as_its_key_and_ends_when_the_key_is_revoked(
    keyed: str, pool: asyncpg.Pool[Any]
) -> None:
    key = await make_key(pool, "acme")
    async with sign_in(keyed, key) as http:
        csrf = await csrf_token(http)
        fields = {"name": "mine", "schedule": "@every 1h", "target_type": "log"}
        created = await post_form(http, "/ui/jobs", fields, csrf=csrf)
        assert created.status_code == 303
        job_id = int(created.headers["location"].rsplit("/", 1)[1])
        audit = await store.audit_list_job(pool, "acme", job_id, before_id=None, limit=5)
        assert [a.actor for a in audit] == [auth.key_prefix(key)]
        await store.api_key_revoke(pool, auth.key_prefix(key) or "")
        assert (await http.get("/ui/jobs")).status_code == 303  # back to the sign-in form


async def test_a_tampered_or_expired_session_is_no_session(
    keyed: str, pool: asyncpg.Pool[Any]
) -> None:
    key = await make_key(pool, "acme")
    async with sign_in(keyed, key) as http:
        value = http.cookies["scheduler_session"]
        body, _, mac = value.partition(".")
        http.cookies.clear()
        http.cookies.set("scheduler_session", f"{body}.{mac[::-1]}")
        assert (await http.get("/ui/jobs")).status_code == 303
    from scheduler_svc.console.access import SessionKeys

    keys = SessionKeys()
    expired = await keys.sign(pool, {"k": auth.key_prefix(key), "exp": 1})
    async with httpx.AsyncClient(base_url=keyed, cookies={"scheduler_session": expired}) as http:
        assert (await http.get("/ui/jobs")).status_code == 303


async def test_tenants_see_only_their_own_jobs_and_runs(
    keyed: str, pool: asyncpg.Pool[Any]
) -> None:
    mine, theirs = await make_key(pool, "acme"), await make_key(pool, "globex")
    async with httpx.AsyncClient(base_url=keyed, headers=bearer(theirs)) as api:
        job = await create_job(api, name="globex-secret")
        run = (await api.post(f"/jobs/{job['id']}/trigger")).json()
    async with sign_in(keyed, mine) as http:
        for path in [f"/ui/jobs/{job['id']}", f"/ui/runs/{run['id']}",
                     f"/ui/jobs/{job['id']}/edit"]:  # fmt: skip
            response = await http.get(path)
            assert response.status_code == 404 and "<h1>Not Found</h1>" in response.text
            assert "globex-secret" not in response.text
        for path in ["/ui", "/ui/jobs"]:
            assert "globex-secret" not in (await http.get(path)).text
        csrf = await csrf_token(http)
        assert (await post_form(http, f"/ui/jobs/{job['id']}/pause", csrf=csrf)).status_code == 404
        ask = await post_form(http, "/ui/jobs/bulk/pause", {}, csrf=csrf)
        assert "Pause 0 jobs" not in page_of(ask.text).buttons and ">Pause 0 jobs?<" in ask.text


async def test_an_authorization_header_works_on_the_console_too(
    keyed: str, pool: asyncpg.Pool[Any]
) -> None:
    key = await make_key(pool, "acme")
    async with httpx.AsyncClient(base_url=keyed, headers=bearer(key)) as http:
        assert (await http.get("/ui/jobs")).status_code == 200


async def test_admins_see_replicas_and_the_service_wide_backlog_others_do_not(
    keyed: str, pool: asyncpg.Pool[Any]
) -> None:
    admin = await make_key(pool, "acme", principals.ADMIN)
    plain = await make_key(pool, "acme")
    for key, shown in [(admin, True), (plain, False)]:
        async with httpx.AsyncClient(base_url=keyed, headers=bearer(key)) as http:
            text = (await http.get("/ui")).text
        assert ("Replicas connected now" in text) is shown
        assert ("all tenants:" in text) is shown


async def test_a_jwt_session_ends_when_its_token_would(
    database_url: str, pool: asyncpg.Pool[Any], make_settings: Any
) -> None:
    from tests.principals import JWT_SECRET, make_jwt

    settings = make_settings(jwt_secret=JWT_SECRET)
    async with running_app(settings, pool) as url:
        async with sign_in(url, make_jwt(expires_in=300)) as http:
            assert (await http.get("/ui/jobs")).status_code == 200
            value = http.cookies["scheduler_session"]
        from scheduler_svc.console.access import SessionKeys

        claims = await SessionKeys().verify(pool, value)
        assert claims is not None
        now = datetime.now(UTC).timestamp()
        assert now + 200 < claims["exp"] <= now + 301
        assert (
            claims["t"] == "acme"
            and (datetime.now(UTC) + timedelta(hours=1)).timestamp() > claims["exp"]
        )


async def test_behind_a_tls_proxy_cookies_are_secure_and_the_origin_is_judged_by_name(
    client: httpx.AsyncClient,
) -> None:
    async with httpx.AsyncClient(base_url=str(client.base_url)) as fresh:
        proxied = await fresh.get("/ui", headers={"X-Forwarded-Proto": "https"})
        assert "Secure" in proxied.headers["set-cookie"]
        plain = await client.get("/ui/jobs")
        assert "set-cookie" not in plain.headers or "Secure" not in plain.headers["set-cookie"]
    job = await create_job(client)
    csrf = await csrf_token(client)
    # A proxy may pass the Host on without the browser's port (nginx's $host).
    same_name = await client.post(
        f"/ui/jobs/{job['id']}/pause",
        data={"csrf": csrf},
        headers={"Origin": "http://127.0.0.1:8443", "Host": "127.0.0.1"},
    )
    assert same_name.status_code == 303
    assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "paused"


async def test_the_replicas_table_counts_a_console_connection_as_its_replicas(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    async with (
        httpx.AsyncClient(base_url=str(client.base_url), timeout=10) as http,
        http.stream("GET", "/ui/events") as stream,
    ):
        assert stream.status_code == 200
        assert await anext(stream.aiter_lines()) == ": live"  # subscribed: listening
        replicas = await store.console_replicas(pool)
    workers = [r.worker for r in replicas]
    assert "test-api" in workers and not any(w.endswith("/console") for w in workers)


async def test_shared_renders_render_once_per_batch_for_every_stream_asking() -> None:
    import asyncio

    from scheduler_svc.console.views import SharedRenders

    renders = SharedRenders()
    calls: list[int] = []
    gate = asyncio.Event()

    async def render() -> str:
        calls.append(1)
        await gate.wait()
        return f"render {len(calls)}"

    waiting = [asyncio.create_task(renders.get(("t", "/ui?"), 1, render)) for _ in range(10)]
    await asyncio.sleep(0)  # let them all ask before the render ends
    gate.set()
    assert await asyncio.gather(*waiting) == ["render 1"] * 10
    assert await renders.get(("t", "/ui?"), 1, render) == "render 1"  # the same batch
    assert await renders.get(("t", "/ui?"), 2, render) == "render 2"  # a later batch
    assert await renders.get(("other tenant", "/ui?"), 2, render) == "render 3"  # by key
    # Not listening for the tenant here: always rendered afresh.
    assert [await renders.get(("t", "/ui?"), None, render) for _ in range(2)] == [
        "render 4",
        "render 5",
    ]

    async def failing() -> str:
        calls.append(1)
        raise RuntimeError("database gone")

    with pytest.raises(RuntimeError):
        await renders.get(("t", "/ui/jobs?"), 2, failing)
    # A failed render is not kept: the next stream asks again.
    assert await renders.get(("t", "/ui/jobs?"), 2, render) == "render 7"


async def test_a_shared_fragment_read_after_a_batch_shows_the_changes_it_named(
    client: httpx.AsyncClient,
) -> None:
    import asyncio

    async with (
        httpx.AsyncClient(base_url=str(client.base_url), timeout=10) as http,
        http.stream("GET", "/ui/events") as stream,
    ):
        lines = stream.aiter_lines()
        assert await anext(lines) == ": live"
        for name in ("first", "second"):
            before = await http.get("/ui/jobs", headers=HX)
            assert f">{name}</a>" not in before.text
            await create_job(client, name=name)
            async with asyncio.timeout(10):
                while await anext(lines) != "event: change":
                    pass
            after = await http.get("/ui/jobs", headers=HX)
            assert f">{name}</a>" in after.text, name


def test_fire_lag_past_the_last_bucket_is_drawn_at_the_charts_top() -> None:
    from scheduler_svc.console.views import lag_points
    from scheduler_svc.models.stats import LAG_BUCKETS_MS, MinuteStats

    late = [0] * len(LAG_BUCKETS_MS)
    late[-1] = 5  # every first attempt over a minute late
    minute = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    stats = MinuteStats(
        minute=minute, succeeded=5, failed=0, skipped=0, cancelled=0, retried=0,
        lag_counts=tuple(late),
    )  # fmt: skip
    (point,) = lag_points([stats])
    assert point.p50_ms == point.p99_ms == LAG_BUCKETS_MS[-2]
    assert "inf" not in str(
        __import__("scheduler_svc.console.charts").console.charts.lag_lines([point])
    )
