"""The console's flows in a real browser: Debian's Chromium, headless, through Playwright.

One browser for the module, and one app per mode: open on loopback with a worker (jobs
run, so runs appear live), and one that requires API keys (login, read-only, tenants).
Every page the tests open asserts, as it closes, that the browser asked nothing of any
origin but the service (tests/browser.py). The tests skip, saying why, without Chromium.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from scheduler_svc.security import principals
from tests.browser import launched_browser, service_page
from tests.helpers import create_job, poll_json, running_app
from tests.principals import bearer, make_key
from tests.webhook_receiver import Reply, WebhookReceiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60), pytest.mark.usefixtures("clean")]

# How long a run may take to show on a page that is open: a tick of `@every 1s`, the
# engine's pass, and the console's batching of notifications, with room for a busy machine.
LIVE_TIMEOUT_MS = 15_000
WRITE_BUTTONS = ("Run now", "Pause", "Resume", "Delete", "Save", "Pause matching")


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with launched_browser() as launched:
        yield launched


@pytest.fixture(scope="module")
async def open_url(make_settings: Any, pool: asyncpg.Pool[Any]) -> AsyncIterator[str]:
    """The app open on loopback, with a worker: jobs run, webhooks may call the receiver."""
    settings = make_settings(
        role="all",
        worker_id="console-browser",
        webhook_allow_private=True,
        shutdown_grace_s=1.0,
    )
    async with running_app(settings, pool) as url:
        yield url


@pytest.fixture(scope="module")
async def closed_url(make_settings: Any, pool: asyncpg.Pool[Any]) -> AsyncIterator[str]:
    """The app that requires an API key, on loopback too."""
    settings = make_settings(api_keys_required=True, worker_id="console-browser-closed")
    async with running_app(settings, pool) as url:
        yield url


@pytest.fixture
async def page(browser: Browser, open_url: str) -> AsyncIterator[Page]:
    async with service_page(browser, open_url) as opened:
        yield opened


@pytest.fixture
async def closed_page(browser: Browser, closed_url: str) -> AsyncIterator[Page]:
    async with service_page(browser, closed_url) as opened:
        yield opened


@pytest.fixture
async def api(open_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the open app's API."""
    async with httpx.AsyncClient(base_url=open_url, timeout=10) as http:
        yield http


def run_ids_js() -> str:
    """A script listing the run ids of the page's runs table."""
    return "[...document.querySelectorAll('#runs [data-run-id]')].map(r => r.dataset.runId)"


async def sign_in(page: Page, key: str) -> None:
    """Log in on the console's login page with `key`."""
    await page.goto("/ui/login")
    await page.get_by_label("API key", exact=True).fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()


async def test_a_job_created_through_the_form_shows_its_first_run_live(
    page: Page, api: httpx.AsyncClient
) -> None:
    await page.goto("/ui/jobs")
    await page.get_by_role("link", name="New job").click()
    await expect(page).to_have_url(re.compile(r"/ui/jobs/new$"))
    await page.get_by_label("Name", exact=True).fill("heartbeat")
    await page.get_by_label("Schedule", exact=True).fill("@every 1s")
    await page.get_by_label("Target type", exact=True).select_option("log")
    await page.get_by_role("button", name="Create job").click()
    await expect(page).to_have_url(re.compile(r"/ui/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    job = (await api.get(f"/jobs/{job_id}")).json()
    assert (job["name"], job["schedule"]) == ("heartbeat", "@every 1s")

    # From here on the page must change by itself: no navigation, the window's state kept.
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    await page.evaluate("window.consoleMarker = 'still here'")
    shown_at_load = await page.evaluate(run_ids_js())
    # The first run, unless the page was slower than the first tick: then the next one.
    await page.wait_for_function(
        f"known => {run_ids_js()}.some(id => !known.includes(id))",
        arg=shown_at_load,
        timeout=LIVE_TIMEOUT_MS,
    )
    assert navigations == []
    assert await page.evaluate("window.consoleMarker") == "still here"
    new = [i for i in await page.evaluate(run_ids_js()) if i not in shown_at_load]
    run = (await api.get(f"/runs/{new[0]}")).json()
    assert run["job_id"] == job_id


async def test_a_bad_cron_shows_the_apis_error_next_to_the_schedule(
    page: Page, api: httpx.AsyncClient
) -> None:
    answer = await api.post("/jobs", json={"name": "bad", "schedule": "61 * * * *"})
    assert answer.status_code in (400, 422), answer.text
    messages = [e["message"] for e in answer.json()["errors"] if e["field"] == "schedule"]
    assert messages, answer.text

    await page.goto("/ui/jobs/new")
    await page.get_by_label("Name", exact=True).fill("bad")
    await page.get_by_label("Schedule", exact=True).fill("61 * * * *")
    await page.get_by_role("button", name="Create job").click()

    schedule = page.get_by_label("Schedule", exact=True)
    await expect(schedule).to_have_attribute("aria-invalid", "true")
    await expect(schedule).to_have_value("61 * * * *")
    error = page.locator("div.field").filter(has=schedule).locator(".field-error")
    await expect(error).to_have_count(1)
    await expect(error).to_be_visible()
    await expect(error).to_contain_text(messages[0])
    error_id = await error.get_attribute("id")
    described_by = await schedule.get_attribute("aria-describedby") or ""
    assert error_id and error_id in described_by.split()
    # The other fields carry no error, and nothing was created.
    await expect(page.get_by_label("Name", exact=True)).not_to_have_attribute(
        "aria-invalid", "true"
    )
    assert (await api.get("/jobs")).json() == []


async def test_bulk_pause_of_a_tag_after_the_count_confirmation(
    page: Page, api: httpx.AsyncClient
) -> None:
    nightly = [await create_job(api, name=f"nightly {i}", tags=["nightly"]) for i in range(3)]
    other = await create_job(api, name="daytime", tags=["daily"])

    await page.goto("/ui/jobs")
    await page.get_by_label("Tag", exact=True).fill("nightly")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"[?&]tag=nightly(&|$)"))
    await page.get_by_role("button", name="Pause matching").click()
    confirm = page.get_by_role("button", name="Pause 3 jobs", exact=True)
    await expect(confirm).to_be_visible()
    # Asking is not doing: nothing is paused before the confirmation.
    for job in [*nightly, other]:
        assert (await api.get(f"/jobs/{job['id']}")).json()["status"] == "active"
    await confirm.click()

    for job in nightly:
        await poll_json(api, f"/jobs/{job['id']}", lambda body: body["status"] == "paused")
    assert (await api.get(f"/jobs/{other['id']}")).json()["status"] == "active"
    paused = (await api.get("/jobs", params={"status": "paused"})).json()
    assert sorted(j["id"] for j in paused) == sorted(j["id"] for j in nightly)


async def test_cancel_a_running_webhook_run(
    page: Page, api: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    receiver.reply_on("/hold", Reply(hold=True))  # the call hangs until the test ends
    job = await create_job(
        api, name="hangs", paused=True, target={"type": "http", "url": receiver.url("/hold")}
    )
    triggered = await api.post(f"/jobs/{job['id']}/trigger")
    assert triggered.status_code == 202, triggered.text
    run_id = triggered.json()["id"]
    await receiver.wait_for(1, timeout=10)
    await poll_json(api, f"/runs/{run_id}", lambda body: body["status"] == "running")

    await page.goto(f"/ui/runs/{run_id}")
    await expect(page.locator("#timeline")).to_be_visible()
    status = page.locator("span.status[data-status]").first
    await expect(status).to_have_attribute("data-status", "running")
    await page.get_by_role("button", name="Cancel run").click()
    await expect(status).to_have_attribute("data-status", "cancelled", timeout=LIVE_TIMEOUT_MS)

    run = await poll_json(api, f"/runs/{run_id}", lambda body: body["status"] != "running")
    assert run["status"] == "cancelled"
    assert len(receiver.requests) == 1  # stopped, never called again


async def test_a_read_only_key_sees_no_write_control_and_cannot_write(
    closed_page: Page, closed_url: str, pool: asyncpg.Pool[Any]
) -> None:
    page = closed_page
    writer = await make_key(pool, "acme")
    reader = await make_key(pool, "acme", principals.READ)
    async with httpx.AsyncClient(base_url=closed_url, headers=bearer(writer), timeout=10) as http:
        job = await create_job(http, name="quarterly report")

        # Without a session the console shows nothing of the tenant's.
        await page.goto("/ui/jobs")
        assert "quarterly report" not in await page.content()

        await sign_in(page, reader)
        await page.goto("/ui/jobs")
        await expect(page.get_by_text("quarterly report")).to_be_visible()
        await expect(page.get_by_role("link", name="New job")).to_have_count(0)
        for name in ("Pause matching", "Resume matching"):
            await expect(page.get_by_role("button", name=name, exact=True)).to_have_count(0)
        await page.goto(f"/ui/jobs/{job['id']}")
        await expect(page.get_by_text("quarterly report").first).to_be_visible()
        for name in WRITE_BUTTONS:
            await expect(page.get_by_role("button", name=name, exact=True)).to_have_count(0)

        # The server refuses the writes too, though the request carries a valid token.
        token = await page.locator("input[name=csrf]").first.get_attribute("value")
        assert token
        for path in (f"/ui/jobs/{job['id']}/pause", f"/ui/jobs/{job['id']}/trigger", "/ui/jobs"):
            status = await page.evaluate(
                """([path, csrf]) => fetch(path, {
                    method: "POST", body: new URLSearchParams({csrf, name: "x"}),
                    redirect: "manual"}).then(r => r.status)""",
                [path, token],
            )
            assert status == 403, path
        assert (await http.get(f"/jobs/{job['id']}")).json()["status"] == "active"
        assert len((await http.get("/jobs")).json()) == 1
        assert (await http.get(f"/jobs/{job['id']}/runs")).json() == []

    # That token was valid: the same one signs out.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("API key", exact=True)).to_be_visible()
    # The controls were missing for the scope, not for the mode: a writer has them.
    await sign_in(page, writer)
    await page.goto(f"/ui/jobs/{job['id']}")
    for name in ("Run now", "Pause", "Delete"):
        await expect(page.get_by_role("button", name=name, exact=True)).to_be_visible()


async def test_another_tenants_job_and_run_are_not_found(
    closed_page: Page, closed_url: str, pool: asyncpg.Pool[Any]
) -> None:
    page = closed_page
    key_a = await make_key(pool, "tenant-a")
    key_b = await make_key(pool, "tenant-b")
    async with httpx.AsyncClient(base_url=closed_url, headers=bearer(key_a), timeout=10) as http:
        job = await create_job(http, name="tenant a secret job", paused=True)
        triggered = await http.post(f"/jobs/{job['id']}/trigger")
        assert triggered.status_code == 202, triggered.text
        run_id = triggered.json()["id"]

    await sign_in(page, key_b)
    for path in (f"/ui/jobs/{job['id']}", f"/ui/runs/{run_id}"):
        response = await page.goto(path)
        assert response is not None and response.status == 404, path
        await expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        assert "tenant a secret job" not in await page.content()
    await page.goto("/ui/jobs")
    await expect(page.get_by_role("link", name="Jobs")).to_be_visible()
    assert "tenant a secret job" not in await page.content()


async def test_a_request_to_another_origin_fails_the_page(browser: Browser, open_url: str) -> None:
    # The check every test above relies on, shown to catch what it is there for.
    async def beacon_elsewhere() -> None:
        async with service_page(browser, open_url) as page:
            await page.goto("/")
            async with page.expect_event("requestfailed"):
                # Nothing listens there: the request fails at once, without any network.
                await page.evaluate("new Image().src = 'http://127.0.0.2:9/beacon.png'")

    with pytest.raises(AssertionError, match="origins other than"):
        await beacon_elsewhere()


async def test_a_hidden_tab_closes_its_stream_and_catches_up_when_shown(
    page: Page, api: httpx.AsyncClient
) -> None:
    job = await create_job(api, name="ticking", schedule="@every 1s")
    fragment = f"/ui/jobs/{job['id']}"
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    await page.goto(fragment)
    # Live: a fragment refresh follows the job's runs.
    await page.wait_for_function(f"() => {run_ids_js()}.length > 0", timeout=LIVE_TIMEOUT_MS)
    await page.evaluate(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    hidden_at = len(asked)
    shown = set(await page.evaluate(run_ids_js()))
    # Three more runs happen while the tab is hidden: none of them is fetched.
    await poll_json(
        api,
        f"/jobs/{job['id']}/runs",
        lambda runs: len({str(r["id"]) for r in runs} - shown) >= 3,
    )
    assert [url for url in asked[hidden_at:] if fragment in url or "/ui/events" in url] == []
    await page.evaluate(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    # Shown again: the stream reopens and the page catches up at once.
    await page.wait_for_function(
        f"known => {run_ids_js()}.filter(id => !known.includes(id)).length >= 3",
        arg=list(shown),
        timeout=LIVE_TIMEOUT_MS,
    )
    assert any("/ui/events" in url for url in asked[hidden_at:])
