"""Logs never carry credentials: target headers, API keys, tokens, the signing secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import httpx
import pytest
import structlog

from scheduler_svc import logs
from scheduler_svc.config import Settings
from tests.conftest import running_app
from tests.principals import bearer, make_key
from tests.webhook_receiver import Reply, serve_receiver

WEBHOOK_SECRET = "whsec-0123456789abcdef-do-not-log"
TARGET_TOKEN = "Bearer target-credential-s3cret-value"
COOKIE = "session=cookie-s3cret-value"


@contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Everything the service logs, as `scheduler-svc serve` would write it (JSON lines).

    Both of logs.configure's paths write to sys.stderr as it is at configure time (and,
    for structlog's, when a logger is first used), so the stream stands in for it. Used
    inside the test body: pytest resets sys.stderr between a fixture's setup and the test.
    """
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, structlog.get_config())
    access = logging.getLogger("uvicorn.access").disabled
    stream = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stderr", stream)
        logs.configure("json", "debug", secrets=(WEBHOOK_SECRET,))
        # Cached loggers would keep writing here after the test (and escape later
        # tests' structlog.testing.capture_logs).
        structlog.configure(cache_logger_on_first_use=False)
        try:
            yield stream
        finally:
            root.handlers[:], level, config = saved
            root.setLevel(level)
            structlog.configure(**config)
            logging.captureWarnings(False)
            logging.getLogger("uvicorn.access").disabled = access


def test_redactor_masks_credentials_wherever_they_are() -> None:
    redact = logs.Redactor(secrets=[WEBHOOK_SECRET, "short"])
    key = "sch_abcd1234_" + "x" * 43
    event = redact(
        None,
        "info",
        {
            "event": f"calling with {TARGET_TOKEN} and key {key}",
            "headers": {"Authorization": TARGET_TOKEN, "X-Api-Key": "k", "X-Team": "data"},
            "target": {"headers": [{"Cookie": COOKIE}]},
            "exception": f"Traceback ...\nValueError: bad value {WEBHOOK_SECRET!r}",
            "jwt_secret": "anything",
            "status": 200,
            "note": "a short word stays",
            "dsn": "postgresql://app:db-pa55word@db:5432/jobs",
        },
    )
    text = json.dumps(event)
    assert event["dsn"] == "postgresql://app:***@db:5432/jobs"
    for secret in ("target-credential-s3cret-value", "cookie-s3cret", WEBHOOK_SECRET, "x" * 43):
        assert secret not in text
    assert event["headers"]["X-Team"] == "data"
    assert event["headers"]["Authorization"] == "***"
    assert "sch_abcd1234_***" in event["event"]
    assert event["status"] == 200 and event["note"] == "a short word stays"


async def test_no_secret_reaches_the_log_of_a_request(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    key = await make_key(pool, "acme")
    target = {
        "type": "http",
        "url": "https://example.com/hook",
        "headers": {"Authorization": TARGET_TOKEN, "Cookie": COOKIE, "X-Team": "data"},
    }
    settings = make_settings(webhook_secret=WEBHOOK_SECRET)
    with captured_logs() as stream:
        await make_requests(settings, pool, key, target)
    output = stream.getvalue()
    events = [json.loads(line) for line in output.splitlines()]
    requests = [e for e in events if e.get("event") == "request"]
    assert len(requests) >= 6, output  # the capture did see the service's lines
    for secret in (key, key[13:], "target-credential-s3cret", "cookie-s3cret", WEBHOOK_SECRET):
        assert secret not in output


async def make_requests(settings: Any, pool: Any, key: str, target: dict[str, Any]) -> None:
    """A create, change and read with credentials in the target, and refused requests."""
    async with running_app(settings, pool) as url, httpx.AsyncClient(base_url=url) as http:
        created = await http.post(
            "/jobs",
            json={"name": "j", "schedule": "@hourly", "target": target},
            headers=bearer(key),
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        await http.patch(f"/jobs/{job_id}", json={"target": target}, headers=bearer(key))
        await http.get(f"/jobs/{job_id}", headers=bearer(key))
        # Refused and invalid requests carrying the same secrets.
        bad_target = {**target, "url": "ftp://example.com"}
        await http.post("/jobs", json={"name": "j", "schedule": "x", "target": bad_target})
        await http.get("/jobs", headers=bearer(key[:-2] + "zz"))
        await http.get("/jobs", headers={"Authorization": TARGET_TOKEN, "Cookie": COOKIE})


def test_settings_never_show_their_credentials() -> None:
    settings = Settings(
        database_url="postgresql://app:db-pa55word@db/jobs",
        jwt_secret="jwt-secret-of-at-least-thirty-two-bytes",
        webhook_secret=WEBHOOK_SECRET,
    )
    for secret in ("db-pa55word", "jwt-secret", WEBHOOK_SECRET):
        assert secret not in repr(settings)


async def test_no_secret_reaches_the_log_of_a_delivery(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    # The executor's side: a signed webhook with credential headers, failing loudly.
    settings = make_settings(role="all", webhook_secret=WEBHOOK_SECRET, webhook_allow_private=True)
    with captured_logs() as stream:
        async with (
            serve_receiver() as receiver,
            running_app(settings, pool) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            receiver.reply_with(Reply(500, body=f"echo: {TARGET_TOKEN}".encode()))
            target = {
                "type": "http",
                "url": receiver.url("/hook"),
                "headers": {"Authorization": TARGET_TOKEN, "Cookie": COOKIE},
            }
            job = await http.post(
                "/jobs", json={"name": "j", "schedule": "@yearly", "target": target}
            )
            assert job.status_code == 201, job.text
            await http.post(f"/jobs/{job.json()['id']}/trigger")
            (delivery,) = await receiver.wait_for(1, timeout=10)
            deadline = asyncio.get_running_loop().time() + 10
            while '"run_attempted"' not in stream.getvalue():  # the attempt's own line
                assert asyncio.get_running_loop().time() < deadline, stream.getvalue()
                await asyncio.sleep(0.02)
    assert delivery.headers["authorization"] == TARGET_TOKEN  # delivered with the credential
    assert delivery.headers["x-scheduler-signature"].startswith("t=")  # and signed
    output = stream.getvalue()
    for secret in ("target-credential-s3cret", "cookie-s3cret", WEBHOOK_SECRET):
        assert secret not in output
