"""The `scheduler-svc` command: serve, migrate, keys, and jobs and runs over the HTTP API
(`cli_api`), with apply and export of jobs files (`jobs_as_code`). Errors are one line on
stderr, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import NoReturn, TypeVar

import structlog

from scheduler_svc import cli_api, jobs_as_code, logs, store
from scheduler_svc.config import ConfigError, Settings
from scheduler_svc.security import auth, keys
from scheduler_svc.store import db, migrate
from scheduler_svc.store.db import Pool
from scheduler_svc.store.embedded import EmbeddedPostgres

log = structlog.get_logger("scheduler_svc.cli")
T = TypeVar("T")


class CommandError(Exception):
    """A failure to report in one line and exit 1."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scheduler-svc",
        description="Job scheduler on PostgreSQL. Configuration: SCHEDULER_* variables, .env.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the service (API, scheduler, executors)")
    serve.add_argument("--host", help="listen address (SCHEDULER_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (SCHEDULER_PORT, default 3000)")
    serve.add_argument(
        "--role", choices=["all", "api", "worker"], help="what this replica does (SCHEDULER_ROLE)"
    )
    serve.add_argument(
        "--concurrency", type=int, help="runs executing at once (SCHEDULER_CONCURRENCY)"
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="serve without authentication on a non-loopback address while no key exists",
    )
    migrate_ = commands.add_parser(
        "migrate", help="bring the database to this release's schema and exit"
    )
    shown = migrate_.add_mutually_exclusive_group()
    shown.add_argument(
        "--status", action="store_true", help="list the migrations and whether each is applied"
    )
    shown.add_argument(
        "--dry-run", action="store_true", help="print what would be applied, apply nothing"
    )
    keys.add_commands(commands)
    cli_api.add_commands(commands)
    jobs_as_code.add_commands(commands)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "SCHEDULER_HOST": getattr(args, "host", None),
        "SCHEDULER_PORT": getattr(args, "port", None),
        "SCHEDULER_ROLE": getattr(args, "role", None),
        "SCHEDULER_CONCURRENCY": getattr(args, "concurrency", None),
    }
    flags = {k: str(v) for k, v in overrides.items() if v is not None}
    settings = Settings.from_env({**os.environ, **flags})
    return replace(settings, insecure=bool(getattr(args, "insecure", False)))


def _with_database(settings: Settings) -> tuple[Settings, EmbeddedPostgres | None]:
    """Use DATABASE_URL, or start the embedded server in SCHEDULER_DATA_DIR."""
    if settings.database_url is not None:
        return settings, None
    try:
        embedded = EmbeddedPostgres(settings.data_dir)
        url = embedded.database_url()
    except Exception as exc:
        raise CommandError(
            f"could not start the embedded PostgreSQL in {settings.data_dir}: {exc}"
        ) from None
    log.info("embedded_database", data_dir=str(settings.data_dir.resolve()))
    return replace(settings, database_url=url), embedded


async def _with_pool(url: str, action: Callable[[Pool], Awaitable[T]]) -> T:
    """Run `action` on a one-connection pool to `url`; connection failures are CommandErrors."""
    try:
        pool = await db.create_pool(url, max_size=1)
    except (TimeoutError, OSError) as exc:
        raise CommandError(f"could not connect to the database: {exc}") from None
    except Exception as exc:  # asyncpg's own errors: bad password, no such database, ...
        raise CommandError(f"could not connect to the database: {exc}") from None
    try:
        return await action(pool)
    finally:
        await pool.close()


async def _apply_schema(pool: Pool) -> int:
    async with pool.acquire() as conn:
        try:
            return await migrate.migrate(conn)
        except migrate.MigrationError as exc:
            raise CommandError(str(exc)) from None
        except db.DATABASE_ERRORS as exc:
            raise CommandError(f"migrating the database failed: {exc}") from None


async def _complete_indexes(pool: Pool) -> list[str]:
    """Build the partitions' indexes a migration left to build (migrate.complete_indexes);
    a line for each."""
    async with pool.acquire() as conn:
        try:
            built = await migrate.complete_indexes(conn)
        except db.DATABASE_ERRORS as exc:
            raise CommandError(f"building the partitions' indexes failed: {exc}") from None
    return [f"built index {name}" for name in built]


def _migrate_command(settings: Settings, args: argparse.Namespace) -> None:
    """`migrate [--status | --dry-run]`: apply, list, or show what applying would do."""

    async def run(pool: Pool) -> list[str]:
        if not (args.status or args.dry_run):
            version = await _apply_schema(pool)
            # The version last: scripts read the last line.
            return [*await _complete_indexes(pool), f"schema at version {version}"]
        async with pool.acquire() as conn:
            plan = await migrate.plan(conn)
        if args.status:
            return [
                f"{s.version:04d}_{s.name}  {s.state}"
                + (f"  {s.applied_at:%Y-%m-%d %H:%M:%S%z}" if s.applied_at else "")
                for s in plan.states
            ]
        if plan.create:
            return ["empty database: would create the schema from schema.sql", migrate.SCHEMA_SQL]
        if plan.empty:
            return ["nothing to apply"]
        return [
            f"-- would apply {m.version:04d}_{m.name}, step {i + 1} of {len(m.steps)}: "
            f"{step.description}\n{step.sql.strip()}"
            for m in plan.pending
            for i, step in enumerate(m.steps)
        ]

    settings, embedded = _with_database(settings)
    assert settings.database_url is not None
    try:
        lines = asyncio.run(_with_pool(settings.database_url, run))
    finally:
        if embedded is not None:
            embedded.stop()
    print("\n".join(lines))


async def _prepare(pool: Pool) -> tuple[int, bool]:
    """What serve needs before it starts: the schema applied, and whether keys exist."""
    return await _apply_schema(pool), await store.api_keys_exist(pool)


def _base_url(settings: Settings) -> str:
    host = settings.host
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    if host in ("0.0.0.0", "[::]"):  # noqa: S104 - naming, not binding: any address serves
        host = "127.0.0.1"
    return f"http://{host}:{settings.port}"


def serve(settings: Settings) -> None:
    """Apply the schema, then serve HTTP until SIGTERM/SIGINT."""
    settings, embedded = _with_database(settings)
    try:
        assert settings.database_url is not None
        schema_version, keys_exist = asyncio.run(_with_pool(settings.database_url, _prepare))
        # No key, no JWT: open on loopback only, unless --insecure (auth.check_start).
        auth.check_start(settings, keys_exist)
        log.info(
            "starting",
            host=settings.host,
            port=settings.port,
            role=settings.role,
            worker=settings.worker_id,
            schema_version=schema_version,
            # Where a person looks first: the console (a worker serves none).
            console=None if settings.role == "worker" else f"{_base_url(settings)}/ui",
        )
        # Imported here: the other commands do without the web stack's start-up cost.
        from scheduler_svc import server

        if not server.run(settings):
            raise CommandError("stopped because the worker failed (see the log above)")
    finally:
        if embedded is not None:
            embedded.stop()


def manage_keys(settings: Settings, args: argparse.Namespace) -> None:
    """`keys create|list|revoke` on DATABASE_URL or the embedded database, schema applied."""
    try:
        keys.check(args)
    except keys.KeysError as exc:
        raise CommandError(str(exc)) from None

    async def run(pool: Pool) -> list[str]:
        await _apply_schema(pool)
        return await keys.run(pool, args)

    settings, embedded = _with_database(settings)
    assert settings.database_url is not None
    try:
        lines = asyncio.run(_with_pool(settings.database_url, run))
    except keys.KeysError as exc:
        raise CommandError(str(exc)) from None
    finally:
        if embedded is not None:
            embedded.stop()
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `scheduler-svc` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # `apply --detailed-exitcode` keeps 2 for "changes"
        if exc.code == 2 and jobs_as_code.wants_detailed_exitcode(argv):
            sys.exit(1)
        raise
    if args.command in cli_api.COMMANDS:  # a client of the API: no settings, no database
        sys.exit(cli_api.run(args))
    if args.command in jobs_as_code.COMMANDS:
        sys.exit(jobs_as_code.run(args))
    try:
        settings = _settings(args)
    except ConfigError as exc:
        sys.exit(f"scheduler-svc: {exc}")
    logs.configure(
        settings.log_format,
        settings.log_level,
        secrets=(settings.webhook_secret, settings.jwt_secret, settings.alert_url),
    )
    if settings.unknown_variables:
        log.warning("unknown_variables", names=list(settings.unknown_variables))
    try:
        if args.command == "serve":
            serve(settings)
        elif args.command == "migrate":
            _migrate_command(settings, args)
        elif args.command == "keys":
            manage_keys(settings, args)
    except (CommandError, ConfigError) as exc:
        sys.exit(f"scheduler-svc: {exc}")
    except KeyboardInterrupt:
        pass
