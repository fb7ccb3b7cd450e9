"""`scheduler-svc keys create|list|revoke`: API keys, shown once at creation, stored as hashes."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import structlog

from scheduler_svc import store
from scheduler_svc.models import ApiKeyRow
from scheduler_svc.redact import KEY_PREFIX
from scheduler_svc.security import auth, principals
from scheduler_svc.store.db import Pool

log = structlog.get_logger("scheduler_svc.security.keys")


class KeysError(Exception):
    """A key command that cannot be done; the message is one line for the user."""


def add_commands(commands: Any) -> None:
    """Add `keys create|list|revoke` to the CLI's subcommands."""
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a key; it is printed once, on the last line")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    create.add_argument(
        "--scopes",
        required=True,
        help=f"comma-separated, from {', '.join(principals.SCOPES)} (admin implies the others)",
    )
    actions.add_parser("list", help="list keys: prefix, tenant, scopes, dates; never the key")
    revoke = actions.add_parser("revoke", help="revoke a key, named by its prefix")
    revoke.add_argument("prefix", help="the key's prefix, e.g. sch_k3x9p2am")


def check(args: argparse.Namespace) -> None:
    """Refuse bad arguments before any database is touched."""
    if args.keys_command == "create":
        _tenant(args.tenant)
        _scopes(args.scopes)
    elif args.keys_command == "revoke" and not KEY_PREFIX.match(args.prefix):
        raise KeysError(f"{args.prefix!r} is not a key prefix; they look like sch_k3x9p2am")


async def run(pool: Pool, args: argparse.Namespace) -> list[str]:
    """Do a checked `keys` command; return the lines to print on standard output."""
    if args.keys_command == "create":
        return await _create(pool, _tenant(args.tenant), _scopes(args.scopes))
    if args.keys_command == "list":
        return _table(await store.api_keys_list(pool))
    return await _revoke(pool, args.prefix)


def _tenant(raw: str) -> str:
    if not principals.TENANT.match(raw):
        raise KeysError("--tenant: expected 1 to 200 printable characters without spaces")
    return raw


def _scopes(raw: str) -> list[str]:
    scopes = [s.strip() for s in raw.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in principals.SCOPES]
    if not scopes or unknown:
        raise KeysError(
            f"--scopes: expected a comma-separated list of {', '.join(principals.SCOPES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    return sorted(set(scopes), key=principals.SCOPES.index)


async def _create(pool: Pool, tenant: str, scopes: list[str]) -> list[str]:
    # A clash of the 8-character id is unlikely (36^8 ids); draw again if it happens.
    for _ in range(5):
        key, prefix = auth.new_key()
        row = await store.api_key_insert(pool, prefix, auth.key_hash(key), tenant, scopes)
        if row is not None:
            log.info("api_key_created", prefix=prefix, tenant=tenant, scopes=scopes)
            return [
                f"created API key {prefix} for tenant {tenant} with scopes {','.join(scopes)}.",
                "Store it now: it is shown only this once.",
                key,
            ]
    raise KeysError("could not draw an unused key prefix; try again")


async def _revoke(pool: Pool, prefix: str) -> list[str]:
    row = await store.api_key_revoke(pool, prefix)
    if row is None:
        raise KeysError(f"no API key has the prefix {prefix}")
    log.info("api_key_revoked", prefix=prefix, tenant=row.tenant)
    return [f"revoked API key {prefix} of tenant {row.tenant} as of {_time(row.revoked_at)}"]


def _time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(rows: list[ApiKeyRow]) -> list[str]:
    header = ("PREFIX", "TENANT", "SCOPES", "CREATED", "LAST USED", "REVOKED")
    cells = [
        (
            r.prefix,
            r.tenant,
            ",".join(r.scopes),
            _time(r.created_at),
            _time(r.last_used_at),
            _time(r.revoked_at),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    return [
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *cells]
    ]
