"""Traces: what a run attempt and a request cost without the `otel` extra, with it
installed but off, and on (docs/tracing.md).

    python -m bench.tracing [--attempts 5000] [--requests 5000] [--rounds 3]

Each mode runs in a process of its own, the rounds of the modes in turn (A B C A B C …)
so that a machine that slows down does not favour one mode:

- without the extra: `opentelemetry` made unimportable (None in sys.modules) before
  scheduler_svc is imported, as if the extra were not installed;
- installed, off: no OTEL_* variable;
- on: OTEL_EXPORTER_OTLP_ENDPOINT set, so `tracing.start` installs the service's own
  provider (OTLP over HTTP, batched), exporting to a sink in the parent process (a run
  in which the SDK drops a span, its queue full, is an error, not a figure).

Attempts: an Executor with the webhook target carries out `--attempts` attempts of an
in-memory run, 32 at once (the default SCHEDULER_CONCURRENCY), against the bench's
receiver (bench/receiver.py) in the same process: `Executor._attempt`, the path of every
attempt the service runs (span, delivery, the webhook call and its headers, result),
without the database (the claim and the record are the same in every mode). Requests:
`GET /healthz` through the whole app (create_app, role worker: every middleware, no
lifespan, so no database) as ASGI calls, no socket. The figure is the CPU time of the
process per attempt or request: the receiver's side included (the same in every mode),
and with traces on the export of every span (force_flush before the clock stops). Logs
at warning, so that no line is written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.common import Result

MODES = ["without the extra", "installed, off", "on (OTLP/HTTP)"]
CONCURRENCY = 32


async def _attempts(count: int) -> dict[str, float]:
    """CPU and wall µs per attempt, `count` attempts, CONCURRENCY at once."""
    from bench.receiver import receiving
    from scheduler_svc.engine.executor import Executor
    from scheduler_svc.models import ClaimedRun
    from scheduler_svc.targets import Deliverer
    from scheduler_svc.targets.http import webhook_client

    async with (
        receiving() as (url, _),
        webhook_client(allow_private=True, max_connections=CONCURRENCY) as http,
    ):
        executor = Executor(None, Deliverer(http, allow_private=True), worker_id="bench")  # type: ignore[arg-type]
        now = datetime.now(UTC)

        def run(i: int) -> ClaimedRun:
            return ClaimedRun(
                id=i,
                job_id=i % 100,
                tenant="default",
                scheduled_for=now,
                trigger="schedule",
                attempt=1,
                started_at=now,
                lost_worker=None,
                name="bench",
                attributes={},
                target={"type": "http", "url": url},
                timeout_s=30,
                max_attempts=3,
                backoff_s=10,
                backoff_max_s=3600,
            )

        async def batch(start: int, size: int) -> None:
            results = await asyncio.gather(
                *(executor._attempt(run(i)) for i in range(start, start + size))
            )
            assert all(r.status == "succeeded" for r in results), results[0]

        await batch(0, CONCURRENCY * 4)  # warm-up: connections, caches
        return await _timed(count, lambda: _in_batches(batch, count))


async def _in_batches(batch: Any, count: int) -> None:
    for start in range(0, count, CONCURRENCY):
        await batch(start, min(CONCURRENCY, count - start))


async def _requests(count: int) -> dict[str, float]:
    """CPU and wall µs per GET /healthz through the app, one at a time."""
    from scheduler_svc.app import create_app
    from scheduler_svc.config import Settings

    app = create_app(Settings(role="worker", database_url="postgresql://unused"), pool=object())  # type: ignore[arg-type]
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:3000")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 3000),
        "state": {},
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    status: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    async def one() -> None:
        await app(dict(scope), receive, send)  # type: ignore[arg-type]

    for _ in range(200):  # warm-up
        await one()
    assert set(status) == {200}, set(status)

    async def all_of_them() -> None:
        for _ in range(count):
            await one()

    return await _timed(count, all_of_them)


async def _timed(count: int, work: Any) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    await work()
    # With traces on, the spans of the work are exported before the clock stops.
    if "opentelemetry.trace" in sys.modules:
        from opentelemetry import trace

        flush = getattr(trace.get_tracer_provider(), "force_flush", None)
        if flush is not None:
            await asyncio.to_thread(flush)
    return {
        "cpu_us": (time.process_time() - cpu) / count * 1e6,
        "wall_us": (time.perf_counter() - wall) / count * 1e6,
    }


async def _child(attempts: int, requests: int) -> dict[str, Any]:
    from scheduler_svc import logs, tracing
    from scheduler_svc.config import Settings

    logs.configure("json", "warning")
    # As the service does: on if the environment says so (the parent's sink), else off.
    tracing.start(Settings.from_env(env_file=None))
    return {
        "traced": tracing.enabled(),
        "attempts": await _attempts(attempts),
        "requests": await _requests(requests),
        "otel_imported": sys.modules.get("opentelemetry") is not None,
    }


class _Sink(BaseHTTPRequestHandler):
    """A collector that takes every OTLP export and answers 200, in the parent process:
    its CPU is the collector's, not the service's."""

    protocol_version = "HTTP/1.1"
    exports = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        _Sink.exports += 1

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _sink() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _run_child(mode: str, attempts: int, requests: int, sink: str) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if mode == MODES[2]:
        environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink  # the exporter adds /v1/traces
        # Room for every span of the run: back to back, attempts and requests come faster
        # than the SDK's thread exports them (the default queue, 2,048, overflows), and
        # a dropped span's export would be missing from the figure.
        environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(2 * (attempts + requests) + 1000)
    command = [sys.executable, "-m", "bench.tracing", "--child", mode]
    command += ["--attempts", str(attempts), "--requests", str(requests)]
    exports = _Sink.exports
    done = subprocess.run(
        command, env=environ, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode}: {done.stderr[-2000:]}")
    if "dropping Span" in done.stderr:
        # The figure would leave out the export of the spans dropped.
        raise RuntimeError(f"{mode}: the SDK dropped spans, its queue was full")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["exports"] = _Sink.exports - exports
    assert figures["traced"] == (mode == MODES[2]), figures
    assert figures["otel_imported"] == (mode != MODES[0]), figures
    return figures


def measure(attempts: int, requests: int, rounds: int) -> dict[str, Any]:
    """Every mode's figures, round by round."""
    by_mode: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with _sink() as sink:
        for _ in range(rounds):
            for mode in MODES:
                by_mode[mode].append(_run_child(mode, attempts, requests, sink))
    return {"attempts": attempts, "requests": requests, "rounds": by_mode}


def result(f: dict[str, Any]) -> Result:
    rows: list[list[object]] = []
    base: dict[str, float] = {}
    for mode, rounds in f["rounds"].items():
        row: list[object] = [mode]
        for path in ("attempts", "requests"):
            cpu = statistics.median(r[path]["cpu_us"] for r in rounds)
            wall = statistics.median(r[path]["wall_us"] for r in rounds)
            base.setdefault(path, cpu)
            each = " / ".join(f"{r[path]['cpu_us']:.1f}" for r in rounds)
            row += [f"{cpu:.1f} ({each})", f"{cpu - base[path]:+.1f}", f"{wall:.1f}"]
        rows.append(row)
    return Result(
        f"Traces: CPU µs per webhook attempt ({f['attempts']:,}, {CONCURRENCY} at once) and per "
        f"GET /healthz ({f['requests']:,}); median of {len(next(iter(f['rounds'].values())))} "
        "rounds (each round)",
        [
            "mode",
            "attempt CPU µs",
            "Δ",
            "attempt wall µs",
            "request CPU µs",
            "Δ",
            "request wall µs",
        ],
        rows,
        f,
    )


async def run(quick: bool) -> list[Result]:
    """The scenario as `python -m bench` runs its scenarios (not in its list: run the script)."""
    return [result(measure(1000 if quick else 5000, 1000 if quick else 5000, 1 if quick else 3))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attempts", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is None:
        print(result(measure(args.attempts, args.requests, args.rounds)).table())
        return
    if args.child == MODES[0]:
        # As if the extra were not installed: every `import opentelemetry…` fails.
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    import uvloop

    print(json.dumps(uvloop.run(_child(args.attempts, args.requests))))


if __name__ == "__main__":
    main()
