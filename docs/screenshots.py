"""Make the README's screenshots of the console: `python docs/screenshots.py`.

Runs a replica (role all) on a fresh database of the local PostgreSQL (as the benches
do: SCHEDULER_BENCH_DATABASE_URL, dropped afterwards), gives it a few jobs (log lines, a
webhook that fails, a paused one, tags), lets them run for `--seconds`, and takes two
pictures with Debian's Chromium through Playwright: the overview and a job's page. The
test run never calls this: it would rewrite tracked files.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_database, replicas  # noqa: E402
from tests.browser import launched_browser  # noqa: E402

IMAGES = ROOT / "docs" / "images"
JOBS = [
    {"name": "nightly-report", "schedule": "30 2 * * *", "timezone": "Europe/Paris",
     "tags": ["nightly", "billing"]},
    {"name": "heartbeat", "schedule": "@every 2s", "tags": ["ops"]},
    {"name": "sync-invoices", "schedule": "*/5 * * * * *", "tags": ["billing"]},
    {"name": "weekday-digest", "schedule": "30 9 * * 1-5", "timezone": "America/New_York"},
    {"name": "partner-webhook", "schedule": "@every 3s", "max_attempts": 1,
     "target": {"type": "http", "url": "http://127.0.0.1:9/hook"}},
    {"name": "quarterly-cleanup", "schedule": "0 4 1 1,4,7,10 *", "paused": True},
]  # fmt: skip


async def main(seconds: float) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    async with bench_database() as url:
        with (
            tempfile.TemporaryDirectory() as logs,
            replicas(url, 1, Path(logs), role="all", SCHEDULER_WEBHOOK_ALLOW_PRIVATE="true") as up,
        ):
            base = f"http://127.0.0.1:{up[0].port}"  # type: ignore[attr-defined]
            async with httpx.AsyncClient(base_url=base) as http:
                ids = [(await http.post("/jobs", json=job)).json()["id"] for job in JOBS]
            await asyncio.sleep(seconds)  # let runs happen: the pictures show them
            async with launched_browser() as browser:
                page = await browser.new_page(viewport={"width": 1280, "height": 960})
                await page.goto(f"{base}/ui")
                await page.screenshot(path=IMAGES / "console-overview.png", full_page=True)
                await page.goto(f"{base}/ui/jobs/{ids[1]}")
                await page.screenshot(path=IMAGES / "console-job.png", full_page=True)
    print(f"wrote {IMAGES / 'console-overview.png'} and {IMAGES / 'console-job.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="how long jobs run first")
    asyncio.run(main(parser.parse_args().seconds))
