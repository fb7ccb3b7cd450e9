"""`scheduler-svc keys` and the start rule, as a user runs them: real processes and ports.

The start rule in-process (a warning, no process) is in test_auth.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from bench.common import wait_ready
from scheduler_svc.security import auth
from tests.helpers import cli_env, free_port, run_cli, spawn_cli, stop

# Every test here runs `scheduler-svc` as a process.
pytestmark = pytest.mark.slow

KEY = re.compile(r"^sch_[a-z0-9]{8}_[A-Za-z0-9_-]{43}$")


def scheduler_svc(
    database_url: str, tmp_path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return run_cli(tmp_path, *args, env=cli_env(database_url, **env))


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single non-log line a failed command wrote to stderr."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("scheduler-svc")
    return lines[0]


@pytest.mark.timeout(120)
def test_keys_create_list_revoke(database_url: str, tmp_path: Path, clean: None) -> None:
    created = scheduler_svc(
        database_url, tmp_path, "keys", "create", "--tenant", "acme", "--scopes", "jobs:read,admin"
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.splitlines()[-1]
    assert KEY.match(key), created.stdout
    prefix = auth.key_prefix(key)
    assert prefix is not None
    assert key not in created.stderr

    listed = scheduler_svc(database_url, tmp_path, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["PREFIX", "TENANT", "SCOPES", "CREATED", "LAST", "USED", "REVOKED"]
    assert len(rows) == 1
    assert rows[0].split()[:3] == [prefix, "acme", "jobs:read,admin"]
    assert rows[0].split()[4:] == ["-", "-"]  # never used, not revoked
    assert key[13:] not in listed.stdout + listed.stderr

    revoked = scheduler_svc(database_url, tmp_path, "keys", "revoke", prefix)
    assert revoked.returncode == 0, revoked.stderr
    assert prefix in revoked.stdout
    listed = scheduler_svc(database_url, tmp_path, "keys", "list")
    assert listed.stdout.splitlines()[1].split()[-1].endswith("Z")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "--tenant", "acme", "--scopes", "jobs:read,root"], "unknown: root"),
        (["create", "--tenant", "acme", "--scopes", ","], "--scopes"),
        (["create", "--tenant", "has space", "--scopes", "admin"], "--tenant"),
        (["create", "--scopes", "admin"], "--tenant"),
        (["revoke", "sch_nosuchk1"], "no API key has the prefix sch_nosuchk1"),
        (["revoke", "not-a-prefix"], "not a key prefix"),
        (["rotate"], "invalid choice"),
    ],
)
def test_bad_key_commands_fail_in_one_line(
    database_url: str, tmp_path: Path, clean: None, args: list[str], message: str
) -> None:
    assert message in one_line_error(scheduler_svc(database_url, tmp_path, "keys", *args))


def serve(database_url: str, tmp_path: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return spawn_cli(tmp_path, "serve", *args, env=cli_env(database_url, **env))


def stop_cleanly(process: subprocess.Popen[str]) -> str:
    """Stop the service; its stderr, once it has exited 0."""
    stopped = stop(process)
    assert stopped.returncode == 0, stopped.stderr
    return stopped.stderr


@pytest.mark.timeout(120)
def test_serve_on_a_public_address_refuses_to_start_open(
    database_url: str, tmp_path: Path, clean: None
) -> None:
    port = str(free_port())
    refused = serve(database_url, tmp_path, "--host", "0.0.0.0", "--port", port)
    _, err = refused.communicate(timeout=60)
    result = subprocess.CompletedProcess(refused.args, refused.returncode, "", err)
    assert "--insecure" in one_line_error(result)

    # Once a key exists the same command starts, and every API route wants the key.
    created = scheduler_svc(
        database_url, tmp_path, "keys", "create", "--tenant", "acme", "--scopes", "jobs:read"
    )
    key = created.stdout.splitlines()[-1]
    process = serve(database_url, tmp_path, "--host", "0.0.0.0", "--port", port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process)
        assert httpx.get(f"{url}/jobs", timeout=10).status_code == 401
        response = httpx.get(f"{url}/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert response.status_code == 200
    finally:
        stop_cleanly(process)


@pytest.mark.timeout(120)
def test_serve_insecure_starts_open_and_says_so(
    database_url: str, tmp_path: Path, clean: None
) -> None:
    port = str(free_port())
    secret = "whsec-never-in-the-log-0123456789"
    process = serve(
        database_url,
        tmp_path,
        "--host",
        "0.0.0.0",
        "--port",
        port,
        "--insecure",
        SCHEDULER_WEBHOOK_SECRET=secret,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process)
        assert httpx.get(f"{url}/jobs", timeout=10).status_code == 200
    finally:
        err = stop_cleanly(process)
    events = [json.loads(line) for line in err.splitlines()]
    warnings = [e for e in events if e.get("event") == "insecure_open_mode"]
    assert warnings and warnings[0]["level"] == "warning"
    assert secret not in err
