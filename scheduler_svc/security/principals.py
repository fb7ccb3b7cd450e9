"""Principals: who a request acts as (a key, a token's subject, or open mode), the
scopes they hold, and why a request has none (Rejection)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

READ = "jobs:read"
WRITE = "jobs:write"
ADMIN = "admin"  # implies every other scope
SCOPES = (READ, WRITE, ADMIN)

# The tenant of every request served without credentials (open mode).
DEFAULT_TENANT = "default"
# Tenant names: printable, no white space, as long as a job name at most.
TENANT = re.compile(r"^[^\s\x00-\x1f\x7f]{1,200}$")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: its tenant, its scopes, and a name to count its requests by."""

    tenant: str
    scopes: frozenset[str]
    kind: Literal["key", "jwt", "open"]
    # The key's prefix, the token's subject, or (open mode) the client's address.
    name: str

    def allows(self, scope: str) -> bool:
        """Whether this principal holds `scope` (admin holds them all)."""
        return ADMIN in self.scopes or scope in self.scopes

    @property
    def rate_key(self) -> str:
        """What the rate limiter counts this principal's requests under."""
        return f"{self.kind}:{self.tenant}:{self.name}"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request has no principal; ScopeGuard answers it with 401."""

    detail: str
    # RFC 6750's error code for the WWW-Authenticate challenge; None when nothing was sent.
    error: Literal["invalid_request", "invalid_token"] | None = None


NO_CREDENTIALS = Rejection("this route needs an API key or token: 'Authorization: Bearer <key>'")
BAD_KEY = Rejection("the API key is not valid", "invalid_token")
