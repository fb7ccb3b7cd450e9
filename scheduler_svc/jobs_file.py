"""The jobs file of `scheduler-svc apply` and `export`: YAML holding a top-level `jobs:`
list of job objects with the API's field names, each with a `key`.

Reading one checks all of it and returns every error at once, each naming its place
(`jobs.yaml:14: jobs[3].schedule: …`): YAML syntax, a key twice in a mapping, unknown
fields, wrong types and ranges (the API's own models decide), schedules and time zones,
a job key used twice, and `${NAME}` of an unset environment variable. `$${` writes a
literal `${`. Top-level keys starting `x-` are ignored, a place for YAML anchors.
Writing one (export) gives the fields that PUT /jobs/by-key takes, in a stable order.
No I/O beyond what the caller hands in, and no network.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import yaml

from scheduler_svc import schedule
from scheduler_svc.models import JobKey, JobPut

SCHEMA_PATH = Path(__file__).with_name("jobs.schema.json")
# `${NAME}`, or `$${…}`, which stands for a literal `${…}`.
_VARIABLE = re.compile(r"\$(\$)?\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_DEPTH = 64
# Fields a job file leaves to the service or to apply: what `export` leaves out.
SET_BY_APPLY = frozenset({"managed_by"})


class KeyedJob(JobPut, kw_only=True, forbid_unknown_fields=True):
    """One job of the file: what PUT /jobs/by-key/{key} takes, its key required."""

    key: JobKey


def _without_unset(type_: Any) -> Any:
    args = tuple(arg for arg in typing.get_args(type_) if arg is not msgspec.UnsetType)
    if typing.get_origin(type_) in {typing.Union, types.UnionType} and len(args) == 1:
        return args[0]
    return type_


class JobsFile(msgspec.Struct, forbid_unknown_fields=True):
    """The file: its jobs."""

    jobs: list[KeyedJob]


# Each field's type, which one value is checked against (UNSET is no value a file has).
FIELDS: dict[str, Any] = {
    field.name: _without_unset(field.type)
    for field in msgspec.structs.fields(KeyedJob)
    if field.name not in SET_BY_APPLY
}
# The order export writes a job's fields in: its key and name first.
FIELD_ORDER = ("key", "name", *(name for name in FIELDS if name not in {"key", "name"}))


@dataclass(frozen=True, slots=True)
class FileError:
    """One thing wrong with a file: where (a path such as `jobs[3].schedule`, and the
    line when known) and what."""

    path: str
    message: str
    line: int | None = None

    def format(self, filename: str) -> str:
        """`jobs.yaml:14: jobs[3].schedule: …`, on one line."""
        where = f"{filename}:{self.line}" if self.line else filename
        place = f" {self.path}:" if self.path else ""
        return " ".join(f"{where}:{place} {self.message}".split())


@dataclass(frozen=True, slots=True)
class Item:
    """A job of the file, checked: its key, the body to PUT (environment variables
    substituted, `key` taken out), and where it is: its path, and the line of each of
    its values by path (for errors the service finds in them)."""

    key: str
    body: dict[str, Any]
    path: str
    lines: Mapping[str, int] = field(default_factory=dict)

    @property
    def line(self) -> int | None:
        """The line the job starts on."""
        return self.lines.get(self.path)


_Loader = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


def load(text: str, environ: Mapping[str, str]) -> tuple[list[Item], list[FileError]]:
    """The jobs of a file's text, with `${NAME}` read from `environ`; and every error.

    Any error means the items must not be applied."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        return [], [FileError("", f"not valid YAML: {problem}", line)]
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    errors: list[FileError] = []
    if node is not None:
        _note_lines(node, "", lines, errors, 0)
    if not isinstance(data, dict) or "jobs" not in data:
        errors.append(FileError("", "expected a mapping with a `jobs:` list at the top", 1))
        return [], errors
    for name in data:
        if name != "jobs" and not (isinstance(name, str) and name.startswith("x-")):
            errors.append(FileError(str(name), "unknown top-level key (only `jobs` and x-…)"))
    jobs = data["jobs"]
    if jobs is None:
        jobs = []
    if not isinstance(jobs, list):
        errors.append(FileError("jobs", f"expected a list of jobs, got {_kind(jobs)}"))
        return [], _placed(errors, lines)
    items = []
    first_of: dict[str, str] = {}
    for index, job in enumerate(jobs):
        path = f"jobs[{index}]"
        key = job.get("key") if isinstance(job, dict) else None
        if isinstance(key, str) and key in first_of:
            message = f"duplicate key {key!r} (also {first_of[key]})"
            errors.append(FileError(f"{path}.key", message))
            continue
        if isinstance(key, str):
            first_of[key] = path
        item = _item(job, path, environ, errors)
        if item is not None:
            items.append(Item(item.key, item.body, path, lines))
    return items, _placed(errors, lines)


def _item(job: Any, path: str, environ: Mapping[str, str], errors: list[FileError]) -> Item | None:
    """A job of the file checked field by field, so that each bad field is reported."""
    if not isinstance(job, dict):
        errors.append(FileError(path, f"expected a job (a mapping), got {_kind(job)}"))
        return None
    before = len(errors)
    body = {}
    for name, raw in job.items():
        where = f"{path}.{name}"
        if name in SET_BY_APPLY:
            errors.append(FileError(where, "is set by apply (its --owner): leave it out"))
            continue
        if name not in FIELDS:
            errors.append(FileError(where, f"unknown field{_did_you_mean(name)}"))
            continue
        value = substitute(raw, where, environ, errors)
        try:
            msgspec.convert(value, FIELDS[name])
        except msgspec.ValidationError as exc:
            errors.append(_convert_error(str(exc), where))
            continue
        body[name] = value
    for name in ("key", "name"):
        if name not in job:
            errors.append(FileError(path, f"missing required field `{name}`"))
    if "schedule" not in job and "interval" not in job:
        errors.append(FileError(path, "missing required field `schedule`"))
    _check_schedule(body, path, errors)
    if len(errors) > before:
        return None
    key = body.pop("key")
    return Item(key, body, path)


def _check_schedule(body: dict[str, Any], path: str, errors: list[FileError]) -> None:
    """The schedule and zone as the service reads them (its minimum interval, a setting of
    the service, is left to its dry run)."""
    for name in ("schedule", "interval", "timezone"):
        if isinstance(body.get(name), str):
            problem = _schedule_problem(name, body[name])
            if problem is not None:
                errors.append(FileError(f"{path}.{name}", problem))


# A file holds many jobs on few schedules, and parsing a cron expression takes a
# millisecond or two.
@functools.lru_cache(maxsize=1024)
def _schedule_problem(name: str, text: str) -> str | None:
    try:
        if name == "timezone":
            schedule.parse_timezone(text)
        else:
            schedule.parse(text)
    except schedule.ScheduleError as exc:
        return str(exc)
    return None


def substitute(value: Any, path: str, environ: Mapping[str, str], errors: list[FileError]) -> Any:
    """`value` with `${NAME}` in each string (at any depth) replaced by environ[NAME] and
    `$${` by `${`; an unset or misspelt variable is an error at its path."""

    def walk(value: Any, path: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            errors.append(FileError(path, f"nests more than {_MAX_DEPTH} levels deep"))
            return None
        if isinstance(value, str):
            return _VARIABLE.sub(lambda match: replace(match, path), value)
        if isinstance(value, list):
            return [walk(each, f"{path}[{i}]", depth + 1) for i, each in enumerate(value)]
        if isinstance(value, dict):
            return {k: walk(each, f"{path}.{k}", depth + 1) for k, each in value.items()}
        return value

    def replace(match: re.Match[str], path: str) -> str:
        escaped, name = match.groups()
        if escaped:
            return "${" + name + "}"
        if not _NAME.fullmatch(name):
            errors.append(
                FileError(
                    path, f"${{{name}}} is no variable name (for a literal '${{', write '$${{')"
                )
            )
            return match.group()
        if name not in environ:
            errors.append(FileError(path, f"environment variable {name} is not set"))
            return match.group()  # kept, so the error does not cause others
        return environ[name]

    return walk(value, path, 0)


def _convert_error(message: str, where: str) -> FileError:
    """A msgspec error about one field's value, at its path ("Expected `int`, got `str` -
    at `$.target.url`" → jobs[3].target.url: expected `int`, got `str`)."""
    text, _, at = message.partition(" - at `$")
    path = where + at.rstrip("`")
    named = re.search(r"(?:missing required|contains unknown) field `([^`]+)`", text)
    if named is not None and "unknown" in text:
        return FileError(f"{path}.{named.group(1)}", "unknown field")
    return FileError(path, text[:1].lower() + text[1:])


def _did_you_mean(name: Any) -> str:
    close = difflib.get_close_matches(str(name), FIELDS, n=1)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _kind(value: Any) -> str:
    named = {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value))
    if named is not None:
        return named
    kind = type(value).__name__
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _note_lines(
    node: yaml.Node, path: str, lines: dict[str, int], errors: list[FileError], depth: int
) -> None:
    """Where each value of the document starts (its path → line, from 1); and each key
    given twice in a mapping, an error (PyYAML would keep the last silently)."""
    lines.setdefault(path, node.start_mark.line + 1)
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            child = f"{path}.{key.value}" if path else key.value
            line = key.start_mark.line + 1
            if key.value in seen and lines.get(f"twice {child}") != line:
                lines[f"twice {child}"] = line
                errors.append(FileError(child, "appears twice in this mapping", line))
            seen.add(key.value)
            lines.setdefault(child, line)
            _note_lines(value, child, lines, errors, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, value in enumerate(node.value):
            _note_lines(value, f"{path}[{index}]", lines, errors, depth + 1)


def _placed(errors: list[FileError], lines: Mapping[str, int]) -> list[FileError]:
    """The errors with the line of their path, or of its nearest enclosing value."""
    placed = []
    for error in errors:
        path, line = error.path, error.line
        while line is None:
            line = lines.get(path)
            parent = _PARENT.sub("", path)
            if parent == path:
                break
            path = parent
        placed.append(FileError(error.path, error.message, line))
    return sorted(placed, key=lambda error: error.line or 0)


_PARENT = re.compile(r"(\.[^.\[]*|\[[^\]]*\])$")


def placed_server_error(item: Item, field: str, message: str) -> FileError:
    """An error the service reported about a field of `item`'s body, at its place."""
    path = item.path if field in {"", "body", "$"} else f"{item.path}.{field.lstrip('$.')}"
    return _placed([FileError(path, message)], item.lines)[0]


# --- writing ---------------------------------------------------------------------------


def dump(jobs: Iterable[Mapping[str, Any]]) -> str:
    """A jobs file of jobs as the API shows them (plain data), sorted by key: the fields
    a PUT takes, `status` as `paused`, strings escaped so that they read back as they are."""
    written = []
    for job in sorted(jobs, key=lambda job: str(job.get("key"))):
        fields = {name: job[name] for name in FIELD_ORDER if name in job and name != "interval"}
        fields["paused"] = job.get("status") == "paused"
        written.append(_escaped(fields))
    text: str = yaml.safe_dump(
        {"jobs": written}, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
    )
    return text


def _escaped(value: Any) -> Any:
    """`value` as a file must spell it to read back unchanged: each `${` as `$${`."""
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, list):
        return [_escaped(each) for each in value]
    if isinstance(value, dict):
        return {key: _escaped(each) for key, each in value.items()}
    return value


# --- the JSON Schema ---------------------------------------------------------------------

_DESCRIPTIONS = {
    "key": "Unique per tenant; what apply matches the job by.",
    "name": "1 to 200 characters.",
    "schedule": "Cron (5 or 6 fields), a macro (@daily …), '@every 1h30m' or '@at <RFC 3339>'.",
    "interval": "The old service's name for schedule.",
    "timezone": "IANA zone the schedule is read in (default UTC).",
    "attributes": "A JSON object passed to the target.",
    "target": "Where a run goes: log (default), http (a webhook) or handler.",
    "paused": "Left out: the job keeps its status (apply does not resume a paused job).",
}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the file, from the API's models, for editors to check it by."""
    generated = msgspec.json.schema(JobsFile)
    defs = generated["$defs"]
    defs["JobsFile"]["patternProperties"] = {"^x-": {}}
    job = defs["KeyedJob"]
    for name in SET_BY_APPLY:
        job["properties"].pop(name, None)
    job["properties"]["paused"].pop("default", None)
    for name, text in _DESCRIPTIONS.items():
        job["properties"][name]["description"] = text
    job["anyOf"] = [{"required": ["schedule"]}, {"required": ["interval"]}]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "scheduler-svc jobs file (scheduler-svc apply -f)",
        **generated,
    }


def schema_text() -> str:
    """json_schema() as the package ships it (SCHEMA_PATH)."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
