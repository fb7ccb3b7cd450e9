"""Queries on API keys."""

from __future__ import annotations

import asyncpg

from scheduler_svc.models import (
    ApiKeyRow,
)
from scheduler_svc.store.sql import QUERIES, Conn


def _api_key(record: asyncpg.Record | None) -> ApiKeyRow | None:
    if record is None:
        return None
    return ApiKeyRow(
        prefix=record["prefix"],
        key_hash=bytes(record["key_hash"]),
        tenant=record["tenant"],
        scopes=list(record["scopes"]),
        created_at=record["created_at"],
        last_used_at=record["last_used_at"],
        revoked_at=record["revoked_at"],
    )


async def api_key_insert(
    conn: Conn, prefix: str, key_hash: bytes, tenant: str, scopes: list[str]
) -> ApiKeyRow | None:
    """Store a key's hash; None when its prefix or hash is already taken."""
    return _api_key(
        await conn.fetchrow(QUERIES["api_key_insert"], prefix, key_hash, tenant, scopes)
    )


async def api_key_get(
    conn: Conn, prefix: str, touch_after_s: float
) -> tuple[ApiKeyRow, bool] | None:
    """The key with `prefix` and whether its last use is older than `touch_after_s`, or None."""
    record = await conn.fetchrow(QUERIES["api_key_get"], prefix, touch_after_s)
    row = _api_key(record)
    if row is None:
        return None
    assert record is not None
    return row, bool(record["touch_due"])


async def api_key_touch(conn: Conn, prefix: str, touch_after_s: float) -> None:
    """Set last_used_at to now unless it is younger than `touch_after_s`."""
    await conn.execute(QUERIES["api_key_touch"], prefix, touch_after_s)


async def api_keys_list(conn: Conn) -> list[ApiKeyRow]:
    """Every key, oldest first."""
    return [row for r in await conn.fetch(QUERIES["api_keys_list"]) if (row := _api_key(r))]


async def api_key_revoke(conn: Conn, prefix: str) -> ApiKeyRow | None:
    """Revoke the key with `prefix`; None if there is none."""
    return _api_key(await conn.fetchrow(QUERIES["api_key_revoke"], prefix))


async def api_keys_exist(conn: Conn) -> bool:
    """Whether any API key, revoked or not, exists."""
    exists: bool = await conn.fetchval(QUERIES["api_keys_exist"])
    return exists
