"""Hostile input: schemathesis fuzzes every operation of /api/openapi.json against a real
`scheduler-svc serve` on the test database. No 5xx, every error a problem document,
every response as documented.

schemathesis runs as its own command (`st run`): its lazy pytest loader does not run
under pytest 9, and the command brings every phase: coverage (boundary and malformed
values), fuzzing, and stateful (create a job, then use its id). Bounded: FUZZ_EXAMPLES
examples per operation in each pass, passes repeated until FUZZ_MAX_TIME_S is spent, so
the run takes that long and no longer. The number of generated requests is printed in
the session's output; hooks and the problem-document check are in fuzz_hooks.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.common import wait_ready
from tests.fuzz_hooks import PROBLEM_FIELDS
from tests.helpers import cli_env, free_port, run_cli, spawn_cli, stop

# Every test here runs against `scheduler-svc serve` as a process.
pytestmark = pytest.mark.slow

FUZZ_EXAMPLES = int(os.environ.get("SCHEDULER_FUZZ_EXAMPLES", "50"))
FUZZ_MAX_TIME_S = int(os.environ.get("SCHEDULER_FUZZ_MAX_TIME_S", "60"))
ROOT = Path(__file__).resolve().parent.parent

# What every response must satisfy (errors_are_problem_documents is in fuzz_hooks.py).
# positive_data_acceptance is left out on purpose: a request that matches the schema can
# still be refused (a cron expression that never fires, an unknown time zone, a private
# webhook host), which no JSON Schema expresses.
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    # use_after_free, but for a deleted job's audit trail, which SPEC keeps (fuzz_hooks.py).
    "use_after_free_but_history",
    "ensure_resource_availability",
    "ignored_auth",
    "errors_are_problem_documents",
]


@pytest.fixture(scope="module")
def fuzzed_service(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """`scheduler-svc serve` on the test database, and an admin key for it."""
    tmp_path = tmp_path_factory.mktemp("fuzz")
    env = cli_env(
        database_url,
        SCHEDULER_LOG_LEVEL="warning",
        # The limiter has its own tests; here it would only cut the fuzzing short.
        SCHEDULER_RATE_LIMIT="1000000/minute",
    )
    created = run_cli(tmp_path, "keys", "create", "--tenant", "fuzz", "--scopes", "admin", env=env)
    assert created.returncode == 0, created.stderr
    port = free_port()
    log_path = tmp_path / "service.log"
    with log_path.open("w") as log:
        # HTTP only: a worker would run the fuzzed jobs, and their webhooks name hosts
        # on the internet.
        serve = ["serve", "--port", str(port), "--role", "api"]
        process = spawn_cli(tmp_path, *serve, env=env, log=log)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process)
            yield {"url": url, "key": created.stdout.splitlines()[-1], "dir": tmp_path}
        finally:
            stop(process)
    events = [json.loads(line) for line in log_path.read_text().splitlines()]
    errors = [e for e in events if e.get("level") in ("error", "critical")]
    assert not errors, f"the service logged errors while fuzzed: {errors[:3]}"


@pytest.mark.timeout(FUZZ_MAX_TIME_S + 180)
def test_no_input_breaks_the_api(
    fuzzed_service: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = fuzzed_service["dir"] / "schemathesis.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{fuzzed_service['url']}/api/openapi.json",
        "--header",
        f"Authorization: Bearer {fuzzed_service['key']}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(FUZZ_EXAMPLES),
        "--max-time",
        str(FUZZ_MAX_TIME_S),
        "--seed",
        "20261127",
        # One worker: CPython 3.11's ast.parse, which hypothesis calls to describe
        # filters, is not thread-safe ("AST constructor recursion depth mismatch").
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--report",
        "json",
        "--report-json-path",
        str(report_path),
        "--no-color",
    ]
    result = subprocess.run(
        command,
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
            "PYTHONPATH": str(ROOT),
        },
        # A fresh directory: no schemathesis.toml (the command line is the whole
        # configuration), and its cache and hypothesis database stay out of the checkout.
        cwd=fuzzed_service["dir"],
        capture_output=True,
        text=True,
        timeout=FUZZ_MAX_TIME_S + 150,
    )
    (fuzzed_service["dir"] / "schemathesis.out").write_text(result.stdout + result.stderr)
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    cases = report.get("test_cases", {})
    summary = (
        f"schemathesis: {cases.get('generated', '?')} requests generated over "
        f"{report.get('operations', {}).get('tested', '?')} operations in "
        f"{report.get('running_time', 0):.1f}s; {cases.get('with_failures', '?')} failed, "
        f"{cases.get('errored', '?')} errored"
    )
    with capsys.disabled():  # into the session's output, passed or failed
        print(f"\n{summary}")
    assert result.returncode == 0, f"{summary}\n{result.stdout[-20000:]}\n{result.stderr[-3000:]}"
    assert report["operations"]["tested"] == report["operations"]["total"] >= 10
    assert cases["generated"] >= 10 * report["operations"]["tested"]


# Cross-site requests (scheduler_svc/csrf.py), by hand beside the fuzzer's: a body that
# is not JSON on every route that may take one, sent with a foreign Host, which a keyed
# service answers.
NOT_JSON = [
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "text/json",
    "application/jsonx",
    "",
]


def test_non_json_bodies_are_415_under_any_host(fuzzed_service: dict[str, Any]) -> None:
    key = {"Authorization": f"Bearer {fuzzed_service['key']}"}
    foreign = {**key, "Host": "evil.example:3000", "Origin": "http://evil.example"}
    body = json.dumps({"name": "cross-site", "schedule": "@daily"}).encode()
    with httpx.Client(base_url=fuzzed_service["url"], timeout=10) as http:
        json_type = {**foreign, "Content-Type": "application/json; charset=utf-8"}
        created = http.post("/jobs", content=body, headers=json_type)
        assert created.status_code == 201, created.text
        job = created.json()
        routes = [
            ("POST", "/jobs"),
            ("PATCH", f"/jobs/{job['id']}"),
            ("DELETE", f"/jobs/{job['id']}"),
        ]
        routes += [
            ("POST", f"/jobs/{job['id']}/{action}") for action in ("pause", "resume", "trigger")
        ]
        for method, path in routes:
            for content_type in NOT_JSON:
                headers = {**foreign, "Content-Type": content_type}
                response = http.request(method, path, content=body, headers=headers)
                assert response.status_code == 415, (method, path, content_type, response.text)
                assert response.headers["content-type"].startswith("application/problem+json")
                problem = response.json()
                assert all(isinstance(problem.get(k), t) for k, t in PROBLEM_FIELDS.items())
        after = http.get(f"/jobs/{job['id']}", headers=foreign)
        assert after.status_code == 200
        assert (after.json()["version"], after.json()["status"]) == (job["version"], "active")
        assert http.get(f"/jobs/{job['id']}/runs", headers=foreign).json() == []


# Deep nesting (scheduler_svc/bodies.py), by hand: no JSON Schema says how deep a value
# may nest, so the fuzzer never sends 10,000 levels. A field's value is level 1.
def nested_attributes(levels: int) -> bytes:
    value = b'{"k":' * (levels - 1) + b"{}" + b"}" * (levels - 1)
    return b'{"name":"deep","schedule":"@daily","attributes":' + value + b"}"


@pytest.mark.parametrize(("levels", "status"), [(32, 201), (33, 400), (10_000, 400)])
def test_json_nested_past_32_levels_is_a_400(
    fuzzed_service: dict[str, Any], levels: int, status: int
) -> None:
    headers = {
        "Authorization": f"Bearer {fuzzed_service['key']}",
        "Content-Type": "application/json",
    }
    with httpx.Client(base_url=fuzzed_service["url"], timeout=10) as http:
        response = http.post("/jobs", content=nested_attributes(levels), headers=headers)
    assert response.status_code == status, response.text
    if status == 400:
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert all(isinstance(problem.get(k), t) for k, t in PROBLEM_FIELDS.items())
        assert [e["field"] for e in problem["errors"]] == ["attributes.k"]
