"""Traces (SPEC §8): an OpenTelemetry span per HTTP request and per run attempt, and the
W3C `traceparent` header on webhook calls, with the optional `otel` extra.

Whether to trace is decided once per process. `start(settings)` (create_app) switches
traces on when the settings name span exporters (OTEL_TRACES_EXPORTER, or an OTLP
endpoint: config._traces_exporters) and the extra is installed; tests and the bench
trace into a provider of their own with `use(provider)`. The app, the executor and the
webhook ask once, when they are built, and keep their plain code when traces are off:
without the extra, or with it but off, no request or attempt pays even a check, and
nothing here imports opentelemetry.

May import `config` and `models`; imported by `app`, `engine.executor` and
`targets.webhook` (docs/tracing.md).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, ParamSpec

import structlog

from scheduler_svc.config import ConfigError, Settings
from scheduler_svc.models import ClaimedRun, RunResult

if TYPE_CHECKING:
    from litestar.middleware import DefineMiddleware
    from litestar.types import Receive, Scope, Send
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer, TracerProvider

log = structlog.get_logger("scheduler_svc.tracing")

P = ParamSpec("P")
Headers = list[tuple[str, str]]
Attempt = Callable[[ClaimedRun], Awaitable[RunResult]]

SCOPE = "scheduler_svc"
ATTEMPT_SPAN = "run attempt"
# The run's state after the attempt, as the span's scheduler.outcome says it.
OUTCOMES = {"succeeded": "succeeded", "pending": "retrying", "failed": "failed"}
_EXPORTER_GROUP = "opentelemetry_traces_exporter"
_INSTALL = "pip install 'scheduler-svc[otel]'"

# Set once by start() (or use(), for tests and the bench); None: traces off.
_provider: TracerProvider | None = None
_tracer: Tracer | None = None


def start(settings: Settings) -> None:
    """Switch traces on if `settings` ask for them and the `otel` extra is installed.

    Once per process: after traces are on, later calls change nothing. A missing extra is
    a warning, not a failure (the service runs untraced); an exporter name that no
    installed package provides is a ConfigError.
    """
    if not settings.traces_exporters or _provider is not None:
        return
    try:
        provider = _global_provider(settings.traces_exporters)
    except ImportError as exc:
        log.warning(
            "traces_unavailable",
            reason=f"the otel extra is not installed ({exc.name or exc})",
            exporters=list(settings.traces_exporters),
            install=_INSTALL,
        )
        return
    use(provider)
    log.info("traces_on", exporters=list(settings.traces_exporters))


def use(provider: TracerProvider | None) -> None:
    """Trace into `provider` from now on (None: off). For tests and the bench; the service
    calls `start`. Only what is built afterwards (apps, executors, webhooks) sees it."""
    global _provider, _tracer
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer(SCOPE, version("scheduler-svc"))


def enabled() -> bool:
    """Whether what is built now traces."""
    return _tracer is not None


def traced_attempts(execute: Attempt, worker_id: str) -> Attempt:
    """`execute` with a span around each attempt when traces are on; `execute` itself
    when off. The span is current during the attempt, so a webhook call's traceparent
    names it; it ends with the attempt's outcome."""
    tracer = _tracer
    if tracer is None:
        return execute
    from opentelemetry.context import attach, detach
    from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

    async def traced(run: ClaimedRun) -> RunResult:
        # A webhook call is a call out to another service: CLIENT, so that backends draw
        # the edge to the receiver's span; the other targets run in process.
        kind = SpanKind.CLIENT if run.target.get("type") == "http" else SpanKind.INTERNAL
        attributes: dict[str, str | int] = {
            "scheduler.job_id": run.job_id,
            "scheduler.run_id": run.id,
            "scheduler.tick": run.scheduled_for.isoformat(),
            "scheduler.attempt": run.attempt,
            "scheduler.trigger": run.trigger,
            "scheduler.target": str(run.target.get("type")),
            "scheduler.worker": worker_id,
        }
        # start_span and attach, not start_as_current_span: its context managers took
        # as long again as the span itself (bench/tracing.py).
        span = tracer.start_span(ATTEMPT_SPAN, kind=kind, attributes=attributes)
        token = attach(set_span_in_context(span))
        try:
            result = await execute(run)
        except asyncio.CancelledError:
            # Cancelled (a drain at shutdown, or a cancel by the API): not a failure.
            span.set_attribute("scheduler.outcome", "cancelled")
            raise
        except Exception as exc:  # a bug: execute turns the target's failures into results
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        else:
            span.set_attribute("scheduler.outcome", OUTCOMES.get(result.status, result.status))
            if result.error is not None:
                span.set_status(Status(StatusCode.ERROR, result.error))
            return result
        finally:
            detach(token)
            span.end()

    return traced


def with_traceparent(build: Callable[P, Headers]) -> Callable[P, Headers]:
    """`build` (a webhook call's headers) plus the current span's W3C `traceparent` (and
    `tracestate`) when traces are on, in place of any the target sets; `build` itself
    when off."""
    if _tracer is None:
        return build
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    fields = propagator.fields

    def traced(*args: P.args, **kwargs: P.kwargs) -> Headers:
        headers = build(*args, **kwargs)
        carrier: dict[str, str] = {}
        propagator.inject(carrier)
        if not carrier:  # no span is current: nothing to say
            return headers
        return [(n, v) for n, v in headers if n.lower() not in fields] + list(carrier.items())

    return traced


def request_middleware() -> list[DefineMiddleware]:
    """Litestar's OpenTelemetry middleware when traces are on (a server span per request,
    named by its route, with its status); none when off. Litestar takes it out of the
    app's middleware list and runs it outermost, around its exception handling, so
    every request has its span, whatever answers it."""
    if _provider is None:
        return []
    from litestar.plugins.opentelemetry import (
        OpenTelemetryConfig,
        OpenTelemetryInstrumentationMiddleware,
    )
    from opentelemetry.trace import get_current_span

    class RouteNamed(OpenTelemetryInstrumentationMiddleware):
        """Names the request's span by its route once routing has found one: the route
        is known only after the span has started (`GET /jobs/{job_id}`, not the path
        with its id, which would make a span name per job)."""

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            async def send_named(message: Any) -> None:
                if message["type"] == "http.response.start":
                    template = scope.get("path_template")
                    span = get_current_span()
                    if template and span.is_recording():
                        span.set_attribute("http.route", template)
                        span.update_name(f"{scope.get('method', '')} {template}".strip())
                await send(message)

            await super().__call__(scope, receive, send_named)

    config = OpenTelemetryConfig(
        tracer_provider=_provider,
        # Before routing only the method is known (the span name of a request that
        # matches no route, as the semantic conventions have it).
        scope_span_details_extractor=lambda scope: (str(scope.get("method") or "HTTP"), {}),
        # One span per request: the ASGI receive and send events as spans of their own
        # would triple the cost and say little.
        exclude_spans=["receive", "send"],
        middleware_class=RouteNamed,
    )
    # Not OpenTelemetryPlugin(config): its middleware ignores config.middleware_class.
    return [config.middleware]


def _global_provider(exporters: tuple[str, ...]) -> TracerProvider:
    """The process's tracer provider: one another agent installed (opentelemetry-instrument),
    else a new SDK provider exporting to `exporters` in batches, made the global one."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        return current
    made = [_exporter(name) for name in exporters]  # a ConfigError before anything is set up
    resource = Resource.create({SERVICE_VERSION: version("scheduler-svc")})
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win; without them, our name.
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "scheduler-svc"}))
    provider = SdkTracerProvider(resource=resource)
    for exporter in made:
        # Spans go out from the processor's thread, in batches, never from the loop.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def _exporter(name: str) -> SpanExporter:
    """The span exporter of entry point `name` (OTEL_TRACES_EXPORTER's names)."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # One line per span: in JSON mode every line the process writes is one JSON object.
        return ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
    found = importlib.metadata.entry_points(group=_EXPORTER_GROUP, name=name)
    if not found:
        installed = sorted(ep.name for ep in importlib.metadata.entry_points(group=_EXPORTER_GROUP))
        hint = "; OTLP over gRPC needs opentelemetry-exporter-otlp-proto-grpc installed"
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: no span exporter {name!r} is installed "
            f"(installed: {', '.join(installed) or 'none'})"
            + (hint if name == "otlp_proto_grpc" else "")
        )
    exporter_class: Callable[[], SpanExporter] = next(iter(found)).load()
    return exporter_class()
