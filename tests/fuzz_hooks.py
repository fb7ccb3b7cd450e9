"""schemathesis hooks for tests/test_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

A check that every error is a problem document, and job bodies that mostly pass the
rules no JSON Schema states (a cron expression that fires, a real time zone, a public
webhook host), so that generated names, attributes and targets reach the database.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import use_after_free

# Routes that SPEC keeps answering after their job is deleted: a job's audit trail
# outlives it (§8, GET /jobs/{id}/audit is a 200 for a deleted job's id).
KEPT_AFTER_DELETE = {"/jobs/{job_id}/audit"}

PROBLEM_FIELDS = {"type": str, "title": str, "status": int, "detail": str}
SCHEDULES = ["*/5 * * * *", "@every 30s", "@daily", "0 9 * * MON-FRI", "30 2 * * *", "@hourly"]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]
JOB_BODIES = {
    ("POST", "/jobs"),
    ("PATCH", "/jobs/{job_id}"),
    ("PUT", "/jobs/by-key/{key}"),
    ("PATCH", "/jobs/by-key/{key}"),
}


@schemathesis.check
def errors_are_problem_documents(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """Every 4xx and 5xx is an RFC 9457 problem document stating its own status."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/problem+json"), (
        f"{response.status_code} answered as {content_type!r}, not a problem document"
    )
    problem = response.json()
    assert isinstance(problem, dict), problem
    for name, kind in PROBLEM_FIELDS.items():
        assert isinstance(problem.get(name), kind), f"problem field {name!r}: {problem}"
    assert problem["status"] == response.status_code, problem
    return True


@schemathesis.check
def use_after_free_but_history(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """schemathesis's use_after_free, but for the history a deleted job leaves."""
    if case.path in KEPT_AFTER_DELETE:
        return None
    result: bool | None = use_after_free(ctx, response, case)
    return result


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """Give three in four generated job bodies (and previews) a valid schedule, zone and
    webhook host."""
    if case.meta is None or case.meta.generation.mode.is_negative:
        return case  # negative cases must stay invalid
    if case.path == "/schedules/preview" and isinstance(case.query, dict):
        return _preview(case)
    if (case.method.upper(), case.path) not in JOB_BODIES or not isinstance(case.body, dict):
        return case
    body: dict[str, Any] = dict(case.body)
    pick = zlib.crc32(json.dumps(body, sort_keys=True, default=str).encode())
    if pick % 4 == 0:
        return case  # keep some wholly random bodies for the validation paths
    if case.method.upper() in ("POST", "PUT") or "schedule" in body:
        body["schedule"] = SCHEDULES[pick % len(SCHEDULES)]
        body.pop("interval", None)
    if isinstance(case.path_parameters, dict) and "key" in case.path_parameters:
        # A few keys, so that PUTs create, replace and leave jobs alone, and PATCHes find them.
        case.path_parameters = {**case.path_parameters, "key": f"fuzz/key-{pick % 5}"}
        body.pop("key", None)
    if "timezone" in body:
        body["timezone"] = ZONES[pick % len(ZONES)]
    target = body.get("target")
    if isinstance(target, dict) and target.get("type") == "http":
        body["target"] = {**target, "url": f"https://example.com/hooks/{pick}"}
    case.body = body
    return case


def _preview(case: schemathesis.Case) -> schemathesis.Case:
    query: dict[str, Any] = dict(case.query or {})
    pick = zlib.crc32(json.dumps(query, sort_keys=True, default=str).encode())
    if pick % 4 == 0:
        return case
    query["schedule"] = SCHEDULES[pick % len(SCHEDULES)]
    if "timezone" in query:
        query["timezone"] = ZONES[pick % len(ZONES)]
    if "after" in query:
        query["after"] = f"20{pick % 90 + 10}-0{pick % 9 + 1}-1{pick % 9}T0{pick % 10}:30:00Z"
    case.query = query
    return case


@schemathesis.hook
def filter_query(ctx: schemathesis.HookContext, query: dict[str, Any] | None) -> bool:
    """Leave out a `tag` filter that is not a list: on the wire `?tag=false` is the list
    of the one tag "false", a valid one, so schemathesis's "not an array" case is not one
    HTTP can carry (a tag that breaks the pattern still reaches the API as a list)."""
    if not query or "tag" not in query:
        return True
    return isinstance(query["tag"], list) or query["tag"] is None
