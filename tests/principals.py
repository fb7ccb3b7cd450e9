"""Test helpers: API keys stored straight in the database, bearer headers and JWTs."""

from __future__ import annotations

import time
from typing import Any

import jwt

from scheduler_svc import store
from scheduler_svc.security import auth, principals
from scheduler_svc.store.db import Pool

# 32 bytes or more, as HS256 needs (jwt_tokens.JwtVerifier refuses shorter secrets).
JWT_SECRET = "test-secret-of-at-least-thirty-two-bytes!"


async def make_key(pool: Pool, tenant: str, *scopes: str) -> str:
    """A new API key of `tenant` with `scopes` (default read and write), as keys create makes it."""
    key, prefix = auth.new_key()
    granted = list(scopes or (principals.READ, principals.WRITE))
    assert await store.api_key_insert(pool, prefix, auth.key_hash(key), tenant, granted)
    return key


def bearer(credential: str) -> dict[str, str]:
    """The Authorization header carrying `credential`."""
    return {"Authorization": f"Bearer {credential}"}


def make_jwt(
    key: Any = JWT_SECRET,
    algorithm: str = "HS256",
    *,
    tenant: str | None = "acme",
    scope: str | None = "jobs:read jobs:write",
    expires_in: float = 300,
    **claims: Any,
) -> str:
    """A signed JWT; pass claims to add or override (`nbf=...`, `sub=...`)."""
    now = time.time()
    payload: dict[str, Any] = {"sub": "user-1", "iat": int(now), "exp": int(now + expires_in)}
    if tenant is not None:
        payload["tenant"] = tenant
    if scope is not None:
        payload["scope"] = scope
    payload.update(claims)
    return jwt.encode(payload, key, algorithm=algorithm)
