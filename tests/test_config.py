"""Settings from the environment and .env: typed, defaulted, and refused with one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scheduler_svc.config import ConfigError, RateLimit, Settings


def test_defaults_match_the_spec() -> None:
    settings = Settings.from_env({}, env_file=None)
    assert settings.database_url is None
    assert settings.data_dir == Path(".scheduler-data")
    assert (settings.host, settings.port, settings.role) == ("127.0.0.1", 3000, "all")
    assert settings.concurrency == 32
    assert settings.shutdown_grace_s == 30
    assert settings.log_format is None and settings.log_level == "info"
    assert settings.api_keys_required is False
    assert settings.jwt_tenant_claim == "tenant"
    assert settings.rate_limit == RateLimit(6000, "minute")
    assert settings.max_body_bytes == 65536
    assert settings.webhook_secret is None and settings.webhook_allow_private is False
    assert settings.min_interval_s == 1 and settings.run_retention_days == 30
    assert settings.worker_id  # host name + pid


def test_values_are_read_and_typed() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://u@db/x",
            "SCHEDULER_PORT": "8080",
            "SCHEDULER_ROLE": "WORKER",
            "SCHEDULER_CONCURRENCY": "4",
            "SCHEDULER_SHUTDOWN_GRACE_S": "2.5",
            "SCHEDULER_API_KEYS_REQUIRED": "yes",
            "SCHEDULER_RATE_LIMIT": "10/second",
            "SCHEDULER_LOG_FORMAT": "console",
            "SCHEDULER_WORKER_ID": "replica-a",
        },
        env_file=None,
    )
    assert settings.database_url == "postgresql://u@db/x"
    assert (settings.port, settings.role, settings.concurrency) == (8080, "worker", 4)
    assert settings.shutdown_grace_s == 2.5
    assert settings.api_keys_required is True
    assert settings.rate_limit == RateLimit(10, "second")
    assert settings.log_format == "console"
    assert settings.worker_id == "replica-a"


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text('DATABASE_URL="postgresql://from-file/db"\nSCHEDULER_PORT=4000\n')
    settings = Settings.from_env({"SCHEDULER_PORT": "5000"}, env_file=env_file)
    assert settings.database_url == "postgresql://from-file/db"
    assert settings.port == 5000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SCHEDULER_PORT", "abc"),
        ("SCHEDULER_PORT", "70000"),
        ("SCHEDULER_ROLE", "boss"),
        ("SCHEDULER_CONCURRENCY", "0"),
        ("SCHEDULER_SHUTDOWN_GRACE_S", "nan"),
        ("SCHEDULER_API_KEYS_REQUIRED", "maybe"),
        ("SCHEDULER_RATE_LIMIT", "100/hour"),
        ("SCHEDULER_RATE_LIMIT", "fast"),
        ("SCHEDULER_LOG_LEVEL", "loud"),
        ("SCHEDULER_MAX_BODY_BYTES", "-1"),
        ("SCHEDULER_MIN_INTERVAL_S", "0.1"),
        ("SCHEDULER_RUN_RETENTION_DAYS", "0"),
        ("SCHEDULER_ALLOWED_HOSTS", "http://scheduler.internal"),
        ("SCHEDULER_ALLOWED_HOSTS", "scheduler.internal:3000"),
        ("SCHEDULER_ALLOWED_HOSTS", "*"),
        ("SCHEDULER_ALLOWED_HOSTS", "ok.example, *.10.0.0.1"),
        ("SCHEDULER_ALLOWED_HOSTS", "a..b"),
        ("SCHEDULER_READ_MAX_LAG_S", "0"),
        ("SCHEDULER_READ_MAX_LAG_S", "soon"),
        ("SCHEDULER_TENANTS", " , ,"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value}, env_file=None)
    message = str(caught.value)
    assert message.startswith(f"{name}=")
    assert "\n" not in message


def test_a_replica_may_be_scoped_to_some_tenants() -> None:
    assert Settings.from_env({}, env_file=None).tenants is None
    scoped = Settings.from_env({"SCHEDULER_TENANTS": " acme, beta,acme "}, env_file=None)
    assert scoped.tenants == ("acme", "beta")


def test_a_read_replica_is_optional_and_needs_a_primary_of_its_own() -> None:
    defaults = Settings.from_env({}, env_file=None)
    assert (defaults.database_read_url, defaults.read_max_lag_s) == (None, 5.0)
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://u@primary/x",
            "DATABASE_READ_URL": "postgresql://u@standby/x",
            "SCHEDULER_READ_MAX_LAG_S": "0.5",
        },
        env_file=None,
    )
    assert (settings.database_read_url, settings.read_max_lag_s) == (
        "postgresql://u@standby/x",
        0.5,
    )
    assert "standby" not in repr(settings)  # a URL may hold a password
    with pytest.raises(ConfigError, match=r"^DATABASE_READ_URL is set but DATABASE_URL is not"):
        Settings.from_env({"DATABASE_READ_URL": "postgresql://u@standby/x"}, env_file=None)
    with pytest.raises(ConfigError, match=r"^DATABASE_READ_URL: expected a PostgreSQL URL") as bad:
        Settings.from_env(
            {"DATABASE_URL": "postgresql://u@primary/x", "DATABASE_READ_URL": "mysql://u:pw@h/x"},
            env_file=None,
        )
    assert "pw" not in str(bad.value)


def test_allowed_hosts_are_names_in_one_spelling() -> None:
    raw = " Scheduler.Internal. , *.Corp.Example,10.0.0.5,[FD00:0::1],fd00::2,my_service,,"
    settings = Settings.from_env({"SCHEDULER_ALLOWED_HOSTS": raw}, env_file=None)
    assert settings.allowed_hosts == (
        "scheduler.internal",
        "*.corp.example",
        "10.0.0.5",
        "[fd00::1]",
        "[fd00::2]",
        "my_service",
    )
    assert Settings.from_env({}, env_file=None).allowed_hosts == ()


def test_unknown_scheduler_variables_are_reported() -> None:
    settings = Settings.from_env({"SCHEDULER_CONCURENCY": "4"}, env_file=None)
    assert settings.unknown_variables == ("SCHEDULER_CONCURENCY",)


@pytest.mark.slow
def test_cli_stops_with_one_line_on_a_bad_value(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scheduler_svc", "serve"],
        env={"SCHEDULER_PORT": "not-a-port", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "SCHEDULER_PORT" in lines[0] and "Traceback" not in result.stderr
