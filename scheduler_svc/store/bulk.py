"""The bulk calls' queries on jobs: which jobs a filter matches (locked, or only
counted for a dry run), and those jobs as the API shows them."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from scheduler_svc.models import JobRow
from scheduler_svc.store.sql import QUERIES, Conn


async def jobs_bulk_match(
    conn: Conn,
    tenant: str,
    *,
    ids: Sequence[int] | None,
    tags: Sequence[str] | None,
    name: str | None,
    status: str | None,
    every: bool,
) -> list[int]:
    """The ids of the jobs of `tenant` a bulk filter matches, locked until the caller's
    transaction ends; none when the filter names no criterion and not `every`."""
    records = await conn.fetch(
        QUERIES["jobs_bulk_match"],
        tenant,
        None if ids is None else list(ids),
        None if tags is None else list(tags),
        name,
        status,
        every,
    )
    return [r["id"] for r in records]


async def jobs_bulk_count(
    conn: Conn,
    tenant: str,
    *,
    ids: Sequence[int] | None,
    tags: Sequence[str] | None,
    name: str | None,
    status: str | None,
    every: bool,
) -> int:
    """How many jobs jobs_bulk_match would match, none of them locked (a dry run)."""
    count: int = await conn.fetchval(
        QUERIES["jobs_bulk_count"],
        tenant,
        None if ids is None else list(ids),
        None if tags is None else list(tags),
        name,
        status,
        every,
    )
    return count


async def jobs_get_many(conn: Conn, tenant: str, ids: Sequence[int]) -> list[JobRow]:
    """Jobs of `tenant` by id, in id order (those that exist)."""
    records = await conn.fetch(QUERIES["jobs_get_many"], tenant, list(ids))
    return [msgspec.convert(dict(r), JobRow) for r in records]
