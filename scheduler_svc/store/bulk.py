"""The bulk calls' queries on jobs: which jobs a filter matches (locked, or only
counted for a dry run), and those jobs as the API shows them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from scheduler_svc.models import JobFilter, JobRow
from scheduler_svc.store.sql import QUERIES, Conn


def _criteria(wanted: JobFilter) -> tuple[Any, ...]:
    """A bulk filter as the parameters $2 … $6 of jobs_bulk_match and jobs_bulk_count."""
    tags = [wanted.tag] if isinstance(wanted.tag, str) else wanted.tag
    return (wanted.ids, tags, wanted.name, wanted.status, wanted.all)


async def jobs_bulk_match(conn: Conn, tenant: str, wanted: JobFilter) -> list[int]:
    """The ids of the jobs of `tenant` the filter matches, locked until the caller's
    transaction ends; none when it names no criterion and is not `all`."""
    records = await conn.fetch(QUERIES["jobs_bulk_match"], tenant, *_criteria(wanted))
    return [r["id"] for r in records]


async def jobs_bulk_count(conn: Conn, tenant: str, wanted: JobFilter) -> int:
    """How many jobs jobs_bulk_match would match, none of them locked (a dry run)."""
    count: int = await conn.fetchval(QUERIES["jobs_bulk_count"], tenant, *_criteria(wanted))
    return count


async def jobs_get_many(conn: Conn, tenant: str, ids: Sequence[int]) -> list[JobRow]:
    """Jobs of `tenant` by id, in id order (those that exist)."""
    records = await conn.fetch(QUERIES["jobs_get_many"], tenant, list(ids))
    return [msgspec.convert(dict(r), JobRow) for r in records]
