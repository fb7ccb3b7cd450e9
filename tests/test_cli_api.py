"""`scheduler-svc jobs …` and `scheduler-svc runs …` against the real API over HTTP.

Most tests run the command in this process (in a thread: the app serves in this event
loop); the last runs it as a user does, as a process on a terminal and on a pipe."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog

from scheduler_svc import cli
from tests.factories import make_job
from tests.helpers import SCHEDULER_SVC, free_port
from tests.principals import make_key

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def quiet_service() -> Iterator[None]:
    """The app serving in this process logs each request: into a list, not the output
    the commands are judged by."""
    with structlog.testing.capture_logs():
        yield


async def scheduler_svc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `scheduler-svc <args>` in this process; its exit code, stdout and stderr."""

    def run() -> int | str | None:
        with pytest.raises(SystemExit) as exited:  # it always exits, 0 included
            cli.main(list(args))
        return exited.value.code

    code = await asyncio.to_thread(run)
    assert isinstance(code, int), code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def one_line(err: str) -> str:
    """The single line a failed command wrote to stderr."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("scheduler-svc: ")
    return lines[0]


async def test_job_round_trip_with_an_api_key(
    api_url: str,
    clean: None,
    pool: asyncpg.Pool[Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = await make_key(pool, "acme")
    body = '{"name": "nightly", "schedule": "0 3 * * *", "timezone": "Europe/Paris"}'
    code, out, err = await scheduler_svc(
        capsys, "jobs", "create", "--url", api_url, "--api-key", key, "--data", body
    )
    assert (code, err) == (0, "")
    [job] = json_lines(out)
    assert (job["name"], job["status"], job["timezone"]) == ("nightly", "active", "Europe/Paris")
    job_id = str(job["id"])

    # From here on, as most users will: the URL and the key in the environment.
    monkeypatch.setenv("SCHEDULER_URL", api_url)
    monkeypatch.setenv("SCHEDULER_API_KEY", key)
    assert json_lines((await scheduler_svc(capsys, "jobs", "get", job_id))[1]) == [job]
    [paused] = json_lines((await scheduler_svc(capsys, "jobs", "pause", job_id))[1])
    assert (paused["status"], paused["next_run_at"]) == ("paused", None)
    [resumed] = json_lines((await scheduler_svc(capsys, "jobs", "resume", job_id))[1])
    assert resumed["status"] == "active"
    [run] = json_lines((await scheduler_svc(capsys, "jobs", "trigger", job_id))[1])
    assert (run["job_id"], run["trigger"], run["status"]) == (job["id"], "manual", "pending")
    assert json_lines((await scheduler_svc(capsys, "runs", "list", job_id))[1]) == [run]
    assert json_lines((await scheduler_svc(capsys, "runs", "get", str(run["id"])))[1]) == [run]

    assert await scheduler_svc(capsys, "jobs", "delete", job_id) == (0, "", "")
    code, out, err = await scheduler_svc(capsys, "jobs", "get", job_id)
    assert (code, out) == (1, "")
    assert one_line(err) == f"scheduler-svc: 404 Not found: job {job_id} does not exist"

    monkeypatch.delenv("SCHEDULER_API_KEY")
    code, out, err = await scheduler_svc(capsys, "jobs", "list")
    assert (code, out) == (1, "")
    assert one_line(err).startswith("scheduler-svc: 401 Authentication required: ")


async def test_create_reads_the_job_from_a_file_or_stdin(
    api_url: str,
    clean: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    path = tmp_path / "job.json"
    path.write_text('{"name": "from a file", "schedule": "@every 5m", "paused": true}')
    code, out, _ = await scheduler_svc(capsys, "jobs", "create", "--url", api_url, "-f", str(path))
    assert code == 0
    assert [(j["name"], j["status"]) for j in json_lines(out)] == [("from a file", "paused")]

    monkeypatch.setattr(sys, "stdin", io.StringIO('{"name": "from stdin", "schedule": "@daily"}'))
    code, out, _ = await scheduler_svc(capsys, "jobs", "create", "--url", api_url, "-f", "-")
    assert code == 0
    assert [j["name"] for j in json_lines(out)] == ["from stdin"]


async def test_list_prints_every_job_as_json_lines_across_pages(
    api_url: str, clean: None, pool: asyncpg.Pool[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [(await make_job(pool, next_run_at=None, name=f"job-{i}")).id for i in range(23)]
    code, out, err = await scheduler_svc(
        capsys, "jobs", "list", "--url", api_url, "--page-size", "5"
    )
    assert (code, err) == (0, "")
    assert [job["id"] for job in json_lines(out)] == sorted(ids, reverse=True)
    code, out, _ = await scheduler_svc(
        capsys, "jobs", "list", "--url", api_url, "--json", "--limit", "7", "--page-size", "3"
    )
    assert [job["id"] for job in json_lines(out)] == sorted(ids, reverse=True)[:7]


async def test_table_output_is_aligned_and_printable(
    api_url: str, clean: None, pool: asyncpg.Pool[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    short = await make_job(pool, next_run_at=None, name="a", schedule="@daily")
    long = await make_job(pool, next_run_at=None, name="a longer name\x1b[31m", paused=True)
    code, out, _ = await scheduler_svc(capsys, "jobs", "list", "--url", api_url, "--table")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:6] == ["ID", "NAME", "STATUS", "SCHEDULE", "TIMEZONE", "TARGET"]
    assert [row.split()[0] for row in rows] == [str(long.id), str(short.id)]
    for column in ["NAME", "STATUS", "NEXT RUN"]:
        at = header.index(column)
        assert all(row[at - 2 : at] == "  " and row[at] != " " for row in rows), column
    assert "a longer name\\x1b[31m" in rows[0]  # escaped: a name cannot drive the terminal
    assert "\x1b" not in out

    code, out, _ = await scheduler_svc(
        capsys, "jobs", "get", str(short.id), "--url", api_url, "--table"
    )
    fields = dict(line.split(maxsplit=1) for line in out.splitlines())
    assert fields["id"] == str(short.id) and fields["schedule"] == "@daily"
    assert fields["target"] == '{"type":"log"}' and fields["last_run_at"] == "-"
    assert "interval" not in fields  # the old service's names repeat values: shown once
    code, out, _ = await scheduler_svc(
        capsys, "runs", "list", str(short.id), "--url", api_url, "--table"
    )
    assert (code, out) == (0, "(none)\n")
    code, out, _ = await scheduler_svc(
        capsys, "jobs", "delete", str(short.id), "--url", api_url, "--table"
    )
    assert (code, out) == (0, f"deleted job {short.id}\n")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["jobs", "create", "--data", '{"name": "x", "schedule": "every day"}'],
            1,
            "scheduler-svc: 400 Invalid request: schedule: ",
        ),
        (["jobs", "create", "--data", "[1]"], 2, "scheduler-svc: --data: expected a JSON object"),
        (["jobs", "create", "--data", "{"], 2, "scheduler-svc: --data: not valid JSON: "),
        (["jobs", "create", "-f", "/nonexistent.json"], 2, "scheduler-svc: --file: cannot read"),
        (["jobs", "get", "abc"], 2, "scheduler-svc jobs get: argument id: expected an id"),
        (["runs", "get", "0"], 2, "scheduler-svc runs get: argument id: expected an id"),
        (
            ["jobs", "list", "--page-size", "501"],
            2,
            "scheduler-svc jobs list: argument --page-size: ",
        ),
        (["jobs", "trigger", "987654"], 1, "scheduler-svc: 404 Not found: job 987654 does"),
        (["runs", "list", "987654"], 1, "scheduler-svc: 404 Not found: job 987654 does"),
    ],
)
async def test_a_failure_is_one_line_and_a_nonzero_exit(
    api_url: str,
    clean: None,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    message: str,
) -> None:
    got, out, err = await scheduler_svc(capsys, *args, "--url", api_url)
    assert (got, out) == (code, "")
    assert err.count("\n") == 1 and err.startswith(message), err


async def test_a_service_not_listening_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await scheduler_svc(capsys, "jobs", "list", "--url", url)
    assert (code, out) == (1, "")
    assert one_line(err) == f"scheduler-svc: cannot reach {url}: connection refused (4 attempts)"
    code, _, err = await scheduler_svc(capsys, "jobs", "list", "--url", "localhost:3000")
    assert code == 1
    assert one_line(err).startswith("scheduler-svc: the service URL must look like http://")


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_terminal_gets_a_table_and_a_pipe_gets_json_lines(
    api_url: str, clean: None, pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    job = await make_job(pool, next_run_at=None, name="shown")
    env = {**os.environ, "SCHEDULER_URL": api_url}
    env.pop("SCHEDULER_API_KEY", None)

    piped = await asyncio.create_subprocess_exec(
        *SCHEDULER_SVC, "jobs", "list", env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(piped.communicate(), 30)
    assert piped.returncode == 0
    assert [line["id"] for line in json_lines(out.decode())] == [job.id]

    primary, secondary = pty.openpty()
    try:
        on_terminal = await asyncio.create_subprocess_exec(
            *SCHEDULER_SVC, "jobs", "list", env=env, cwd=tmp_path, stdout=secondary
        )
        os.close(secondary)
        assert await asyncio.wait_for(on_terminal.wait(), 30) == 0
        shown = await asyncio.to_thread(read_all, primary)
    finally:
        os.close(primary)
    header, row = shown.replace("\r\n", "\n").splitlines()
    assert header.split()[:3] == ["ID", "NAME", "STATUS"]
    assert row.split()[:3] == [str(job.id), "shown", "active"]


def read_all(fd: int) -> str:
    """What a terminal's other side has to read, up to its closing (EIO on Linux)."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()
