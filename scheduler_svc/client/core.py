"""What the sync and async clients share, with no I/O: defaults, errors, the retry rule,
building requests and reading responses."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import msgspec

from scheduler_svc.errors import Problem, ProblemField
from scheduler_svc.models import JobPlan

T = TypeVar("T")

# The client reads these two itself: it runs where the service's settings do not.
URL_ENV = "SCHEDULER_URL"
API_KEY_ENV = "SCHEDULER_API_KEY"
DEFAULT_URL = "http://127.0.0.1:3000"
DEFAULT_TIMEOUT_S = 10.0
# What one page asks for while iterating: the API allows 1 to 500 (default 50).
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500

# Methods that mean the same done twice (RFC 9110 §9.2.2); a POST only with a key.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Failures where the request may not have reached the service, or its answer was lost.
RETRYABLE_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


def default_url() -> str:
    """SCHEDULER_URL, else http://127.0.0.1:3000."""
    return os.environ.get(URL_ENV) or DEFAULT_URL


def default_api_key() -> str | None:
    """SCHEDULER_API_KEY, else None (no Authorization header: the service's open mode)."""
    return os.environ.get(API_KEY_ENV) or None


class ClientError(Exception):
    """Base of every error the client raises: a problem answered, no answer, or an answer
    it cannot read."""


class ProblemError(ClientError):
    """The service answered with an error status (any non-2xx).

    `problem` is the RFC 9457 document it sent (`type`, `title`, `status`, `detail`,
    and for bad input `errors`, a list naming each bad field); an error answer that was
    no problem document, such as a proxy's HTML page, is turned into one with type
    `about:blank`. `str(error)` is one line: "404 Not found: job 12 does not exist".
    """

    def __init__(self, problem: Problem, response: httpx.Response | None = None) -> None:
        super().__init__(f"{problem.status} {problem.title}: {problem.detail}")
        self.problem = problem
        self.response = response

    @property
    def status(self) -> int:
        """The HTTP status, e.g. 404."""
        return self.problem.status

    @property
    def title(self) -> str:
        """The problem type's title, the same for every problem of its type."""
        return self.problem.title

    @property
    def detail(self) -> str:
        """What went wrong this time, for a person."""
        return self.problem.detail

    @property
    def type(self) -> str:
        """The problem type, `urn:scheduler-svc:problem:<slug>` (e.g. `not-found`)."""
        return self.problem.type

    @property
    def errors(self) -> list[ProblemField]:
        """The bad fields of a 400, each with `field` (a JSON path) and `message`; else []."""
        errors = self.problem.errors
        return [] if isinstance(errors, msgspec.UnsetType) else errors


class Unreachable(ClientError):
    """No answer from the service: connection refused or reset, or a timeout, on every
    attempt the retry policy allowed (calls that are not safe to repeat get one)."""

    def __init__(self, url: str, reason: str, attempts: int) -> None:
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"cannot reach {url}: {reason}{tries}")
        self.url = url
        self.reason = reason
        self.attempts = attempts


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and after how long, a call is tried again.

    Only GET, PUT and DELETE, and creating a job (which carries an `Idempotency-Key`), are
    repeated after a connection error or timeout, or a 503 (for which a `Retry-After` is
    honoured up to `backoff_max_s`); pause, resume, trigger and update are tried once
    then. Every call is repeated after a 429, which the service answers before doing
    anything, once its `Retry-After` has passed, when that is at most `backoff_max_s`
    away. Attempt n waits a random time between half and all of
    `min(backoff_max_s, backoff_s * 2 ** (n - 1))` seconds before the next.
    """

    attempts: int = 4  # in all, the first included
    backoff_s: float = 0.25
    backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("RetryPolicy: attempts must be ≥ 1 and the backoffs ≥ 0")

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (from 1)."""
        ceiling = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.backoff_max_s))
        return delay


# Try once: for callers that do their own retrying.
NO_RETRIES = RetryPolicy(attempts=1)


@dataclass(frozen=True, slots=True)
class Call:
    """One API request: what to send, and whether it may be sent again."""

    method: str
    path: str
    params: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = False


def call(
    method: str,
    path: str,
    *,
    params: Mapping[str, Any] | list[tuple[str, str]] | None = None,
    json: Any = None,
    headers: Mapping[str, str] | None = None,
    idempotent: bool | None = None,
) -> Call:
    """A Call; `json` (a Struct or plain data) becomes the body. Idempotent by default when
    the method is, or when it carries an Idempotency-Key."""
    sent = dict(headers or {})
    body = None
    if json is not None:
        body = msgspec.json.encode(json)
        sent.setdefault("Content-Type", "application/json")
    if idempotent is None:
        keyed = any(name.lower() == "idempotency-key" for name in sent)
        idempotent = method.upper() in IDEMPOTENT_METHODS or keyed
    items = params.items() if isinstance(params, Mapping) else params or []
    query = tuple((k, _query_value(v)) for k, v in items if v is not None)
    return Call(method.upper(), path, query, body, sent, idempotent)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def retry_delay(
    policy: RetryPolicy, call: Call, attempt: int, outcome: httpx.Response | httpx.TransportError
) -> float | None:
    """Seconds to wait before sending `call` again after attempt `attempt` (from 1) ended
    in `outcome`; None to stop there."""
    if attempt >= policy.attempts:
        return None
    if isinstance(outcome, httpx.Response) and outcome.status_code == HTTPStatus.TOO_MANY_REQUESTS:
        # Refused by the rate limiter before anything was done: any call may be sent
        # again, but not before its budget is back.
        retry_after_s = _retry_after_s(outcome)
        if retry_after_s is not None and retry_after_s > policy.backoff_max_s:
            return None
        return policy.delay_s(attempt, retry_after_s)
    if not call.idempotent:
        return None
    if isinstance(outcome, httpx.TransportError):
        return policy.delay_s(attempt) if isinstance(outcome, RETRYABLE_ERRORS) else None
    if outcome.status_code == HTTPStatus.SERVICE_UNAVAILABLE:
        return policy.delay_s(attempt, _retry_after_s(outcome))
    return None


def _retry_after_s(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:  # absent, or an HTTP date: the policy's own delay
        return None


def unreachable(url: httpx.URL, exc: httpx.TransportError, attempts: int) -> ClientError:
    """The error for a request that got no answer."""
    where = f"{url.scheme}://{url.netloc.decode()}"
    if not isinstance(exc, RETRYABLE_ERRORS):  # a bad URL or proxy: no attempt can help
        return ClientError(f"cannot send to {where}: {str(exc) or type(exc).__name__}")
    reason = str(exc) or type(exc).__name__
    if _caused_by(exc, ConnectionRefusedError):
        reason = "connection refused"
    elif isinstance(exc, httpx.TimeoutException):
        reason = f"timed out ({type(exc).__name__})"
    return Unreachable(where, reason, attempts)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is in the chain of exceptions that led to `exc` (anyio wraps a
    refused connection in an OSError of its own)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def checked(response: httpx.Response) -> httpx.Response:
    """`response` if it is a success; ProblemError otherwise."""
    if response.is_success:
        return response
    raise ProblemError(problem_of(response), response)


def problem_of(response: httpx.Response) -> Problem:
    """The problem document of an error answer, or one made up from its status and body."""
    try:
        problem = msgspec.json.decode(response.content, type=Problem)
        if problem.status == response.status_code:
            return problem
    except msgspec.MsgspecError:
        pass
    phrase = response.reason_phrase or _phrase(response.status_code)
    text = " ".join(response.text.split())[:200] or phrase
    return Problem(type="about:blank", title=phrase, status=response.status_code, detail=text)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def decoded(response: httpx.Response, type_: type[T]) -> T:
    """The body of a success as `type_`; ClientError if it is not one."""
    try:
        return msgspec.json.decode(response.content, type=type_)
    except msgspec.MsgspecError as exc:
        request = response.request
        raise ClientError(
            f"unexpected answer to {request.method} {request.url.path}: {exc}"
        ) from None


def decoded_list(response: httpx.Response, type_: type[T]) -> list[T]:
    """The body of a success as a list of `type_` (a page); ClientError if it is not one."""
    items: list[T] = decoded(response, list[type_])  # type: ignore[valid-type]
    return items


def next_page(response: httpx.Response) -> list[tuple[str, str]] | None:
    """The query of the page after this one (its Link rel="next"), or None at the end.

    Only the query is taken, the path kept: a proxy in front of the service may show it
    under another host or path prefix than the service sees."""
    link = response.links.get("next")
    if link is None or not link.get("url"):
        return None
    return parse_qsl(urlsplit(link["url"]).query, keep_blank_values=True)


def page_size(size: int, limit: int | None) -> int:
    """What the first page asks for: `size`, or fewer when `limit` wants fewer."""
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be from 1 to {MAX_PAGE_SIZE}, not {size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be ≥ 0, not {limit}")
    return size if limit is None else max(1, min(size, limit))


def base_url(url: str | None) -> str:
    """The service's URL as given, or from SCHEDULER_URL; ValueError if it is not http(s)."""
    chosen = (url or default_url()).rstrip("/")
    if urlsplit(chosen).scheme not in {"http", "https"} or not urlsplit(chosen).netloc:
        raise ValueError(f"the service URL must look like http://host:port, not {chosen!r}")
    return chosen


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The headers every request carries: JSON accepted, and the key as a bearer token."""
    headers = {"Accept": "application/json, application/problem+json"}
    key = default_api_key() if api_key is None else api_key
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def if_match(version: int | None) -> dict[str, str]:
    """The If-Match header naming a job's `version`, or none."""
    return {} if version is None else {"If-Match": f'"{int(version)}"'}


def job_path(job_id: int, action: str = "") -> str:
    """`/jobs/{id}` (or `/jobs/{id}/{action}`)."""
    return f"/jobs/{int(job_id)}" + (f"/{action}" if action else "")


def run_path(run_id: int, action: str = "") -> str:
    """`/runs/{id}` (or `/runs/{id}/{action}`)."""
    return f"/runs/{int(run_id)}" + (f"/{action}" if action else "")


# A key segment a URL path cannot carry as it is: httpx (and proxies) drop "." and ".."
# segments, so /jobs/by-key/a/../b would reach the job "b". The service refuses such keys.
_UNADDRESSABLE = re.compile(r"(?:^|/)\.{0,2}(?:/|$)")


def key_path(key: str) -> str:
    """`/jobs/by-key/{key}` (a key's `/` stays a `/`: the route takes a path); ValueError
    for a key no URL path can name."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"a job key must be a non-empty string, not {key!r}")
    if _UNADDRESSABLE.search(key) is not None:
        raise ValueError(
            f'job key {key!r} must not start or end with "/" or have an empty, "." or ".." '
            "segment between slashes"
        )
    return f"/jobs/by-key/{quote(key, safe='/:')}"


# What `PUT /jobs/by-key/{key}?dry_run=true` answers: `action` ("create", "update" or
# "none") and `changed`, the fields an update would change (a secret's too, though its
# value is never shown). The service's own model, under the client's name for it.
PutPlan = JobPlan
