"""Delivering one attempt of a run to its target: log, http webhook, or registered handler."""

from __future__ import annotations

import codecs
import hashlib
import hmac
import inspect
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from importlib.metadata import entry_points, version
from typing import Any, TypeVar

import msgspec
import structlog
import yarl

from scheduler_svc import logs
from scheduler_svc.models import SENSITIVE_HEADERS
from scheduler_svc.netguard import RefusedAddress, Resolver, resolve_public, url_problem
from scheduler_svc.webhook_http import CallFailed, Reply, WebhookClient

log = structlog.get_logger(__name__)

HANDLER_GROUP = "scheduler_svc.handlers"
USER_AGENT = f"scheduler-svc/{version('scheduler-svc')}"
OUTPUT_LIMIT = 4096  # bytes of a response body kept as the run's output
ERROR_LIMIT = 1000  # characters of an error message

# Headers the service sets on every call; a user header of the same name is dropped.
_OWN_HEADERS = frozenset(
    {
        "user-agent",
        "idempotency-key",
        "x-scheduler-job-id",
        "x-scheduler-run-id",
        "x-scheduler-attempt",
        "x-scheduler-signature",
    }
)
# Framing is the transport's job: a user's Content-Length or Host would desynchronise or
# redirect it.
_FRAMING_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)
_SECRET_WORDS = ("auth", "token", "secret", "key", "password", "cookie", "signature")
_SCRUB_MIN = 4  # shorter values are left alone in output: replacing "1" everywhere helps no one
_METHODS_WITHOUT_ENVELOPE = frozenset({"GET", "DELETE"})


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt of one run, with what its target needs."""

    run_id: int
    job_id: int
    job_name: str
    tenant: str
    scheduled_for: datetime  # the tick, tz-aware UTC
    trigger: str  # "schedule" | "manual"
    attempt: int  # 1-based
    attributes: dict[str, Any]
    target: dict[str, Any]  # the stored target JSON, secrets included
    timeout_s: float
    backoff_max_s: float  # cap for honouring Retry-After

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt of this run, on every replica."""
        return f"run-{self.run_id}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to."""

    ok: bool
    output: Any = None  # JSON-serialisable: {"status_code", "body"} for http, a handler's result
    error: str | None = None  # one line, never containing secrets
    retryable: bool = True  # False: fail the run now without further attempts
    retry_after_s: float | None = None  # from Retry-After, capped at backoff_max_s


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a registered handler is told about the attempt it runs."""

    job_id: int
    job_name: str
    run_id: int
    tenant: str
    scheduled_for: datetime
    trigger: str
    attempt: int
    attributes: dict[str, Any]
    idempotency_key: str


Handler = Callable[[HandlerContext], Awaitable[Any]]


def load_handlers() -> dict[str, Handler]:
    """Handlers of the `scheduler_svc.handlers` entry-point group (name → async function).

    One that fails to import or is not callable is left out with a warning, so a broken
    plugin costs its own runs, not the service. On a name registered twice the first wins.
    """
    handlers: dict[str, Handler] = {}
    for entry in entry_points(group=HANDLER_GROUP):
        if entry.name in handlers:
            log.warning("handler_name_taken", handler=entry.name, entry_point=entry.value)
            continue
        try:
            loaded = entry.load()
        except Exception as exc:
            log.warning(
                "handler_load_failed",
                handler=entry.name,
                entry_point=entry.value,
                error=_one_line(f"{type(exc).__name__}: {exc}"),
            )
            continue
        if not callable(loaded):
            log.warning("handler_not_callable", handler=entry.name, entry_point=entry.value)
            continue
        handlers[entry.name] = loaded
    return handlers


def registered_handlers(given: Mapping[str, Handler] | None = None) -> dict[str, Handler]:
    """Every handler a job may name: the entry-point group, and `given` (config) over it.

    Every role loads them once at start: the API refuses a job naming anything else,
    the worker calls them.
    """
    return {**load_handlers(), **(given or {})}


def parse_retry_after(value: str | None, *, cap_s: float, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delay-seconds or HTTP-date), at most cap_s.

    None when absent or unreadable; a date in the past means 0.
    """
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+", value, re.ASCII):
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is always GMT
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, when.timestamp() - (time.time() if now is None else now))
    return min(seconds, max(0.0, cap_s))


# Targets that do no I/O and cannot fail: the scheduler runs their ticks itself, in
# the transaction that materializes them (scheduler.tick_once), rather than handing
# them to an executor through a lease.
RUN_IN_PASS = frozenset({"log"})


def log_line(
    job_id: int,
    job_name: str,
    run_id: int,
    tick: datetime,
    attempt: int,
    trigger: str,
    tenant: str,
    attributes: dict[str, Any],
    **outcome: Any,
) -> None:
    """The log target's execution: one structured line with the job and its attributes.

    `outcome` adds fields when the caller, not a surrounding context, knows them."""
    logs.hot_line(
        "scheduler_svc.targets",
        "job_executed",
        {
            "job_id": job_id,
            "run_id": run_id,
            "tick": tick.isoformat(),
            "attempt": attempt,
            "trigger": trigger,
            **outcome,
        },
        {"job_name": job_name, "tenant": tenant, "attributes": attributes},
    )


class Deliverer:
    """Carries out attempts: a log line, a webhook call, or a registered handler.

    `deliver` turns every target-side failure into an Outcome; only bugs and
    cancellation escape it. The caller enforces the attempt's overall timeout.
    `handlers` are those a run may call by name (default: `registered_handlers()`).
    """

    def __init__(
        self,
        http: WebhookClient,
        *,
        webhook_secret: str | None = None,
        allow_private: bool = False,
        handlers: Mapping[str, Handler] | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self._http = http
        self._secret = webhook_secret or None
        self._allow_private = allow_private
        self._resolver = resolver
        self._handlers = dict(registered_handlers() if handlers is None else handlers)

    @property
    def handler_names(self) -> frozenset[str]:
        """The names a handler target may use."""
        return frozenset(self._handlers)

    async def deliver(self, delivery: Delivery) -> Outcome:
        """Carry out one attempt and say how it went."""
        kind = delivery.target.get("type")
        if kind == "log":
            return self._log(delivery)
        if kind == "http":
            return await self._call_webhook(delivery)
        if kind == "handler":
            return await self._call_handler(delivery)
        return Outcome(ok=False, error=_one_line(f"unknown target type {kind!r}"), retryable=False)

    # log

    def _log(self, d: Delivery) -> Outcome:
        log_line(
            d.job_id,
            d.job_name,
            d.run_id,
            d.scheduled_for,
            d.attempt,
            d.trigger,
            d.tenant,
            d.attributes,
        )
        return Outcome(ok=True)

    # handler

    async def _call_handler(self, d: Delivery) -> Outcome:
        name = d.target.get("name")
        handler = self._handlers.get(name) if isinstance(name, str) else None
        if handler is None:
            return Outcome(
                ok=False, error=_one_line(f"no handler registered as {name!r}"), retryable=False
            )
        context = HandlerContext(
            job_id=d.job_id,
            job_name=d.job_name,
            run_id=d.run_id,
            tenant=d.tenant,
            scheduled_for=d.scheduled_for,
            trigger=d.trigger,
            attempt=d.attempt,
            attributes=d.attributes,
            idempotency_key=d.idempotency_key,
        )
        try:
            pending = handler(context)
            if not inspect.isawaitable(pending):
                return Outcome(
                    ok=False,
                    error=f"handler {name!r} is not an async function",
                    retryable=False,
                )
            result = await pending
        except Exception as exc:
            log.warning("handler_raised", handler=name, exc_info=exc)
            return Outcome(ok=False, error=_one_line(f"{type(exc).__name__}: {exc}"))
        try:
            output = msgspec.json.decode(msgspec.json.encode(result))
        except (TypeError, ValueError, OverflowError) as exc:
            return Outcome(
                ok=False,
                error=_one_line(f"handler {name!r} returned a value that is not JSON: {exc}"),
                retryable=False,
            )
        return Outcome(ok=True, output=output)

    # http

    async def _call_webhook(self, d: Delivery) -> Outcome:
        target = d.target
        url = target.get("url")
        if not isinstance(url, str):
            return Outcome(ok=False, error="http target has no url", retryable=False)
        endpoint = _endpoint(url, self._allow_private)
        if isinstance(endpoint, str):
            return Outcome(ok=False, error=endpoint, retryable=False)
        host, port = endpoint.host, endpoint.port
        if not self._allow_private:
            try:
                await resolve_public(host, port, resolver=self._resolver)
            except RefusedAddress as exc:
                return Outcome(ok=False, error=_one_line(f"refused: {exc}"), retryable=False)
            except OSError as exc:
                return Outcome(ok=False, error=_one_line(f"DNS lookup failed for {host}: {exc}"))

        method = str(target.get("method") or "POST").upper()
        body, content_type = _request_body(d, method)
        user_headers: dict[str, str] = target.get("headers") or {}
        if not all(name.isascii() and value.isascii() for name, value in user_headers.items()):
            return Outcome(
                ok=False,
                error="a target header value is not ASCII, so cannot be sent",
                retryable=False,
            )
        headers = self._request_headers(d, user_headers, body, content_type)
        try:
            reply = await self._http.call(
                method, endpoint.url, headers, body, timeout_s=d.timeout_s, limit=OUTPUT_LIMIT
            )
        except RefusedAddress as exc:
            return Outcome(ok=False, error=_one_line(f"refused: {exc}"), retryable=False)
        except CallFailed as exc:
            error = _scrub(_call_problem(exc, host, port), user_headers, self._secret)
            return Outcome(ok=False, error=error, retryable=exc.retryable)
        # Without final=True a multi-byte character cut at the limit is dropped, not garbled.
        head = codecs.getincrementaldecoder("utf-8")("replace").decode(reply.head)
        output = {"status_code": reply.status, "body": _scrub(head, user_headers, self._secret)}
        return _classify(reply, output, host, d.backoff_max_s)

    def _request_headers(
        self, d: Delivery, user: Mapping[str, str], body: bytes | None, content_type: str | None
    ) -> list[tuple[str, str]]:
        headers = [
            (name, value)
            for name, value in user.items()
            if name.lower() not in _OWN_HEADERS and name.lower() not in _FRAMING_HEADERS
        ]
        given = {name.lower() for name, _ in headers}
        # Defaults the user may override; identity encoding keeps the 4 KiB cut a byte count.
        defaults = [("Accept", "*/*"), ("Accept-Encoding", "identity")]
        if content_type is not None:
            defaults.append(("Content-Type", content_type))
        headers += [(name, value) for name, value in defaults if name.lower() not in given]
        headers += [
            ("User-Agent", USER_AGENT),
            ("Idempotency-Key", d.idempotency_key),
            ("X-Scheduler-Job-Id", str(d.job_id)),
            ("X-Scheduler-Run-Id", str(d.run_id)),
            ("X-Scheduler-Attempt", str(d.attempt)),
        ]
        if self._secret is not None:
            headers.append(("X-Scheduler-Signature", sign(self._secret, body or b"")))
        return headers


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The X-Scheduler-Signature value: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def envelope(d: Delivery) -> dict[str, Any]:
    """The default webhook body."""
    return {
        "job_id": d.job_id,
        "job_name": d.job_name,
        "run_id": d.run_id,
        "scheduled_for": d.scheduled_for.astimezone(UTC),
        "attempt": d.attempt,
        "attributes": d.attributes,
    }


def _request_body(d: Delivery, method: str) -> tuple[bytes | None, str | None]:
    """The bytes to send and their default content type."""
    body = d.target.get("body")
    if body is None:
        if method in _METHODS_WITHOUT_ENVELOPE:
            return None, None
        return msgspec.json.encode(envelope(d)), "application/json"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return msgspec.json.encode(body), "application/json"


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """A webhook URL as the client takes it, and the host and port errors name."""

    url: yarl.URL
    host: str
    port: int


@lru_cache(maxsize=4096)
def _endpoint(url: str, allow_private: bool) -> _Endpoint | str:
    """The endpoint `url` calls, or the run's error if it cannot be called.

    Cached: a job calls the same URL on every tick, and parsing it is a good part of a call.
    """
    problem = url_problem(url, allow_private=allow_private)
    if problem is not None:
        return _one_line(f"url {problem}")
    try:
        parsed = yarl.URL(url)
        host, port = parsed.raw_host, parsed.port
    except (ValueError, TypeError, UnicodeError):
        return "url is not a valid URL"
    if not host or port is None:
        return "url is not a valid URL"
    return _Endpoint(parsed, host, port)


def _classify(reply: Reply, output: dict[str, Any], host: str, backoff_max_s: float) -> Outcome:
    status = reply.status
    if 200 <= status < 300:
        return Outcome(ok=True, output=output)
    error = f"HTTP {status} from {host}"
    if 300 <= status < 400:
        return Outcome(
            ok=False, output=output, error=f"{error}: redirects are not followed", retryable=False
        )
    if status in (408, 429) or status >= 500:
        wait = parse_retry_after(reply.retry_after, cap_s=backoff_max_s)
        return Outcome(ok=False, output=output, error=error, retry_after_s=wait)
    return Outcome(ok=False, output=output, error=error, retryable=False)


def _call_problem(exc: CallFailed, host: str, port: int) -> str:
    """One line on a failed call, naming host and port only: URLs and headers may hold secrets."""
    where = f"{host}:{port}"
    if exc.kind == "connect_timeout":
        return f"connect timeout: {where}"
    if exc.kind == "read_timeout":
        return f"read timeout: {where}"
    if exc.kind == "connect":
        if _caused_by(exc, ConnectionRefusedError):
            return f"connection refused: {where}"
        tls = _caused_by(exc, ssl.SSLError)
        if tls is not None:
            reason = getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or tls
            return f"TLS handshake with {where} failed: {reason}"
        return f"connection to {where} failed: {exc}"
    if exc.kind == "unsendable":
        # aiohttp's message quotes the offending header value.
        return f"request to {where} could not be sent: invalid header or body"
    if exc.kind == "protocol":
        return f"protocol error from {where}: {exc}"
    return f"connection to {where} lost"


_E = TypeVar("_E", bound=BaseException)


def _caused_by(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first exception of `kind` in exc's cause chain, groups included."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


def _scrub(text: str, headers: Mapping[str, str], secret: str | None) -> str:
    """`text` with the signing secret and credential-like header values masked."""
    if not text:
        return text  # most replies have no body: nothing to look for
    values: set[str] = {secret} if secret else set()
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in SENSITIVE_HEADERS or any(word in lowered for word in _SECRET_WORDS):
            values.add(value)
            values.update(part for part in value.split() if len(part) >= 8)
    for value in sorted((v for v in values if len(v) >= _SCRUB_MIN), key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def _one_line(text: str) -> str:
    """Whitespace collapsed to single spaces, cut to ERROR_LIMIT characters."""
    line = " ".join(text.split())
    return line if len(line) <= ERROR_LIMIT else line[: ERROR_LIMIT - 1] + "…"
