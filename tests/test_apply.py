"""`scheduler-svc apply` and `export` against the real API over HTTP.

The commands run in this process, in a thread (the app serves in this event loop); the
last test runs apply as a user does, as a process."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import yaml

from scheduler_svc import cli, jobs_file
from tests.helpers import SCHEDULER_SVC, cli_env, free_port

pytestmark = pytest.mark.timeout(60)

HOOK = "https://example.com/hook"


@pytest.fixture(autouse=True)
def quiet_service() -> Iterator[None]:
    """The app serving in this process logs each request: into a list, not the output
    the commands are judged by."""
    with structlog.testing.capture_logs():
        yield


async def scheduler_svc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `scheduler-svc <args>` in this process; its exit code, stdout and stderr."""

    def run() -> int | str | None:
        with pytest.raises(SystemExit) as exited:
            cli.main(list(args))
        return exited.value.code

    code = await asyncio.to_thread(run)
    assert isinstance(code, int), code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def write(path: Path, jobs: list[dict[str, Any]]) -> str:
    path.write_text(yaml.safe_dump({"jobs": jobs}, sort_keys=False))
    return str(path)


def many(count: int) -> list[dict[str, Any]]:
    return [
        {
            "key": f"team/job-{i:03d}",
            "name": f"job {i}",
            "schedule": "@every 1h",
            "attributes": {"i": i},
        }
        for i in range(count)
    ]


def plan_line(out: str) -> str:
    [line] = [line for line in out.splitlines() if line.startswith("Plan: ")]
    return line


async def all_jobs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/jobs", params={"limit": 500})
    assert response.status_code == 200
    assert "next" not in response.links
    jobs: list[dict[str, Any]] = response.json()
    return jobs


async def by_key(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.get(f"/jobs/by-key/{key}")


@pytest.mark.slow
async def test_apply_then_prune_changes_exactly_what_the_file_changed(
    client: httpx.AsyncClient, api_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    jobs = many(200)
    path = write(tmp_path / "jobs.yaml", jobs)
    code, out, err = await scheduler_svc(capsys, "apply", "-f", path, "--url", api_url)
    assert (code, err) == (0, "")
    assert plan_line(out) == "Plan: 200 to create, 0 to update, 0 to delete, 0 unchanged."
    assert out.count("+ create ") == 200
    assert out.splitlines()[-1] == "Applied: 200 created, 0 updated, 0 deleted."
    before = {job["key"]: job for job in await all_jobs(client)}
    assert len(before) == 200
    assert {job["managed_by"] for job in before.values()} == {"apply"}

    jobs[5]["schedule"] = "0 4 * * *"
    jobs[6]["target"] = {"type": "http", "url": HOOK}
    jobs[7]["name"] = "renamed"
    del jobs[9], jobs[8]
    write(tmp_path / "jobs.yaml", jobs)
    args = ("apply", "-f", path, "--url", api_url, "--prune", "--detailed-exitcode")
    code, out, err = await scheduler_svc(capsys, *args)
    assert (code, err) == (2, "")
    assert out.splitlines() == [
        "~ update team/job-005 (changed: schedule)",
        "~ update team/job-006 (changed: target)",
        "~ update team/job-007 (changed: name)",
        "- delete team/job-008",
        "- delete team/job-009",
        "Plan: 0 to create, 3 to update, 2 to delete, 195 unchanged.",
        "Applied: 0 created, 3 updated, 2 deleted.",
    ]
    after = {job["key"]: job for job in await all_jobs(client)}
    assert set(before) - set(after) == {"team/job-008", "team/job-009"}
    changed = {key for key in after if after[key]["version"] != before[key]["version"]}
    assert changed == {"team/job-005", "team/job-006", "team/job-007"}
    assert after["team/job-005"]["schedule"] == "0 4 * * *"
    assert after["team/job-006"]["target"]["url"] == HOOK
    assert after["team/job-007"]["name"] == "renamed"

    code, out, err = await scheduler_svc(capsys, *args)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "Plan: 0 to create, 0 to update, 0 to delete, 198 unchanged.",
        "Nothing to do.",
    ]
    assert {job["key"]: job["version"] for job in await all_jobs(client)} == {
        key: job["version"] for key, job in after.items()
    }


async def test_export_then_apply_dry_run_changes_nothing(
    client: httpx.AsyncClient,
    api_url: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOOK_TOKEN", "s3cret-token")
    jobs = [
        {
            "key": "hooks/with-secret",
            "name": "signed ${HOOK_TOKEN:-no} hook",  # no such variable name: an error
            "schedule": "*/5 * * * *",
        }
    ]
    path = write(tmp_path / "jobs.yaml", jobs)
    code, _, err = await scheduler_svc(capsys, "apply", "-f", path, "--url", api_url)
    assert code == 1
    assert "jobs[0].name: ${HOOK_TOKEN:-no} is no variable name" in err
    jobs = [
        {
            "key": "hooks/with-secret",
            "name": "costs $${PRICE}",
            "schedule": "*/5 * * * *",
            "timezone": "Europe/Paris",
            "attributes": {"nested": {"list": [1, "two", None]}},
            "target": {
                "type": "http",
                "url": HOOK,
                "headers": {"Authorization": "Bearer ${HOOK_TOKEN}", "X-Plain": "yes"},
                "body": {"hello": "world"},
            },
            "max_attempts": 7,
            "backoff_s": 1.5,
            "misfire_policy": "skip",
            "overlap": "allow",
        },
        {"key": "paused-later", "name": "paused later", "schedule": "@daily"},
        {"key": "once", "name": "done", "schedule": "@at 2001-01-01T00:00:00Z"},
    ]
    write(tmp_path / "jobs.yaml", jobs)
    code, out, err = await scheduler_svc(capsys, "apply", "-f", path, "--url", api_url)
    assert (code, err) == (0, "")
    # A maintenance window, and a job of another owner: neither is the file's business.
    assert (
        await client.post(f"/jobs/{(await by_key(client, 'paused-later')).json()['id']}/pause")
    ).status_code == 200
    other = {"name": "theirs", "schedule": "@daily", "managed_by": "terraform"}
    assert (await client.put("/jobs/by-key/theirs", json=other)).status_code == 201

    code, exported, err = await scheduler_svc(capsys, "export", "--url", api_url)
    assert (code, err) == (0, "")
    assert "s3cret" not in exported
    assert "Authorization: '***'" in exported
    assert "theirs" not in exported
    document = yaml.safe_load(exported)
    assert [job["key"] for job in document["jobs"]] == ["hooks/with-secret", "once", "paused-later"]
    assert document["jobs"][0]["name"] == "costs $${PRICE}"
    assert [job["paused"] for job in document["jobs"]] == [False, False, True]
    assert not {"id", "version", "status", "managed_by", "next_run_at"} & set(document["jobs"][0])
    (tmp_path / "exported.yaml").write_text(exported)

    monkeypatch.delenv("HOOK_TOKEN")  # the export has no variable left to read
    args = ("apply", "-f", str(tmp_path / "exported.yaml"), "--url", api_url)
    code, out, err = await scheduler_svc(capsys, *args, "--dry-run", "--detailed-exitcode")
    assert (code, err) == (0, "")
    assert plan_line(out) == "Plan: 0 to create, 0 to update, 0 to delete, 3 unchanged."
    # apply judged that from the listing; the service, asked, agrees.
    items, errors = jobs_file.load(exported, {})
    assert (len(items), errors) == (3, [])
    for item in items:
        body = {**item.body, "managed_by": "apply"}
        plan = await client.put(f"/jobs/by-key/{item.key}?dry_run=true", json=body)
        assert plan.json() == {"action": "none", "changed": []}, item.key

    # The original file leaves `paused` out, so applying it keeps the window open.
    monkeypatch.setenv("HOOK_TOKEN", "s3cret-token")
    code, out, err = await scheduler_svc(
        capsys, "apply", "-f", path, "--url", api_url, "--detailed-exitcode"
    )
    assert (code, err) == (0, ""), out
    monkeypatch.setenv("HOOK_TOKEN", "rotated")
    code, out, err = await scheduler_svc(
        capsys, "apply", "-f", path, "--url", api_url, "--detailed-exitcode"
    )
    assert (code, err) == (2, "")
    assert "~ update hooks/with-secret (changed: target)" in out
    assert (await by_key(client, "paused-later")).json()["status"] == "paused"


async def test_a_file_with_five_errors_reports_each_and_changes_nothing(
    client: httpx.AsyncClient, api_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert (
        await client.post("/jobs", json={"name": "old", "schedule": "@daily"})
    ).status_code == 201
    text = """\
jobs:
  - key: fine
    name: fine
    schedule: "@hourly"
  - key: bad-cron
    name: bad cron
    schedule: "0 25 * * *"
  - key: bad-type
    name: bad type
    schedule: "@daily"
    timeout_s: soon
  - key: private-hook
    name: private hook
    schedule: "@daily"
    target: {type: http, url: "http://10.1.2.3/hook"}
  - key: fine
    name: twice
    schedule: "@daily"
  - key: env
    name: ${SCHEDULER_TEST_SURELY_UNSET}
    schedule: "@daily"
"""
    (tmp_path / "bad.yaml").write_text(text)
    args = ("apply", "-f", str(tmp_path / "bad.yaml"), "--url", api_url, "--detailed-exitcode")
    code, out, err = await scheduler_svc(capsys, *args)
    assert (code, out) == (1, "")
    lines = err.splitlines()
    name = str(tmp_path / "bad.yaml")
    assert lines[:5] == [
        f"{name}:7: jobs[1].schedule: invalid hour field '25'",
        f"{name}:11: jobs[2].timeout_s: expected `int`, got `str`",
        f"{name}:15: jobs[3].target.url: points at a private, loopback or link-local "
        "address, which is refused (SCHEDULER_WEBHOOK_ALLOW_PRIVATE)",
        f"{name}:16: jobs[4].key: duplicate key 'fine' (also jobs[0])",
        f"{name}:20: jobs[5].name: environment variable SCHEDULER_TEST_SURELY_UNSET is not set",
    ]
    assert lines[5:] == [f"scheduler-svc: 5 errors in {name}; nothing applied"]
    assert [job["name"] for job in await all_jobs(client)] == ["old"]


async def test_prune_deletes_only_its_owners_keyed_jobs(
    client: httpx.AsyncClient, api_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path / "jobs.yaml", many(3))
    assert (await scheduler_svc(capsys, "apply", "-f", path, "--url", api_url))[0] == 0
    ours = {"name": "ci's", "schedule": "@daily"}
    assert (
        await scheduler_svc(
            capsys,
            "apply",
            "-f",
            write(tmp_path / "ci.yaml", [{"key": "ci/one", **ours}]),
            "--url",
            api_url,
            "--owner",
            "ci",
        )
    )[0] == 0
    assert (await client.put("/jobs/by-key/by-hand", json=ours)).status_code == 201
    assert (
        await client.post(
            "/jobs", json={"name": "no key", "schedule": "@daily", "managed_by": "apply"}
        )
    ).status_code == 201

    empty = write(tmp_path / "empty.yaml", [])
    args = ("apply", "-f", empty, "--url", api_url, "--prune", "--detailed-exitcode")
    code, out, err = await scheduler_svc(capsys, *args, "--dry-run")
    assert (code, err) == (2, "")
    assert out.splitlines() == [
        "- delete team/job-000",
        "- delete team/job-001",
        "- delete team/job-002",
        "Plan: 0 to create, 0 to update, 3 to delete, 0 unchanged.",
        "Nothing applied (--dry-run).",
    ]
    assert len(await all_jobs(client)) == 6
    code, out, err = await scheduler_svc(capsys, *args)
    assert (code, err) == (2, "")
    left = sorted(str(job.get("key")) for job in await all_jobs(client))
    assert left == ["None", "by-hand", "ci/one"]
    code, out, err = await scheduler_svc(capsys, *args, "--owner", "ci")
    assert (code, out.splitlines()[0]) == (2, "- delete ci/one")
    assert sorted(str(job.get("key")) for job in await all_jobs(client)) == ["None", "by-hand"]


async def test_exit_codes(
    client: httpx.AsyncClient, api_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path / "jobs.yaml", many(1))
    detailed = ("apply", "-f", path, "--url", api_url, "--detailed-exitcode")
    assert (await scheduler_svc(capsys, *detailed, "--dry-run"))[0] == 2  # planned
    assert await all_jobs(client) == []
    assert (await scheduler_svc(capsys, *detailed))[0] == 2  # applied
    assert (await scheduler_svc(capsys, *detailed))[0] == 0  # nothing to change
    assert (await scheduler_svc(capsys, "apply", "-f", path, "--url", api_url))[0] == 0
    code, _, err = await scheduler_svc(capsys, "apply", "--detailed-exitcode", "--no-such-flag")
    assert code == 1
    assert err.startswith("scheduler-svc apply: ")
    assert (await scheduler_svc(capsys, "apply", "--no-such-flag", "-f", path))[0] == 2
    missing = ("apply", "-f", str(tmp_path / "missing.yaml"), "--url", api_url)
    code, _, err = await scheduler_svc(capsys, *missing, "--detailed-exitcode")
    assert code == 1
    assert re.fullmatch(r"scheduler-svc: cannot read .*missing\.yaml: .*\n", err)


@pytest.mark.slow  # the client's retries take a second or two
async def test_no_service_is_exit_code_1_after_the_files_own_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path / "jobs.yaml", [*many(1), {"key": "x", "name": "x"}])
    url = f"http://127.0.0.1:{free_port()}"
    args = ("apply", "-f", path, "--url", url, "--detailed-exitcode")
    code, out, err = await scheduler_svc(capsys, *args)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"{path}:7: jobs[1]: missing required field `schedule`",
        f"scheduler-svc: (the service did not check the rest: cannot reach {url}: "
        "connection refused (4 attempts))",
        f"scheduler-svc: 1 error in {path}; nothing applied",
    ]
    write(tmp_path / "jobs.yaml", many(1))
    code, out, err = await scheduler_svc(capsys, *args)
    assert (code, out) == (1, "")
    assert err == f"scheduler-svc: cannot reach {url}: connection refused (4 attempts)\n"


@pytest.mark.slow
async def test_apply_as_a_process_reads_the_file_from_stdin(
    client: httpx.AsyncClient, api_url: str, tmp_path: Path
) -> None:
    env = cli_env(None, SCHEDULER_URL=api_url)
    done = await asyncio.to_thread(
        subprocess.run,
        [*SCHEDULER_SVC, "apply", "-f", "-", "--dry-run", "--detailed-exitcode"],
        input=yaml.safe_dump({"jobs": many(2)}),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stderr) == (2, "")
    assert plan_line(done.stdout) == "Plan: 2 to create, 0 to update, 0 to delete, 0 unchanged."
    assert await all_jobs(client) == []
