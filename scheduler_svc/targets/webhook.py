"""Webhook calls: the request (envelope, headers, signature), the address guard, and what
a reply or a failure comes to."""

from __future__ import annotations

import codecs
import hashlib
import hmac
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from functools import lru_cache
from importlib.metadata import version
from typing import Any, TypeVar

import msgspec
import yarl

from scheduler_svc import tracing
from scheduler_svc.redact import scrub
from scheduler_svc.targets.delivery import Delivery, Outcome, one_line
from scheduler_svc.targets.http import CallFailed, Reply, WebhookClient
from scheduler_svc.targets.netguard import RefusedAddress, Resolver, resolve_public, url_problem

USER_AGENT = f"scheduler-svc/{version('scheduler-svc')}"
OUTPUT_LIMIT = 4096  # bytes of a response body kept as the run's output
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
_METHODS_WITHOUT_ENVELOPE = frozenset({"GET", "DELETE"})

# The signing secrets of a tenant's deliveries (store.TenantSecrets): empty to send
# unsigned, None when they cannot be known now (the attempt is then retried).
SigningSecrets = Callable[[str], Awaitable[tuple[str, ...] | None]]
SECRETS_UNAVAILABLE = "the tenant's signing secrets could not be read (database unavailable)"


class Webhook:
    """Calls the webhook of an http target, signed with the secrets of its run's tenant
    (`secrets`), or else with `secret` when there is one."""

    def __init__(
        self,
        http: WebhookClient,
        *,
        secret: str | None,
        allow_private: bool,
        resolver: Resolver | None,
        secrets: SigningSecrets | None = None,
    ) -> None:
        self._http = http
        self._secret = secret
        self._secrets = secrets
        self._allow_private = allow_private
        self._resolver = resolver
        # With traces on, the attempt's span goes along as traceparent: decided here, once.
        self._headers = tracing.with_traceparent(self._request_headers)

    async def call(self, d: Delivery) -> Outcome:
        """Make one attempt's call; every failure is an Outcome."""
        target = d.target
        url = target.get("url")
        if not isinstance(url, str):
            return Outcome(ok=False, error="http target has no url", retryable=False)
        endpoint = await self._vetted(url)
        if isinstance(endpoint, Outcome):
            return endpoint
        host, port = endpoint.host, endpoint.port

        method = str(target.get("method") or "POST").upper()
        body, content_type = _request_body(d, method)
        user_headers: dict[str, str] = target.get("headers") or {}
        if not all(name.isascii() and value.isascii() for name, value in user_headers.items()):
            return Outcome(
                ok=False,
                error="a target header value is not ASCII, so cannot be sent",
                retryable=False,
            )
        signing = await self._signing(d.tenant)
        if signing is None:
            return Outcome(ok=False, error=SECRETS_UNAVAILABLE)
        headers = self._headers(d, user_headers, body, content_type, signing)
        try:
            reply = await self._http.call(
                method, endpoint.url, headers, body, timeout_s=d.timeout_s, limit=OUTPUT_LIMIT
            )
        except RefusedAddress as exc:
            return Outcome(ok=False, error=one_line(f"refused: {exc}"), retryable=False)
        except CallFailed as exc:
            error = _scrub(_call_problem(exc, host, port), user_headers, signing)
            return Outcome(ok=False, error=error, retryable=exc.retryable)
        # Without final=True a multi-byte character cut at the limit is dropped, not garbled.
        head = codecs.getincrementaldecoder("utf-8")("replace").decode(reply.head)
        output = {"status_code": reply.status, "body": _scrub(head, user_headers, signing)}
        return _classify(reply, output, host, d.backoff_max_s)

    async def send(
        self,
        url: str,
        body: bytes,
        headers: Sequence[tuple[str, str]],
        *,
        tenant: str,
        timeout_s: float,
        retry_after_cap_s: float,
    ) -> Outcome:
        """POST the JSON `body` to `url` with `headers`, signed with `tenant`'s secrets,
        under the rules of a webhook call (the address guard, what a reply comes to,
        Retry-After up to `retry_after_cap_s`); every failure is an Outcome. Alerts go
        out through this."""
        endpoint = await self._vetted(url)
        if isinstance(endpoint, Outcome):
            return endpoint
        signing = await self._signing(tenant)
        if signing is None:
            return Outcome(ok=False, error=SECRETS_UNAVAILABLE)
        sent = [
            ("Accept", "*/*"),
            ("Accept-Encoding", "identity"),
            ("Content-Type", "application/json"),
            ("User-Agent", USER_AGENT),
            *headers,
        ]
        if signing:
            sent.append(("X-Scheduler-Signature", sign_all(signing, body)))
        try:
            reply = await self._http.call(
                "POST", endpoint.url, sent, body, timeout_s=timeout_s, limit=OUTPUT_LIMIT
            )
        except RefusedAddress as exc:
            return Outcome(ok=False, error=one_line(f"refused: {exc}"), retryable=False)
        except CallFailed as exc:
            error = _scrub(_call_problem(exc, endpoint.host, endpoint.port), {}, signing)
            return Outcome(ok=False, error=error, retryable=exc.retryable)
        head = codecs.getincrementaldecoder("utf-8")("replace").decode(reply.head)
        output = {"status_code": reply.status, "body": _scrub(head, {}, signing)}
        return _classify(reply, output, endpoint.host, retry_after_cap_s)

    async def _vetted(self, url: str) -> _Endpoint | Outcome:
        """The endpoint `url` calls, its host vetted unless private addresses are
        allowed; or the attempt's failure."""
        endpoint = _endpoint(url, self._allow_private)
        if isinstance(endpoint, str):
            return Outcome(ok=False, error=endpoint, retryable=False)
        host, port = endpoint.host, endpoint.port
        if not self._allow_private:
            try:
                await resolve_public(host, port, resolver=self._resolver)
            except RefusedAddress as exc:
                return Outcome(ok=False, error=one_line(f"refused: {exc}"), retryable=False)
            except OSError as exc:
                return Outcome(ok=False, error=one_line(f"DNS lookup failed for {host}: {exc}"))
        return endpoint

    async def _signing(self, tenant: str) -> tuple[str, ...] | None:
        """The secrets to sign the tenant's call with (empty: unsigned); None if unknown now."""
        if self._secrets is not None:
            return await self._secrets(tenant)
        return (self._secret,) if self._secret else ()

    def _request_headers(
        self,
        d: Delivery,
        user: Mapping[str, str],
        body: bytes | None,
        content_type: str | None,
        signing: Sequence[str],
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
        if signing:
            headers.append(("X-Scheduler-Signature", sign_all(signing, body or b"")))
        return headers


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


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The X-Scheduler-Signature value: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def sign_all(secrets: Sequence[str], body: bytes, timestamp: int | None = None) -> str:
    """The X-Scheduler-Signature value signed with each of `secrets` (during a rotation,
    the new and the previous): t=<unix seconds>,v1=<hex>,v1=<hex>…, one v1 per secret, so
    a receiver that knows either verifies it."""
    t = int(time.time()) if timestamp is None else timestamp
    signed = f"{t}.".encode() + body
    macs = (hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets)
    return f"t={t}," + ",".join(f"v1={mac}" for mac in macs)


def _scrub(text: str, headers: Mapping[str, str], signing: Sequence[str]) -> str:
    """`text` with every signing secret and credential-like header value masked."""
    text = scrub(text, headers, signing[0] if signing else None)
    for secret in signing[1:]:
        text = scrub(text, {}, secret)
    return text


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
        return one_line(f"url {problem}")
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
