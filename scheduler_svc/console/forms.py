"""The job form: its fields as the browser posts them (urlencoded text), turned into the
API's own request bodies (JobCreate, JobPatch) so that the API's rules check them, and
the API's field errors turned back into messages next to the form's fields."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import msgspec

from scheduler_svc.api.jobs import stored_target
from scheduler_svc.errors import FieldError, InvalidRequest
from scheduler_svc.models import JobCreate, JobPatch, JobRow

TARGET_TYPES = ("log", "http", "handler")
METHODS = ("POST", "GET", "PUT", "PATCH", "DELETE")
# The API's field (a JSON path) → the form's field that shows its error.
_FIELD_OF = {
    "name": "name",
    "schedule": "schedule",
    "interval": "schedule",
    "timezone": "timezone",
    "target": "target_type",
    "target.type": "target_type",
    "target.url": "url",
    "target.method": "method",
    "target.name": "handler",
    "tags": "tags",
    "max_attempts": "max_attempts",
    "timeout_s": "timeout_s",
    "overlap": "overlap",
    "jitter_s": "jitter_s",
}
_INDEX = re.compile(r"\[\d+\]")


@dataclass(frozen=True, slots=True)
class JobForm:
    """The job form's values as text, and the errors to show beside them."""

    name: str = ""
    schedule: str = ""
    timezone: str = "UTC"
    target_type: str = "log"
    url: str = ""
    method: str = "POST"
    handler: str = ""
    tags: str = ""
    max_attempts: str = "3"
    timeout_s: str = "30"
    overlap: str = "forbid"
    jitter_s: str = "0"
    paused: bool = False
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> JobForm:
        return cls()

    @classmethod
    def of(cls, job: JobRow) -> JobForm:
        """The edit form of a job, filled with its settings."""
        target = job.target
        return cls(
            name=job.name,
            schedule=job.schedule,
            timezone=job.timezone,
            target_type=str(target.get("type", "log")),
            url=str(target.get("url", "")),
            method=str(target.get("method", "POST")),
            handler=str(target.get("name", "")),
            tags=", ".join(job.tags),
            max_attempts=str(job.max_attempts),
            timeout_s=str(job.timeout_s),
            overlap=job.overlap,
            jitter_s=f"{job.jitter_s:g}",
        )

    @classmethod
    def posted(cls, data: Mapping[str, str]) -> JobForm:
        """The form as posted (unknown fields ignored, missing ones at their defaults)."""
        defaults = cls()

        def text(name: str) -> str:
            value = data.get(name)
            return value.strip() if isinstance(value, str) else getattr(defaults, name)

        return cls(
            name=text("name"),
            schedule=text("schedule"),
            timezone=text("timezone") or "UTC",
            target_type=text("target_type"),
            url=text("url"),
            method=text("method").upper(),
            handler=text("handler"),
            tags=text("tags"),
            max_attempts=text("max_attempts"),
            timeout_s=text("timeout_s"),
            overlap=text("overlap"),
            jitter_s=text("jitter_s"),
            paused=data.get("paused") in ("on", "true", "1"),
        )

    def with_errors(self, error: InvalidRequest) -> JobForm:
        """This form with the API's errors placed beside their fields."""
        errors: dict[str, str] = {}
        for item in error.errors:
            where = _FIELD_OF.get(_INDEX.sub("", item.field), "form")
            errors.setdefault(where, item.message)
        return replace(self, errors=errors)

    def fields(self, current_target: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The API's body fields this form sets; InvalidRequest for text that is not a
        number where one is needed. A webhook keeps its stored headers and body when the
        form changes its URL or method (the form does not show them)."""
        errors: list[FieldError] = []
        body: dict[str, Any] = {
            "name": self.name,
            "schedule": self.schedule,
            "timezone": self.timezone,
            "tags": [t.strip() for t in self.tags.split(",") if t.strip()],
            "overlap": self.overlap,
            "target": self._target(current_target),
        }
        for name, kind in (("max_attempts", int), ("timeout_s", int), ("jitter_s", float)):
            value = getattr(self, name)
            try:
                body[name] = kind(value)
            except ValueError:
                noun = "a whole number" if kind is int else "a number"
                errors.append(FieldError(name, f"must be {noun}, not {value!r}"))
        if errors:
            raise InvalidRequest(errors)
        return body

    def _target(self, current: Mapping[str, Any] | None) -> dict[str, Any]:
        if self.target_type == "http":
            kept = dict(current) if current and current.get("type") == "http" else {}
            return {**kept, "type": "http", "url": self.url, "method": self.method}
        if self.target_type == "handler":
            return {"type": "handler", "name": self.handler}
        return {"type": self.target_type}

    def to_create(self) -> JobCreate:
        """The body of POST /jobs this form stands for."""
        return _convert({**self.fields(), "paused": self.paused}, JobCreate)

    def to_patch(self, job: JobRow) -> JobPatch:
        """The body of PATCH /jobs/{id} this form stands for."""
        return _convert(self.fields(stored_target(job)), JobPatch)


T = TypeVar("T")


def _convert(body: dict[str, Any], into: type[T]) -> T:
    try:
        return msgspec.convert(body, into)
    except msgspec.ValidationError as exc:
        raise InvalidRequest([FieldError.from_msgspec(str(exc))]) from None
