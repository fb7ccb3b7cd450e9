"""Helpers of the browser tests: Debian's Chromium, driven through Playwright.

The browser is the one the system's package manager installed (`chromium`, or
`chromium-headless-shell`), or the one SCHEDULER_TEST_CHROMIUM names; Playwright's own
browser download is never used. A test without one skips, saying why (.ci/run installs
the Debian package when it can).

    async with launched_browser() as browser, service_page(browser, url) as page:
        await page.goto("/ui")

Every request the page makes is recorded, and leaving `service_page` asserts that each went
to the service's own origin: the console works with no internet, and a page that asked
any other host (a CDN, a font, an analytics beacon) would not.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, ConsoleMessage, Error, Page, async_playwright

CHROMIUM_ENV = "SCHEDULER_TEST_CHROMIUM"
# Debian's packages: the full browser, and the smaller headless-only build.
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-headless-shell")
# A step that waits longer than this has failed; Playwright's own default is 30 s, which
# would let one missing element take half of a test's time limit.
STEP_TIMEOUT_MS = 10_000


def chromium_path() -> str | None:
    """The Chromium to drive: SCHEDULER_TEST_CHROMIUM, else Debian's; None without one."""
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        return named if os.access(named, os.X_OK) else None
    for path in CHROMIUM_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium-headless-shell") or shutil.which("chromium")


def require_chromium() -> str:
    """The Chromium to drive, or skip the test, saying why."""
    path = chromium_path()
    if path is None:
        named = os.environ.get(CHROMIUM_ENV)
        where = f"{CHROMIUM_ENV}={named} is not executable" if named else "no Chromium"
        pytest.skip(
            f"{where}: install Debian's `chromium` (apt-get install chromium), or name one"
            f" in {CHROMIUM_ENV}; the tests never download a browser"
        )
    return path


@asynccontextmanager
async def launched_browser() -> AsyncIterator[Browser]:
    """Headless Chromium through Playwright; closed on the way out."""
    path = require_chromium()
    # Chromium refuses to start its sandbox as root (a CI container); elsewhere it keeps it.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path, headless=True, args=args)
        try:
            yield browser
        finally:
            await browser.close()


def origin(url: str) -> str:
    """scheme://host:port of `url`, the port spelled out even when it is the default."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(parts.scheme)
    return f"{parts.scheme}://{parts.hostname}:{port}"


@dataclass
class Traffic:
    """What the browser did while a page of the service was open."""

    requests: list[str] = field(default_factory=list)  # every URL asked for, in order
    problems: list[str] = field(default_factory=list)  # script errors and CSP refusals

    def on_console(self, message: ConsoleMessage) -> None:
        # A blocked script or style is the page broken by its own CSP (no 'unsafe-inline').
        if message.type == "error" and "Content Security Policy" in message.text:
            self.problems.append(f"console: {message.text}")

    def on_page_error(self, error: Error) -> None:
        self.problems.append(f"script error: {error.message}")


@asynccontextmanager
async def service_page(browser: Browser, base_url: str) -> AsyncIterator[Page]:
    """A page in a fresh context (no cookies) whose relative URLs go to `base_url`.

    On the way out, unless the test failed already: every request the browser made went
    to `base_url`'s origin, and no page met a script error or a CSP refusal.
    """
    context = await browser.new_context(base_url=base_url)
    context.set_default_timeout(STEP_TIMEOUT_MS)
    traffic = Traffic()
    # On the context, not the page: requests of every page, frame and worker it opens.
    context.on("request", lambda request: traffic.requests.append(request.url))
    context.on("console", traffic.on_console)
    context.on("weberror", lambda web_error: traffic.on_page_error(web_error.error))
    try:
        page = await context.new_page()
        page.on("websocket", lambda socket: traffic.requests.append(socket.url))
        yield page
        foreign = [url for url in traffic.requests if origin(url) != origin(base_url)]
        assert traffic.requests, "the browser made no request at all"
        assert not foreign, f"requests to origins other than {base_url}: {foreign}"
        assert not traffic.problems, traffic.problems
    finally:
        await context.close()
