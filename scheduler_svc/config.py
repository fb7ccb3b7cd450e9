"""Settings: the only code that reads the environment or `.env`."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values

Role = Literal["all", "api", "worker"]
LogFormat = Literal["json", "console"]
RateUnit = Literal["second", "minute"]

PREFIX = "SCHEDULER_"
T = TypeVar("T")


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the variable."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Requests allowed per principal per unit of time."""

    count: int
    unit: RateUnit

    def __str__(self) -> str:
        return f"{self.count}/{self.unit}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the service, typed and validated (deploy/README.md lists them)."""

    # repr=False on credentials: a Settings that ends up in a log or traceback shows none.
    database_url: str | None = field(default=None, repr=False)
    # A streaming standby of database_url that serves history reads while it keeps up.
    database_read_url: str | None = field(default=None, repr=False)
    # Beyond this many seconds behind the primary, history reads go to the primary.
    read_max_lag_s: float = 5.0
    data_dir: Path = Path(".scheduler-data")
    host: str = "127.0.0.1"
    port: int = 3000
    role: Role = "all"
    concurrency: int = 32
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    shutdown_grace_s: float = 30.0
    # A run's lease is its job's timeout plus this; then another replica takes it over.
    lease_margin_s: float = 10.0
    # None means "console on a TTY, JSON otherwise", decided where the log stream is known.
    log_format: LogFormat | None = None
    log_level: str = "info"
    api_keys_required: bool = False
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key: str | None = None
    jwt_tenant_claim: str = "tenant"
    # When set, a JWT's `aud` must name it (for issuers that sign tokens for other services too).
    jwt_audience: str | None = None
    rate_limit: RateLimit = RateLimit(6000, "minute")
    # A verified API key is trusted this long before the database is asked again, so a
    # revoked key is refused within this many seconds (0: ask on every request).
    api_key_cache_s: float = 1.0
    max_body_bytes: int = 65536
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_allow_private: bool = False
    # Where alerts of jobs without an alerts.url go (docs/alerts.md); None: nowhere. Set by
    # the operator, so trusted: the private-address guard does not apply. Not shown: a
    # webhook URL often carries a token.
    alert_url: str | None = field(default=None, repr=False)
    min_interval_s: float = 1.0
    run_retention_days: int = 30
    # Host names an open service answers besides loopback ones (normal_host's form; a
    # leading "*." stands for any subdomain). Keyed and JWT modes answer any Host.
    allowed_hosts: tuple[str, ...] = ()
    # The tenants whose jobs and runs this replica's worker claims (None: every tenant's):
    # the seam for tenant-sharded deployments (docs/scaling.md).
    tenants: tuple[str, ...] | None = None
    # `serve --insecure`: serve without authentication on a non-loopback address. A flag
    # only, never read from the environment, so it cannot be left on by accident.
    insecure: bool = False
    # OpenTelemetry span exporters by entry-point name (docs/tracing.md); empty: traces off.
    traces_exporters: tuple[str, ...] = ()
    # SCHEDULER_* variables that mean nothing to us (typos, usually): logged at start.
    unknown_variables: tuple[str, ...] = ()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")
    ) -> Settings:
        """Read settings from `environ` (default os.environ) over `env_file`; raise ConfigError."""
        values: dict[str, str] = {}
        if env_file is not None and env_file.is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        # OTEL_* only from the process environment: the OpenTelemetry SDK reads the rest of
        # them (endpoint, headers, service name) there, never from our .env.
        return _parse(values, otel=os.environ if environ is None else environ)


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _parse(env: Mapping[str, str], otel: Mapping[str, str] | None = None) -> Settings:
    def get(name: str, convert: Callable[[str], T], default: T) -> T:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return convert(raw.strip())
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r}: {exc}") from None

    known = set(_VARIABLES)
    defaults = Settings()
    database_url = get("DATABASE_URL", str, None)
    database_read_url = get("DATABASE_READ_URL", str, None)
    if database_read_url is not None and not _is_postgres_url(database_read_url):
        # Not echoed, unlike other bad values: the URL may hold a password.
        raise ConfigError(
            "DATABASE_READ_URL: expected a PostgreSQL URL, "
            "postgresql://user:password@host:port/database"
        )
    alert_url = get("SCHEDULER_ALERT_URL", str, None)
    if alert_url is not None and not _is_http_url(alert_url):
        # Not echoed either: a webhook URL often carries a token.
        raise ConfigError("SCHEDULER_ALERT_URL: expected an http:// or https:// URL with a host")
    if database_read_url is not None and database_url is None:
        raise ConfigError(
            "DATABASE_READ_URL is set but DATABASE_URL is not: a read replica needs a "
            "primary of its own (the embedded database has none)"
        )
    return Settings(
        database_url=database_url,
        database_read_url=database_read_url,
        read_max_lag_s=get(
            "SCHEDULER_READ_MAX_LAG_S", _float_between(0.1, 3600), defaults.read_max_lag_s
        ),
        data_dir=get("SCHEDULER_DATA_DIR", Path, defaults.data_dir),
        host=get("SCHEDULER_HOST", str, defaults.host),
        port=get("SCHEDULER_PORT", _int_between(0, 65535), defaults.port),
        role=get("SCHEDULER_ROLE", _one_of("all", "api", "worker"), defaults.role),
        concurrency=get("SCHEDULER_CONCURRENCY", _int_between(1, 10_000), defaults.concurrency),
        worker_id=get("SCHEDULER_WORKER_ID", _text(200), defaults.worker_id),
        shutdown_grace_s=get(
            "SCHEDULER_SHUTDOWN_GRACE_S", _float_between(0, 86400), defaults.shutdown_grace_s
        ),
        lease_margin_s=get(
            "SCHEDULER_LEASE_MARGIN_S", _float_between(0, 3600), defaults.lease_margin_s
        ),
        log_format=get("SCHEDULER_LOG_FORMAT", _one_of("json", "console"), None),
        log_level=get("SCHEDULER_LOG_LEVEL", _one_of(*_LOG_LEVELS), defaults.log_level),
        api_keys_required=get("SCHEDULER_API_KEYS_REQUIRED", _bool, False),
        jwt_secret=get("SCHEDULER_JWT_SECRET", str, None),
        jwt_public_key=get("SCHEDULER_JWT_PUBLIC_KEY", str, None),
        jwt_tenant_claim=get("SCHEDULER_JWT_TENANT_CLAIM", _text(100), "tenant"),
        jwt_audience=get("SCHEDULER_JWT_AUDIENCE", _text(500), None),
        rate_limit=get("SCHEDULER_RATE_LIMIT", _rate_limit, defaults.rate_limit),
        api_key_cache_s=get(
            "SCHEDULER_API_KEY_CACHE_S", _float_between(0, 300), defaults.api_key_cache_s
        ),
        max_body_bytes=get("SCHEDULER_MAX_BODY_BYTES", _int_between(1024, 64 * 1024 * 1024), 65536),
        webhook_secret=get("SCHEDULER_WEBHOOK_SECRET", str, None),
        webhook_allow_private=get("SCHEDULER_WEBHOOK_ALLOW_PRIVATE", _bool, False),
        alert_url=alert_url,
        min_interval_s=get("SCHEDULER_MIN_INTERVAL_S", _float_between(1, 86400), 1.0),
        run_retention_days=get("SCHEDULER_RUN_RETENTION_DAYS", _int_between(1, 36500), 30),
        allowed_hosts=get("SCHEDULER_ALLOWED_HOSTS", _host_names, ()),
        tenants=get("SCHEDULER_TENANTS", _tenants, None),
        traces_exporters=_traces_exporters(env if otel is None else otel),
        unknown_variables=tuple(sorted(k for k in env if k.startswith(PREFIX) and k not in known)),
    )


# Every variable we read; anything else with our prefix is reported as unknown.
# SCHEDULER_TEST_DATABASE_URL belongs to the test suite, not to the service;
# SCHEDULER_URL and SCHEDULER_API_KEY to the client and the CLI's API commands.
_VARIABLES = (
    "DATABASE_URL",
    "DATABASE_READ_URL",
    "SCHEDULER_READ_MAX_LAG_S",
    "SCHEDULER_DATA_DIR",
    "SCHEDULER_HOST",
    "SCHEDULER_PORT",
    "SCHEDULER_ROLE",
    "SCHEDULER_CONCURRENCY",
    "SCHEDULER_WORKER_ID",
    "SCHEDULER_SHUTDOWN_GRACE_S",
    "SCHEDULER_LEASE_MARGIN_S",
    "SCHEDULER_LOG_FORMAT",
    "SCHEDULER_LOG_LEVEL",
    "SCHEDULER_API_KEYS_REQUIRED",
    "SCHEDULER_JWT_SECRET",
    "SCHEDULER_JWT_PUBLIC_KEY",
    "SCHEDULER_JWT_TENANT_CLAIM",
    "SCHEDULER_JWT_AUDIENCE",
    "SCHEDULER_RATE_LIMIT",
    "SCHEDULER_API_KEY_CACHE_S",
    "SCHEDULER_MAX_BODY_BYTES",
    "SCHEDULER_WEBHOOK_SECRET",
    "SCHEDULER_WEBHOOK_ALLOW_PRIVATE",
    "SCHEDULER_ALERT_URL",
    "SCHEDULER_MIN_INTERVAL_S",
    "SCHEDULER_RUN_RETENTION_DAYS",
    "SCHEDULER_ALLOWED_HOSTS",
    "SCHEDULER_TENANTS",
    "SCHEDULER_TEST_DATABASE_URL",
    "SCHEDULER_URL",
    "SCHEDULER_API_KEY",
)


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def convert(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value

    return convert


def _float_between(low: float, high: float) -> Callable[[str], float]:
    def convert(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected a number from {low:g} to {high:g}") from None
        if not low <= value <= high:  # also rejects nan
            raise ValueError(f"expected a number from {low:g} to {high:g}")
        return value

    return convert


def _is_postgres_url(raw: str) -> bool:
    # Only the shape: whether the server answers, and is a standby, is checked while serving.
    scheme, _, rest = raw.strip().partition("://")
    return scheme in ("postgresql", "postgres") and rest != ""


def _one_of(*choices: str) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        if raw.lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return raw.lower()

    return convert


def _text(max_length: int) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        if len(raw) > max_length or not raw.isprintable():
            raise ValueError(f"expected printable text of at most {max_length} characters")
        return raw

    return convert


def _is_http_url(raw: str) -> bool:
    parts = urlsplit(raw)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


# One label of a host name; underscores too, as Docker and Compose service names have them.
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


def normal_host(name: str) -> str | None:
    """`name` as host names are compared: lower case, no trailing dot, an IP address in its
    compressed form (IPv6 in brackets); None if it is neither a DNS name nor an address."""
    name = name.strip().lower().removesuffix(".")
    bracketed = name.startswith("[") and name.endswith("]")
    try:
        address = ipaddress.ip_address(name[1:-1] if bracketed else name)
    except ValueError:
        if bracketed or len(name) > 253 or not all(map(_LABEL.match, name.split("."))):
            return None
        return name
    return f"[{address.compressed}]" if address.version == 6 else address.compressed


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _host_names(raw: str) -> tuple[str, ...]:
    names: list[str] = []
    for entry in filter(None, (e.strip() for e in raw.split(","))):
        wildcard = entry.startswith("*.")
        name = normal_host(entry.removeprefix("*."))
        # "*." before an address means nothing: addresses have no subdomains.
        if name is None or (wildcard and _is_address(name)):
            raise ValueError(
                f"{entry!r} is not a host name: expected host names separated by commas, "
                "without scheme or port; '*.' before a domain admits its subdomains "
                "(e.g. scheduler.internal,*.corp.example)"
            )
        names.append(f"*.{name}" if wildcard else name)
    return tuple(dict.fromkeys(names))


def _tenants(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in raw.split(",") if name.strip()))
    if not names:
        raise ValueError("expected tenant names separated by commas")
    return names


def _rate_limit(raw: str) -> RateLimit:
    count, _, unit = raw.partition("/")
    if unit not in ("second", "minute") or not count.isdigit() or int(count) < 1:
        raise ValueError("expected <n>/second or <n>/minute, e.g. 6000/minute")
    return RateLimit(int(count), unit)  # type: ignore[arg-type]


def _traces_exporters(env: Mapping[str, str]) -> tuple[str, ...]:
    """The span exporters the OpenTelemetry variables ask for (entry points of the group
    opentelemetry_traces_exporter); none, so traces off, unless OTEL_TRACES_EXPORTER or
    an OTLP endpoint is set. `otlp` is the OTLP exporter of the protocol named, by
    default http/protobuf (the OpenTelemetry specification's default)."""

    def value(name: str) -> str:
        return env.get(name, "").strip()

    if value("OTEL_SDK_DISABLED").lower() == "true":
        return ()
    names = [n.strip().lower() for n in value("OTEL_TRACES_EXPORTER").split(",") if n.strip()]
    if not names and (
        value("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or value("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        names = ["otlp"]
    if "none" in names:
        return ()
    if "otlp" in names:
        variable = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        if not value(variable):
            variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
        protocol = value(variable) or "http/protobuf"
        if protocol not in _OTLP_EXPORTERS:
            raise ConfigError(
                f"{variable}={protocol!r}: expected one of {', '.join(_OTLP_EXPORTERS)}"
            )
        names = [_OTLP_EXPORTERS[protocol] if n == "otlp" else n for n in names]
    return tuple(dict.fromkeys(names))


# The entry point of the OTLP span exporter for each protocol (its package's own name).
_OTLP_EXPORTERS = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
