"""Queries on tenant_secrets, the webhook signing secrets per tenant (SPEC §5), and
TenantSecrets, the in-process cache deliveries read them through."""

from __future__ import annotations

import asyncio
import time

import structlog

from scheduler_svc.store.db import DATABASE_ERRORS
from scheduler_svc.store.sql import QUERIES, Conn

log = structlog.get_logger("scheduler_svc.store.secrets")

# How long a tenant's secrets are used before they are read again: a rotation or a
# retirement reaches every replica's deliveries within this (docs/alerts.md).
SECRETS_CACHE_S = 5.0


async def tenant_secret_get(conn: Conn, tenant: str) -> tuple[str, str | None] | None:
    """A tenant's current and previous signing secrets; None if it has none of its own."""
    record = await conn.fetchrow(QUERIES["tenant_secret_get"], tenant)
    return None if record is None else (record["secret"], record["previous"])


async def tenant_secret_rotate(conn: Conn, tenant: str, secret: str) -> bool:
    """Make `secret` the tenant's current signing secret, the current one its previous;
    whether it had one (a rotation rather than a first secret)."""
    record = await conn.fetchrow(QUERIES["tenant_secret_rotate"], tenant, secret)
    assert record is not None
    return bool(record["rotated"])


async def tenant_secret_retire(conn: Conn, tenant: str) -> bool | None:
    """Drop the tenant's previous secret: whether it had one; None if it has no secret."""
    record = await conn.fetchrow(QUERIES["tenant_secret_retire"], tenant)
    return None if record is None else bool(record["retired"])


class TenantSecrets:
    """The secrets each tenant's deliveries are signed with, read at most once per
    `cache_s` per tenant and process: the current secret and, during a rotation, the
    previous one; for a tenant without a row, `default` (SCHEDULER_WEBHOOK_SECRET) or
    none (unsigned).

    Called as `await secrets(tenant)` (targets.webhook.SigningSecrets). None when they
    cannot be read (the database does not answer) and none are cached, even stale: a
    delivery is then retried rather than signed with the wrong key.
    """

    def __init__(self, pool: Conn, default: str | None, cache_s: float = SECRETS_CACHE_S) -> None:
        self._pool = pool
        self._default = (default,) if default else ()
        self._cache_s = cache_s
        self._cached: dict[str, tuple[float, tuple[str, ...]]] = {}
        # One look-up per tenant at a time: a burst of deliveries shares it.
        self._loading: dict[str, asyncio.Future[tuple[str, ...] | None]] = {}

    async def __call__(self, tenant: str) -> tuple[str, ...] | None:
        cached = self._cached.get(tenant)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        loading = self._loading.get(tenant)
        if loading is None:
            loading = asyncio.ensure_future(self._load(tenant))
            self._loading[tenant] = loading
            loading.add_done_callback(lambda _: self._loading.pop(tenant, None))
        # Shielded: a delivery cancelled meanwhile must not cancel the others' look-up.
        return await asyncio.shield(loading)

    async def _load(self, tenant: str) -> tuple[str, ...] | None:
        try:
            found = await tenant_secret_get(self._pool, tenant)
        except DATABASE_ERRORS as exc:
            stale = self._cached.get(tenant)
            log.warning("tenant_secrets_unavailable", tenant=tenant, error=str(exc))
            return None if stale is None else stale[1]
        secrets = self._default if found is None else tuple(s for s in found if s)
        self._cached[tenant] = (time.monotonic() + self._cache_s, secrets)
        return secrets
