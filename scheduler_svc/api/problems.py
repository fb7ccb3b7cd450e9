"""Problem documents (RFC 9457): how each exception the API raises becomes one, with
its type and title from errors.PROBLEM_TYPES and, for bad input, the fields at fault."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

import asyncpg
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.problem_details import ProblemDetailsException

from scheduler_svc.errors import FieldError, InvalidRequest, SchedulerError, problem_of

log = structlog.get_logger("scheduler_svc.app")

_MISSING_PARAMETER = re.compile(r"Missing required \w+ parameter '([^']+)'")


def _problem(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, object] | None = None,
) -> ProblemDetailsException:
    """A problem document of the type, and so the title, that errors.PROBLEM_TYPES gives
    `status` (or names `slug`), with `extra` members: every problem the API answers with
    is built here."""
    type_, title = problem_of(status, slug)
    members = {**(extra or {}), **({"errors": errors} if errors is not None else {})}
    return ProblemDetailsException(
        type_=type_,
        title=title,
        status_code=status,
        detail=detail,
        headers=headers,
        extra=members or None,
    )


def _from_http(exc: HTTPException) -> ProblemDetailsException:
    if exc.status_code == 500:  # Litestar's own 500 (e.g. a dependency failed): keep the cause
        log.error("internal_error", exc_info=exc)
    phrase = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if exc.detail and exc.detail != phrase else phrase
    if exc.status_code == 400:  # a body that is not JSON (fields are ValidationException's)
        errors = [{"field": "body", "message": detail}]
        return _problem(400, f"body: {detail}", errors=errors, headers=exc.headers)
    return _problem(exc.status_code, detail, headers=exc.headers)


def _from_validation(exc: ValidationException) -> ProblemDetailsException:
    """Litestar's own request validation, with each bad field named in `errors`."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    errors: list[dict[str, str]] = []
    for item in extra:
        if not isinstance(item, dict):
            continue
        key = str(item.get("key") or "")
        error = FieldError.from_msgspec(str(item.get("message", "")), "" if key == "data" else key)
        source = getattr(item.get("source"), "value", item.get("source"))
        errors.append({"field": error.field, "message": error.message, "source": str(source)})
    if not errors:  # no field named: a missing parameter, or a body that is not JSON
        missing = _MISSING_PARAMETER.match(exc.detail)
        field = missing.group(1) if missing else "body"
        errors = [{"field": field, "message": exc.detail}]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return _problem(400, detail, errors=errors)


def _from_domain(exc: SchedulerError) -> ProblemDetailsException:
    errors = None
    if isinstance(exc, InvalidRequest):
        errors = [{"field": e.field, "message": e.message} for e in exc.errors]
    return _problem(
        exc.status_code, exc.detail, slug=exc.problem_type, errors=errors, extra=exc.extensions()
    )


def _from_unstorable(exc: asyncpg.DataError) -> ProblemDetailsException:
    """Text the database cannot store (a NUL character) that validation let through: the
    request is at fault, not the server."""
    log.warning("unstorable_text", error=type(exc).__name__)
    message = "contains text the database cannot store, such as the NUL character (\\u0000)"
    return _problem(400, f"body: {message}", errors=[{"field": "body", "message": message}])


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Last resort: a bug, not bad input. Logged with its cause, answered as a problem."""
    log.exception("unhandled_error", path=request.url.path)
    detail = "The server failed to handle this request; it has been logged."
    return _problem(500, detail).to_response(request)


PROBLEM_DETAIL_MAP: dict[type[Exception], Any] = {
    HTTPException: _from_http,
    ValidationException: _from_validation,
    SchedulerError: _from_domain,
    asyncpg.CharacterNotInRepertoireError: _from_unstorable,
    asyncpg.UntranslatableCharacterError: _from_unstorable,
}
