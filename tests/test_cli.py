"""`scheduler-svc` as a user runs it: real processes and ports, the embedded database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from bench.common import wait_ready
from scheduler_svc.store.migrate import SCHEMA_VERSION
from tests.helpers import cli_env, embedded_data_dir, free_port, run_cli, spawn_cli, stop

# Every test here runs `scheduler-svc` as a process.
pytestmark = pytest.mark.slow

SEED_JOB = {"name": "Example Job", "attributes": {"key": "value"}, "interval": "* * * * *"}


@contextmanager
def service(
    tmp_path: Path, data_dir: Path, port: int, **env: str
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run `scheduler-svc serve` with no DATABASE_URL: the embedded database in data_dir."""
    environ = cli_env(None, SCHEDULER_DATA_DIR=str(data_dir), SCHEDULER_SHUTDOWN_GRACE_S="5", **env)
    with (tmp_path / "service.log").open("a") as log:
        process = spawn_cli(tmp_path, "serve", "--port", str(port), env=environ, log=log)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, process)
            yield url, process
        finally:
            stop(process)


def postmaster_running(data_dir: Path) -> bool:
    pid_file = data_dir / "pgdata" / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().splitlines()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(240)
def test_serve_with_embedded_database_keeps_jobs_across_restarts(tmp_path: Path) -> None:
    port = free_port()
    with embedded_data_dir() as data_dir, service(tmp_path, data_dir, port) as (url, process):
        # The seed job's shape, on a schedule that does not fire while the test runs:
        # every minute, it fired during the restart when that crossed a minute, and its
        # next_run_at and last run then rightly differed from the first read.
        yearly = {**SEED_JOB, "interval": "0 0 1 1 *"}
        response = httpx.post(f"{url}/jobs", json=yearly, timeout=10)
        assert response.status_code == 201, response.text
        job = response.json()
        assert httpx.get(f"{url}/jobs", timeout=10).json() == [job]
        assert httpx.get(f"{url}/jobs/{job['id']}", timeout=10).json() == job
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not postmaster_running(data_dir), "the embedded server outlived the service"

        with service(tmp_path, data_dir, port) as (url, _):
            assert httpx.get(f"{url}/jobs/{job['id']}", timeout=10).json() == job

    lines = (tmp_path / "service.log").read_text().splitlines()
    assert lines, "the service wrote no log"
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    requests = [e for e in events if e.get("event") == "request"]
    assert requests and all(e.get("request_id") for e in requests)
    assert any(e.get("logger", "").startswith("uvicorn") for e in events)


@pytest.mark.timeout(120)
def test_migrate_applies_the_schema(database_url: str, tmp_path: Path) -> None:
    result = run_cli(tmp_path, "migrate", env=cli_env(database_url))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"schema at version {SCHEMA_VERSION}"


@pytest.mark.timeout(120)
def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    nowhere = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    result = run_cli(tmp_path, "migrate", env=cli_env(nowhere))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if "could not connect" in line
    ]
    assert "Traceback" not in result.stderr
