"""Logs never carry credentials: target headers, API keys, tokens, the signing secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_svc import logs
from scheduler_svc.config import Settings
from scheduler_svc.redact import Redactor
from scheduler_svc.targets import log_line
from tests.helpers import running_app
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
    redact = Redactor(secrets=[WEBHOOK_SECRET, "short"])
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


DSN_PASSWORD = "db-pa55word-never-logged"


class UnreachablePool(asyncpg.Pool):
    """A pool whose every query fails as an unreachable database does, naming its DSN
    (password included) in the error, as drivers do."""

    def __init__(self) -> None:  # no connections: nothing to set up
        pass

    async def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError(
            f"could not connect to postgresql://app:{DSN_PASSWORD}@db:5432/jobs"
        )

    fetchval = fetch = fetchrow = execute = _fail


async def test_a_request_is_one_line_with_its_id_and_lines_logged_while_handling_it_share_it(
    make_settings: Any,
) -> None:
    with captured_logs() as stream:
        async with (
            running_app(make_settings(), UnreachablePool()) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            ready = await http.get("/readyz", headers={"X-Request-Id": "trace-42"})
            jobs = await http.get("/jobs")
            sane = await http.get("/healthz", headers={"X-Request-Id": "two words <b>"})
            unknown = await http.get("/no-such-route", headers={"X-Request-Id": "trace-404"})
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if "request_id" in event:
            by_id.setdefault(event["request_id"], []).append(event)

    assert ready.status_code == 503 and ready.headers["x-request-id"] == "trace-42"
    # The failure is logged with its cause, inside the request, without the password.
    [not_ready, request] = by_id["trace-42"]
    assert not_ready["event"] == "not_ready" and not_ready["level"] == "warning"
    assert "could not connect to postgresql://app:***@db" in not_ready["error"]
    assert (request["event"], request["method"], request["path"], request["status"]) == (
        "request",
        "GET",
        "/readyz",
        503,
    )
    assert isinstance(request["duration_ms"], float)
    # A failure no handler expects: a 500 problem, logged once with its traceback.
    assert jobs.status_code == 500, jobs.text
    generated = jobs.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated), generated
    lines = by_id[generated]
    assert [e["event"] for e in lines][-1] == "request" and lines[-1]["status"] == 500
    failure = next(e for e in lines if e["level"] == "error")
    assert "ConnectionRefusedError: could not connect" in failure["exception"]
    # An id that is not a plain token is replaced, not echoed into headers and logs.
    assert len(sane.headers["x-request-id"]) == 32
    # A request no route takes has its line and its id too.
    assert unknown.status_code == 404 and unknown.headers["x-request-id"] == "trace-404"
    assert [(e["event"], e["status"]) for e in by_id["trace-404"]] == [("request", 404)]
    assert DSN_PASSWORD not in stream.getvalue()
    # Every line the requests caused carries an id: none was lost along the way.
    assert all("request_id" in e for e in events if e.get("event") == "request")


async def test_log_level_drops_lines_below_it(make_settings: Any) -> None:
    with captured_logs() as stream:
        logs.configure("json", "warning")
        structlog.configure(cache_logger_on_first_use=False)
        async with (
            running_app(make_settings(), UnreachablePool()) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            await http.get("/readyz")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in events if e.get("request_id")] == ["not_ready"]
    assert {e["level"] for e in events} <= {"warning", "error", "critical"}


def test_json_by_default_and_console_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, is_json in ((io.StringIO(), True), (Terminal(), False)):
        with captured_logs(), pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "stderr", stream)
            logs.configure(None, "info")
            structlog.configure(cache_logger_on_first_use=False)
            structlog.get_logger("t").info("hello", job_id=7)
        line = stream.getvalue().strip()
        if is_json:
            assert json.loads(line)["job_id"] == 7
        else:
            assert "hello" in line and "job_id" in line and not line.startswith("{")


async def test_a_500_litestar_raises_itself_is_logged_with_its_cause(make_settings: Any) -> None:
    # Litestar checks resolved dependencies against their annotations and answers a
    # mismatch with its own 500: the first pool below is not a pool.
    with captured_logs() as stream:
        async with (
            running_app(make_settings(), object()) as url,  # type: ignore[arg-type]
            httpx.AsyncClient(base_url=url) as http,
        ):
            response = await http.get("/readyz", headers={"X-Request-Id": "trace-500"})
    assert response.status_code == 500
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    [failure] = [e for e in events if e.get("level") == "error"]
    assert failure["event"] == "internal_error" and failure["request_id"] == "trace-500"
    assert "Unsupported type" in failure["exception"], failure["exception"]


def test_a_line_carries_the_service_bound_fields_and_what_user_code_bound() -> None:
    with captured_logs() as stream:
        with logs.bound(run_id=7, job_id=3), structlog.contextvars.bound_contextvars(order="A-1"):
            structlog.get_logger("handler").info("charged", amount=5)
        structlog.get_logger("handler").info("after")
        logs.flush()
    during, after = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert during.items() >= {"run_id": 7, "job_id": 3, "order": "A-1", "amount": 5}.items()
    assert not {"run_id", "job_id", "order"} & after.keys()


def test_the_run_line_written_directly_is_the_line_structlog_writes() -> None:
    tick = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    attributes = {"region": "eu", "password": "hunter2-hunter2", "note": TARGET_TOKEN}

    def one_line(direct: bool) -> dict[str, Any]:
        with captured_logs() as stream:
            # JSON at debug, structlog as configured: the direct path is the one taken.
            assert logs._hot_lines.direct
            assert structlog.get_config()["processors"] is logs._hot_lines.processors
            logs._hot_lines.direct = direct
            with logs.bound(request_id="r-1", token=COOKIE):
                log_line(3, "nightly", 7, tick, 1, "schedule", "acme", attributes, status="ok")
            logs.flush()
        [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
        assert line.pop("timestamp").endswith("Z")
        return dict(line)

    direct = one_line(True)
    assert direct == one_line(False)
    assert direct == {
        "request_id": "r-1",
        "token": "***",
        "job_id": 3,
        "run_id": 7,
        "tick": tick.isoformat(),
        "attempt": 1,
        "trigger": "schedule",
        "status": "ok",
        "job_name": "nightly",
        "tenant": "acme",
        "attributes": {"region": "eu", "password": "***", "note": "Bearer ***"},
        "event": "job_executed",
        "level": "info",
        "logger": "scheduler_svc.targets",
    }


async def test_the_request_line_written_directly_is_the_line_structlog_writes(
    make_settings: Any,
) -> None:
    # A path with an API key in it: the path is the client's text, and redacted.
    path = "/jobs/sch_abcdefgh_" + "k" * 43

    async def one_line(direct: bool) -> dict[str, Any]:
        with captured_logs() as stream:
            assert logs._hot_lines.direct
            logs._hot_lines.direct = direct
            async with (
                running_app(make_settings(), UnreachablePool()) as url,
                httpx.AsyncClient(base_url=url) as http,
            ):
                response = await http.get(path, headers={"X-Request-Id": "trace-7"})
            logs.flush()
        assert response.status_code == 404
        events = [json.loads(line) for line in stream.getvalue().splitlines()]
        [line] = [e for e in events if e.get("event") == "request"]
        assert line.pop("timestamp").endswith("Z")
        assert isinstance(line.pop("duration_ms"), float)
        return dict(line)

    direct = await one_line(True)
    assert direct == await one_line(False)
    assert direct == {
        "request_id": "trace-7",
        "method": "GET",
        "path": "/jobs/sch_abcdefgh_***",
        "status": 404,
        "client": "127.0.0.1",
        "event": "request",
        "level": "info",
        "logger": "scheduler_svc",
    }


def test_lines_from_threads_and_the_loop_are_all_written_once() -> None:
    stream = io.StringIO()
    sink = logs.LineSink(stream)

    async def from_the_loop() -> None:
        for i in range(2000):
            sink.write(f"loop {i}\n")
            if i % 100 == 0:
                await asyncio.sleep(0)

    def from_a_thread(name: str) -> None:
        for i in range(2000):
            sink.write(f"{name} {i}\n")

    async def main() -> None:
        threads = [asyncio.to_thread(from_a_thread, f"thread-{n}") for n in range(2)]
        await asyncio.gather(from_the_loop(), *threads)
        sink.flush()

    asyncio.run(main())
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(set(lines)) == 6000


# From a whole second to a microsecond before the next, and halves of a microsecond,
# which datetime rounds to even.
STAMPS = [
    1765112400.0,
    1765112400.000001,
    1765112400.0000005,
    1765112459.9999995,
    4102444799.999999,
]


@settings(max_examples=2000)
@given(st.floats(min_value=0, max_value=4102444800, allow_nan=False) | st.sampled_from(STAMPS))
def test_a_lines_timestamp_is_the_one_structlog_writes(now: float) -> None:
    expected = datetime.fromtimestamp(now, tz=UTC).isoformat().replace("+00:00", "Z")
    assert logs.utc_stamp(now) == expected
