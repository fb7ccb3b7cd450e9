"""Traces (scheduler_svc/tracing.py): request spans, attempt spans, the webhook's
traceparent, and nothing at all when traces are off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from scheduler_svc import tracing
from scheduler_svc.config import ConfigError, Settings, _traces_exporters
from scheduler_svc.engine.executor import Executor
from scheduler_svc.targets import Deliverer
from scheduler_svc.targets.http import WebhookClient
from scheduler_svc.targets.webhook import Webhook
from tests.helpers import running_app
from tests.replicas import eventually
from tests.test_executor import due_run, run_until_final
from tests.webhook_receiver import Reply, WebhookReceiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Traces on, into memory, for what the test builds from here on; off afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)
        provider.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    assert context.trace_flags.sampled
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def attrs(span: ReadableSpan) -> Mapping[str, Any]:
    assert span.attributes is not None
    return span.attributes


def make_executor(pool: Any, http: WebhookClient) -> Executor:
    return Executor(pool, Deliverer(http, allow_private=True), worker_id="w1")


# --- which exporters the variables ask for ------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp_proto_http",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ("otlp_proto_http",)),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": "otlp, Console"}, ("otlp_proto_http", "console")),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            ("otlp_proto_grpc",),
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            ("otlp_proto_http",),
        ),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ()),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, ()),
    ],
)
def test_traces_are_on_when_an_exporter_or_an_otlp_endpoint_is_set(
    environ: dict[str, str], exporters: tuple[str, ...]
) -> None:
    assert _traces_exporters(environ) == exporters
    assert Settings.from_env(environ, env_file=None).traces_exporters == exporters


def test_an_unknown_otlp_protocol_names_the_variable() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
        Settings.from_env(environ, env_file=None)


def test_otel_variables_in_dot_env_do_not_switch_traces_on(tmp_path: Path) -> None:
    # The SDK would not see them there, so half the configuration would be missing.
    env_file = tmp_path / ".env"
    env_file.write_text("OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318\n")
    assert Settings.from_env({}, env_file=env_file).traces_exporters == ()


def test_an_exporter_no_package_provides_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no span exporter 'nonesuch' is installed"):
        tracing.start(Settings(traces_exporters=("nonesuch",)))
    assert not tracing.enabled()


def test_without_the_extra_start_warns_and_stays_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules: `import opentelemetry` fails as if it were not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    tracing.start(Settings(traces_exporters=("otlp_proto_http",)))
    assert not tracing.enabled()
    assert tracing.request_middleware() == []


# --- off: the plain code paths, chosen once ------------------------------------------------


async def test_when_off_the_hot_paths_are_the_plain_ones(http: WebhookClient, pool: Any) -> None:
    assert not tracing.enabled()
    ex = make_executor(pool, http)
    assert ex._attempt == ex.execute  # not a wrapper that checks whether to trace
    webhook = Webhook(http, secret=None, allow_private=True, resolver=None)
    assert webhook._headers == webhook._request_headers
    assert tracing.request_middleware() == []


@pytest.mark.usefixtures("clean")
async def test_when_off_a_webhook_call_has_no_traceparent(
    pool: Any, http: WebhookClient, receiver: WebhookReceiver
) -> None:
    _, run = await due_run(pool, target={"type": "http", "url": receiver.url("/hook")})
    done = await run_until_final(pool, make_executor(pool, http), run.id)
    assert done.status == "succeeded"
    [request] = await receiver.wait_for(1)
    assert "traceparent" not in request.headers
    assert "tracestate" not in request.headers


# --- on: run attempts ----------------------------------------------------------------------


@pytest.mark.usefixtures("clean")
async def test_a_webhook_attempt_is_a_span_and_its_call_carries_it_as_traceparent(
    pool: Any, http: WebhookClient, receiver: WebhookReceiver, spans: InMemorySpanExporter
) -> None:
    # A traceparent of the target's own is replaced by the attempt's.
    target = {
        "type": "http",
        "url": receiver.url("/hook"),
        "headers": {"TraceParent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
    }
    job_id, run = await due_run(pool, target=target)
    done = await run_until_final(pool, make_executor(pool, http), run.id)
    assert done.status == "succeeded"

    [span] = named(spans, tracing.ATTEMPT_SPAN)
    assert span.kind == SpanKind.CLIENT
    assert span.parent is None  # each attempt starts a trace
    assert dict(attrs(span)) == {
        "scheduler.job_id": job_id,
        "scheduler.run_id": run.id,
        "scheduler.tick": run.scheduled_for.isoformat(),
        "scheduler.attempt": 1,
        "scheduler.trigger": "schedule",
        "scheduler.target": "http",
        "scheduler.worker": "w1",
        "scheduler.outcome": "succeeded",
    }
    assert span.status.status_code == StatusCode.UNSET
    [request] = await receiver.wait_for(1)
    assert request.headers.get_list("traceparent") == [traceparent_of(span)]


@pytest.mark.usefixtures("clean")
async def test_each_attempt_has_its_span_and_says_how_it_ended(
    pool: Any, http: WebhookClient, receiver: WebhookReceiver, spans: InMemorySpanExporter
) -> None:
    receiver.reply_with(Reply(503), Reply(200))
    target = {"type": "http", "url": receiver.url("/hook")}
    _, run = await due_run(pool, target=target, backoff_s=0.0)
    done = await run_until_final(pool, make_executor(pool, http), run.id)
    assert (done.status, done.attempt) == ("succeeded", 2)

    first, second = sorted(
        named(spans, tracing.ATTEMPT_SPAN), key=lambda s: attrs(s)["scheduler.attempt"]
    )
    assert (attrs(first)["scheduler.attempt"], attrs(first)["scheduler.outcome"]) == (1, "retrying")
    assert first.status.status_code == StatusCode.ERROR
    assert first.status.description == "HTTP 503 from 127.0.0.1"
    assert (attrs(second)["scheduler.attempt"], attrs(second)["scheduler.outcome"]) == (
        2,
        "succeeded",
    )
    requests = await receiver.wait_for(2)
    assert [r.headers["traceparent"] for r in requests] == [
        traceparent_of(first),
        traceparent_of(second),
    ]


@pytest.mark.usefixtures("clean")
async def test_a_failed_attempt_of_a_handler_is_an_internal_span_with_the_error(
    pool: Any, http: WebhookClient, spans: InMemorySpanExporter
) -> None:
    async def broken(_: Any) -> None:
        raise ValueError("no such report")

    ex = Executor(pool, Deliverer(http, handlers={"broken": broken}), worker_id="w1")
    _, run = await due_run(pool, target={"type": "handler", "name": "broken"}, max_attempts=1)
    done = await run_until_final(pool, ex, run.id)
    assert done.status == "failed"
    [span] = named(spans, tracing.ATTEMPT_SPAN)
    assert span.kind == SpanKind.INTERNAL
    assert attrs(span)["scheduler.outcome"] == "failed"
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == done.error


# --- on: requests --------------------------------------------------------------------------


async def test_a_request_is_a_server_span_named_by_its_route_with_its_status(
    pool: Any, settings: Settings, spans: InMemorySpanExporter
) -> None:
    async with running_app(settings, pool) as url, httpx.AsyncClient(base_url=url) as client:
        created = await client.post("/jobs", json={"name": "traced", "schedule": "@every 1h"})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        # An incoming traceparent makes the request's span part of the caller's trace.
        incoming = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        assert (await client.get(f"/jobs/{job_id}", headers=incoming)).status_code == 200
        assert (await client.get("/jobs/999999999")).status_code == 404
        assert (await client.get("/no/such/route")).status_code == 404

    async def four_spans() -> list[ReadableSpan] | None:
        finished = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
        return finished if len(finished) == 4 else None

    post, get, missing, unrouted = await eventually(four_spans, 5, "the request spans")
    for span, name, route, status in [
        (post, "POST /jobs", "/jobs", 201),
        (get, "GET /jobs/{job_id}", "/jobs/{job_id}", 200),
        (missing, "GET /jobs/{job_id}", "/jobs/{job_id}", 404),
    ]:
        assert (span.name, attrs(span)["http.route"], status_of(span)) == (name, route, status)
    # A path no route matches names no route: its span is named by the method alone.
    assert (unrouted.name, status_of(unrouted)) == ("GET", 404)
    assert "http.route" not in attrs(unrouted)

    assert get.parent is not None
    assert (f"{get.parent.trace_id:032x}", f"{get.parent.span_id:016x}") == (TRACE_ID, PARENT_ID)
    assert post.parent is None


def status_of(span: ReadableSpan) -> Any:
    """The response status, under either generation of the HTTP semantic conventions."""
    return attrs(span).get("http.response.status_code", attrs(span).get("http.status_code"))


# --- start(): the service's own switch ------------------------------------------------------

CONSOLE_SCRIPT = """
import asyncio
from datetime import UTC, datetime

from scheduler_svc import tracing
from scheduler_svc.config import Settings
from scheduler_svc.models import RunResult


class Run:
    id, job_id, attempt, trigger = 7, 3, 1, "manual"
    scheduled_for = datetime(2030, 1, 1, tzinfo=UTC)
    target = {"type": "log"}


async def execute(run):
    return RunResult(
        run_id=run.id, status="succeeded", delay_s=None, error=None, output=None, duration_ms=1.0
    )


tracing.start(Settings.from_env(env_file=None))
asyncio.run(tracing.traced_attempts(execute, "w9")(Run()))
"""


@pytest.mark.slow
def test_the_console_exporter_writes_one_json_line_per_span(tmp_path: Path) -> None:
    # A process of its own: start() installs the process's global tracer provider.
    script = tmp_path / "console.py"
    script.write_text(textwrap.dedent(CONSOLE_SCRIPT))
    environ = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "sched-test"}
    done = subprocess.run(
        [sys.executable, str(script)],
        env={**_plain_environ(), **environ},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # At exit the provider flushes its batch: the span, on one line.
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    [span] = [json.loads(line) for line in lines if '"run attempt"' in line]
    assert span["attributes"]["scheduler.run_id"] == 7
    assert span["attributes"]["scheduler.outcome"] == "succeeded"
    assert span["resource"]["attributes"]["service.name"] == "sched-test"


def _plain_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
