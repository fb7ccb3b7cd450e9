"""`scheduler-svc keys create|list|revoke`: API keys, shown once at creation, stored as
hashes; and `keys secret`: a tenant's webhook signing secret (SPEC §5), made or rotated."""

from __future__ import annotations

import argparse
import secrets
from datetime import UTC, datetime
from typing import Any

import structlog

from scheduler_svc import store
from scheduler_svc.models import ApiKeyRow
from scheduler_svc.redact import KEY_PREFIX
from scheduler_svc.security import auth, principals
from scheduler_svc.store.db import Pool
from scheduler_svc.store.secrets import SECRETS_CACHE_S

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
    secret = actions.add_parser(
        "secret",
        help="make or rotate a tenant's webhook signing secret; it is printed on the last line",
    )
    secret.add_argument("--tenant", required=True, help="the tenant whose deliveries it signs")
    secret.add_argument(
        "--retire-previous",
        action="store_true",
        help="stop signing with the secret the last rotation replaced",
    )


def check(args: argparse.Namespace) -> None:
    """Refuse bad arguments before any database is touched."""
    if args.keys_command in ("create", "secret"):
        _tenant(args.tenant)
    if args.keys_command == "create":
        _scopes(args.scopes)
    elif args.keys_command == "revoke" and not KEY_PREFIX.match(args.prefix):
        raise KeysError(f"{args.prefix!r} is not a key prefix; they look like sch_k3x9p2am")


async def run(pool: Pool, args: argparse.Namespace) -> list[str]:
    """Do a checked `keys` command; return the lines to print on standard output."""
    if args.keys_command == "create":
        return await _create(pool, _tenant(args.tenant), _scopes(args.scopes))
    if args.keys_command == "list":
        return _table(await store.api_keys_list(pool))
    if args.keys_command == "secret":
        return await _secret(pool, _tenant(args.tenant), args.retire_previous)
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


async def _secret(pool: Pool, tenant: str, retire_previous: bool) -> list[str]:
    # Every replica reads a tenant's secrets again within SECRETS_CACHE_S.
    within = f"within {SECRETS_CACHE_S:g} s on every replica"
    if retire_previous:
        retired = await store.tenant_secret_retire(pool, tenant)
        if retired is None:
            raise KeysError(f"tenant {tenant} has no signing secret of its own")
        log.info("tenant_secret_retired", tenant=tenant, had_previous=retired)
        if not retired:
            return [f"tenant {tenant} has no previous signing secret: nothing to retire"]
        return [f"retired the previous signing secret of tenant {tenant} ({within})"]
    secret = "whsec_" + secrets.token_urlsafe(32)
    rotated = await store.tenant_secret_rotate(pool, tenant, secret)
    log.info("tenant_secret_rotated" if rotated else "tenant_secret_created", tenant=tenant)
    if rotated:
        done = (
            f"rotated the signing secret of tenant {tenant} ({within}): deliveries carry a "
            "signature by this one and by the previous one until "
            f"`scheduler-svc keys secret --tenant {tenant} --retire-previous`."
        )
    else:
        done = f"created a signing secret for tenant {tenant} ({within})."
    return [done, "Store it now: it is shown only this once.", secret]


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
