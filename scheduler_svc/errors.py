"""Domain errors and the problem documents they become. Each error's docstring is its default
message; `app` maps them to problem details."""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus

from msgspec import UNSET, Struct, UnsetType

_NAMED_FIELD = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")


class SchedulerError(Exception):
    """Something went wrong."""

    status_code = 500
    # Its problem type, a slug of PROBLEM_TYPES; None for the one of its status.
    problem_type: str | None = None

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or (self.__doc__ or "").strip())

    @property
    def detail(self) -> str:
        return str(self)

    def extensions(self) -> dict[str, object]:
        """Members its problem document has beyond type, title, status and detail."""
        return {}


class NotFound(SchedulerError):
    """No such resource."""

    status_code = 404


class VersionMismatch(SchedulerError):
    """The resource has changed since the version named in If-Match."""

    status_code = 412


class IdempotencyConflict(SchedulerError):
    """This Idempotency-Key was already used with a different request body."""

    status_code = 409


class KeyConflict(SchedulerError):
    """Another job of this tenant already has this key."""

    status_code = 409
    problem_type = "key-conflict"


class RunFinal(SchedulerError):
    """The run has already ended: only a pending or running run can be cancelled."""

    status_code = 409
    problem_type = "run-final"

    def __init__(self, run_id: int, run_status: str) -> None:
        super().__init__(f"run {run_id} has already ended: it is {run_status}")
        self.run_status = run_status

    def extensions(self) -> dict[str, object]:
        return {"run_status": self.run_status}


class UpgradeInProgress(SchedulerError):
    """A replica of a release before run cancel is still connected: it cannot read a
    cancelled run. Finish rolling the replicas (deploy/README.md, "Upgrading"), then cancel."""

    status_code = 409
    problem_type = "upgrade-in-progress"


class UnsupportedMediaType(SchedulerError):
    """Request bodies must be JSON: send Content-Type: application/json."""

    status_code = 415


class CrossOriginRequest(SchedulerError):
    """Without API keys this service takes no change from a web page of another origin."""

    status_code = 403


class MisdirectedRequest(SchedulerError):
    """This service does not answer for that host name."""

    status_code = 421


@dataclass(frozen=True, slots=True)
class ProblemType:
    """A kind of problem the API answers with: its status and its one title."""

    status: int
    title: str


PROBLEM_TYPE_PREFIX = "urn:scheduler-svc:problem:"
# Every problem type the API answers with, by slug (its `type` is the prefix and the
# slug). RFC 9457: a type keeps its title from one occurrence to the next; what differs
# goes in `detail` (and, for a bad request, `errors`). The first listed with a status
# is that status's type, unless a SchedulerError names another (`problem_type`).
PROBLEM_TYPES: dict[str, ProblemType] = {
    "invalid-request": ProblemType(400, "Invalid request"),
    "unauthorized": ProblemType(401, "Authentication required"),
    "forbidden": ProblemType(403, "Permission denied"),
    "not-found": ProblemType(404, "Not found"),
    "method-not-allowed": ProblemType(405, "Method not allowed"),
    "idempotency-conflict": ProblemType(409, "Idempotency key reused"),
    "key-conflict": ProblemType(409, "Job key in use"),
    "run-final": ProblemType(409, "Run already ended"),
    "upgrade-in-progress": ProblemType(409, "Upgrade in progress"),
    "version-mismatch": ProblemType(412, "Version mismatch"),
    "body-too-large": ProblemType(413, "Request body too large"),
    "unsupported-media-type": ProblemType(415, "Unsupported media type"),
    "misdirected-request": ProblemType(421, "Misdirected request"),
    "rate-limited": ProblemType(429, "Too many requests"),
    "internal-error": ProblemType(500, "Internal server error"),
}
# Built backwards, so that the first listed with a status wins.
_SLUG_BY_STATUS = {problem.status: slug for slug, problem in reversed(PROBLEM_TYPES.items())}


def problem_of(status: int, slug: str | None = None) -> tuple[str, str]:
    """The `type` and `title` of a problem answered with `status` (of type `slug`)."""
    slug = slug or _SLUG_BY_STATUS.get(status)
    if slug is None:  # none of ours: RFC 9457's default type, titled by its status
        return "about:blank", HTTPStatus(status).phrase
    return PROBLEM_TYPE_PREFIX + slug, PROBLEM_TYPES[slug].title


class ProblemField(Struct):
    """One bad field of a request."""

    field: str
    message: str
    source: str | UnsetType = UNSET


class Problem(Struct, kw_only=True):
    """An RFC 9457 problem document: the body of every error response (the OpenAPI
    document's schema, and what the Python client decodes)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemField] | UnsetType = UNSET
    # A run-final problem's run status (succeeded, failed, skipped or cancelled).
    run_status: str | UnsetType = UNSET


@dataclass(frozen=True, slots=True)
class FieldError:
    """One bad field of a request: `field` is its JSON path, `message` says what is wrong."""

    field: str
    message: str

    @classmethod
    def from_msgspec(cls, message: str, field: str = "") -> FieldError:
        """Name the field of a msgspec error ("Expected `int` - at `$.a.b`" → a.b).

        `field` is where the error is, when the caller knows it; a missing or unknown
        field's own name is appended to it.
        """
        text, _, at = message.partition(" - at `$")
        path = at.rstrip("`").lstrip(".") or field
        named = _NAMED_FIELD.search(text)
        if named is not None:
            path = f"{path}.{named.group(1)}" if path else named.group(1)
        return cls(path or "body", text)


class InvalidRequest(SchedulerError):
    """The request is invalid."""

    status_code = 400

    def __init__(self, errors: list[FieldError], detail: str | None = None) -> None:
        super().__init__(detail or "; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors

    @classmethod
    def field(cls, field: str, message: str) -> InvalidRequest:
        """A request with one bad field."""
        return cls([FieldError(field, message)])
