"""`scheduler-svc` as a user runs it: real processes and ports, the embedded database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from scheduler_svc.db import SCHEMA_VERSION
from tests.conftest import embedded_data_dir

SEED_JOB = {"name": "Example Job", "attributes": {"key": "value"}, "interval": "* * * * *"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, process: subprocess.Popen[str], deadline_s: float = 90) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the service exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the service did not become ready in time")


@contextmanager
def service(
    tmp_path: Path, data_dir: Path, port: int, **env: str
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run `scheduler-svc serve` with no DATABASE_URL: the embedded database in data_dir."""
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environ.update(
        SCHEDULER_DATA_DIR=str(data_dir),
        SCHEDULER_LOG_FORMAT="json",
        SCHEDULER_SHUTDOWN_GRACE_S="5",
        **env,
    )
    log = (tmp_path / "service.log").open("a")
    process = subprocess.Popen(
        [sys.executable, "-m", "scheduler_svc", "serve", "--port", str(port)],
        env=environ,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process)
        yield url, process
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM a service we started, SIGKILL it if it has not exited in 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
    result = subprocess.run(
        [sys.executable, "-m", "scheduler_svc", "migrate"],
        env={**os.environ, "DATABASE_URL": database_url, "SCHEDULER_LOG_FORMAT": "json"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"schema at version {SCHEMA_VERSION}"


@pytest.mark.timeout(120)
def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scheduler_svc", "migrate"],
        env={
            **os.environ,
            "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/none",
            "SCHEDULER_LOG_FORMAT": "json",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if "could not connect" in line
    ]
    assert "Traceback" not in result.stderr
