"""Domain errors. Each docstring is its default message; `app` maps them to problem details."""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAMED_FIELD = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")


class SchedulerError(Exception):
    """Something went wrong."""

    status_code = 500

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or (self.__doc__ or "").strip())

    @property
    def detail(self) -> str:
        return str(self)


class NotFound(SchedulerError):
    """No such resource."""

    status_code = 404


class VersionMismatch(SchedulerError):
    """The resource has changed since the version named in If-Match."""

    status_code = 412


class IdempotencyConflict(SchedulerError):
    """This Idempotency-Key was already used with a different request body."""

    status_code = 409


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
