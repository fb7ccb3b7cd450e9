"""structlog set up once: JSON lines (console on a TTY), the ASGI server's lines included."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TextIO

import msgspec
import structlog

from scheduler_svc.config import LogFormat
from scheduler_svc.redact import OWN_FIELDS, Redactor

if TYPE_CHECKING:  # litestar itself is imported only by what serves HTTP: the CLI's
    # other commands start without it.
    from litestar.types import ASGIApp, Message, Receive, Scope, Send


def _json(event: Any, **_: Any) -> str:
    return msgspec.json.encode(event, enc_hook=str).decode()


class LineSink:
    """Where log lines go: stderr as it was at configure time, one event-loop turn at a time.

    Writing and flushing stderr for each line is a system call per line; at thousands
    of runs a second that costs more than the runs themselves. Lines are kept until
    the running loop's current turn ends (or `flush()`), then written in one call;
    without a running loop they are written at once. Both logging paths write here,
    so lines keep their order.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._flush_scheduled = False
        # Threads log too (the server's, the standard library's); they write at once.
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            self._lines.append(text)
            if self._flush_scheduled:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                loop.call_soon(self.flush)
                self._flush_scheduled = True
                return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            self._flush_scheduled = False
            lines, self._lines = self._lines, []
            if lines:
                self._stream.write("".join(lines))
                self._stream.flush()


_sink = LineSink(sys.stderr)

# The fields every line logged in this context carries (a request's id, a run's ids),
# in one context variable. structlog's contextvars keep one variable per field, and
# reading them copies the whole context and walks every variable in it: per line, at
# thousands of runs a second, that cost more than the rest of the line.
_context: ContextVar[Mapping[str, Any]] = ContextVar(
    "scheduler_svc_log_context", default=MappingProxyType({})
)


def bind(**fields: Any) -> Token[Mapping[str, Any]]:
    """Add `fields` to every line logged in this context until `unbind(token)`."""
    return _context.set({**_context.get(), **fields})


def unbind(token: Token[Mapping[str, Any]]) -> None:
    _context.reset(token)


def request_id() -> str | None:
    """The id of the request being served (request_logging binds it); None outside one."""
    value = _context.get().get("request_id")
    return value if isinstance(value, str) else None


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add `fields` to every line logged inside the block."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def merge_context(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the bound fields first, then the event's own (which win)."""
    bound_fields = _context.get()
    return {**bound_fields, **event} if bound_fields else event


def flush() -> None:
    """Write out the lines logged so far: before a commit that says they were written."""
    _sink.flush()


atexit.register(flush)


class _NamedWriteLogger:
    """structlog's output: a line into the sink (no flush per line), with the name that
    add_logger_name reports."""

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        _sink.write(message + "\n")

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _named_logger(*args: Any) -> _NamedWriteLogger:
    return _NamedWriteLogger(str(args[0]) if args else "scheduler_svc")


@dataclass
class _HotLines:
    """How `hot_line` writes, set by `configure`: directly (JSON at info or below) with
    this redactor while structlog still runs `processors`, or else through structlog
    (which tests reconfigure to capture lines)."""

    direct: bool = False
    redact: Redactor | None = None
    processors: list[Any] | None = None


_hot_lines = _HotLines()


def hot_line(logger: str, event: str, own: dict[str, Any], given: dict[str, Any]) -> None:
    """Log at info a line written thousands of times a second: the line of each run
    (the log target's `job_executed`) and of each HTTP request.

    In JSON it skips structlog's per-call machinery (bound logger, processor chain,
    which cost about three times the line) and produces the very line structlog
    would: the bound fields (`bind`), then the fields, event, level, logger and
    timestamp. What user code binds with structlog's own contextvars is left out:
    reading those walks the whole context, on every line.
    `own` holds the service's fields (ids, times, fixed words), which need no
    redaction; `given` holds what clients wrote (names, attributes, paths, errors),
    which is redacted as ever. Any other format, or a level above info, goes through
    structlog.
    """
    if (
        not _hot_lines.direct
        or _hot_lines.redact is None
        or structlog.get_config()["processors"] is not _hot_lines.processors
    ):
        structlog.get_logger(logger).info(event, **own, **given)
        return
    redact = _hot_lines.redact
    line = dict(_context.get())
    for key, value in line.items():
        if key not in OWN_FIELDS:
            line[key] = redact.value(key, value)
    line.update(own)
    for key, value in given.items():
        line[key] = redact.value(key, value)
    line["event"] = event
    line["level"] = "info"
    line["logger"] = logger
    line["timestamp"] = utc_stamp(time.time())
    _sink.write(_json(line) + "\n")


# The last whole second utc_stamp formatted, and its text: one tuple, replaced whole,
# so that a thread never reads one second's text with another's number.
_stamped: tuple[int, str] = (-1, "")


def utc_stamp(now: float) -> str:
    """`now` (seconds since the epoch) as structlog's TimeStamper(fmt="iso", utc=True)
    writes it: datetime.isoformat in UTC with a Z, no fraction when it has none.

    The date and time of day are formatted once a second: at thousands of lines a
    second, datetime.now().isoformat() was a large share of a line's cost.
    """
    global _stamped
    second = int(now)
    # Rounded half to even, as datetime.fromtimestamp rounds.
    micro = round((now - second) * 1_000_000)
    if micro == 1_000_000:
        second, micro = second + 1, 0
    stamped_second, text = _stamped
    if second != stamped_second:
        text = datetime.fromtimestamp(second, tz=UTC).isoformat()[:19]
        _stamped = (second, text)
    return f"{text}.{micro:06d}Z" if micro else f"{text}Z"


def configure(
    log_format: LogFormat | None, level: str = "info", secrets: Iterable[str | None] = ()
) -> None:
    """Set up structlog and route the standard library's logging to the same renderer.

    Our own events take structlog's direct path (every run writes a line or two; at
    thousands of runs a second the standard library's machinery would cost more than
    the run), into a LineSink;
    other libraries' records (uvicorn, asyncpg, warnings) go through logging and come
    out in the same format. Both pass `Redactor(secrets)` last, so no credential is
    written.
    """
    global _sink
    _sink.flush()
    _sink = LineSink(sys.stderr)
    fmt = log_format or ("console" if sys.stderr.isatty() else "json")
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    redact = Redactor(secrets)
    _hot_lines.direct = fmt == "json" and logging.getLevelName(level.upper()) <= logging.INFO
    _hot_lines.redact = redact
    shared: list[Any] = [
        # What code of the user's (a registered handler) binds with structlog's own
        # contextvars still shows on its lines; the service binds with `bind`.
        structlog.contextvars.merge_contextvars,
        merge_context,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    _hot_lines.processors = [
        *shared,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact,
        renderer,
    ]
    structlog.configure(
        processors=_hot_lines.processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_named_logger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(_sink)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                renderer,
            ],
        )
    )
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The ASGI server's access lines are replaced by one `request` event per request.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True


_REQUEST_ID = re.compile(r"^[\w.:-]{1,128}$")


def request_logging(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: one `request` log line per HTTP request, tagged with a request id.

    The id comes from an incoming X-Request-Id when it looks sane, else is made up,
    and is sent back in the response's X-Request-Id.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        # Typed as litestar's ScopeType, a str enum: "http" equals ScopeType.HTTP.
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        # 32 hex digits, as uuid4().hex, at a sixth of its cost.
        request_id = incoming if _REQUEST_ID.match(incoming) else os.urandom(16).hex()
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        token = bind(request_id=request_id)
        try:
            await app(scope, receive, send_with_id)
        finally:
            hot_line(
                "scheduler_svc",
                "request",
                {
                    "method": scope.get("method"),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": (scope.get("client") or ("", 0))[0],
                },
                {"path": scope["path"]},
            )
            unbind(token)

    return middleware
