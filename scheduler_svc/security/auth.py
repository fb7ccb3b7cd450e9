"""Who is calling: API keys, JWT bearer tokens and the open-on-loopback rule.

The principal of a request (Authenticator), the scopes, the keys' form and hash, and
when the service may serve without credentials. The ASGI side is `middleware`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import string
import time

import structlog

from scheduler_svc import store
from scheduler_svc.config import ConfigError, Settings
from scheduler_svc.redact import API_KEY
from scheduler_svc.security.jwt import JwtVerifier
from scheduler_svc.security.principals import (
    ADMIN,
    BAD_KEY,
    DEFAULT_TENANT,
    NO_CREDENTIALS,
    Principal,
    Rejection,
)
from scheduler_svc.store.db import Pool

log = structlog.get_logger("scheduler_svc.security.auth")


KEY_PREFIX = "sch_"  # the form of a whole key is redact.API_KEY
_ID_ALPHABET = string.ascii_lowercase + string.digits
# Compared against when no key has the presented prefix, so that a miss costs the same.
_NO_HASH = hashlib.sha256(b"no such key").digest()
# last_used_at is written at most this often per key: a read per request, not a write.
TOUCH_AFTER_S = 60.0
# Verified keys remembered at most this many at once (then forgotten all together).
KEY_CACHE_SIZE = 10_000


def new_key() -> tuple[str, str]:
    """A fresh random API key and its visible prefix."""
    prefix = KEY_PREFIX + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def key_hash(key: str) -> bytes:
    """What the database stores of a key: its SHA-256."""
    return hashlib.sha256(key.encode()).digest()


def key_prefix(key: str) -> str | None:
    """The prefix of a well-formed API key, or None."""
    match = API_KEY.fullmatch(key)
    return match.group(1) if match else None


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def jwt_configured(settings: Settings) -> bool:
    """Whether JWT bearer tokens are accepted."""
    return bool(settings.jwt_secret or settings.jwt_public_key)


def may_serve_open(settings: Settings) -> bool:
    """Whether requests without credentials are served while no API key exists."""
    if settings.api_keys_required or jwt_configured(settings):
        return False
    return is_loopback(settings.host) or settings.insecure


def check_start(settings: Settings, keys_exist: bool) -> None:
    """Refuse (ConfigError) to serve open on a non-loopback address without --insecure;
    log a warning whenever the service starts without authentication."""
    # A worker serves health and metrics only, which need no principal anyway.
    if keys_exist or jwt_configured(settings) or settings.role == "worker":
        return
    if settings.api_keys_required:
        log.warning(
            "no_api_keys",
            detail="SCHEDULER_API_KEYS_REQUIRED is set and no API key exists: every API "
            "request gets 401 until one is created (scheduler-svc keys create)",
        )
    elif is_loopback(settings.host):
        log.warning(
            "open_mode",
            host=settings.host,
            detail=f"no API keys and no JWT configured: serving without authentication, as "
            f"tenant '{DEFAULT_TENANT}', because {settings.host} is a loopback address; "
            "create a key (scheduler-svc keys create) to require one",
        )
    elif settings.insecure:
        log.warning(
            "insecure_open_mode",
            host=settings.host,
            detail=f"--insecure: serving without authentication on {settings.host}, "
            "reachable from other machines, until an API key is created; only loopback "
            "host names and SCHEDULER_ALLOWED_HOSTS are answered",
        )
    else:
        raise ConfigError(
            f"refusing to serve without authentication on {settings.host}, which is not a "
            "loopback address: create an API key (scheduler-svc keys create), set "
            "SCHEDULER_JWT_SECRET or SCHEDULER_JWT_PUBLIC_KEY, or pass --insecure"
        )


class Authenticator:
    """Resolves a request's principal from its Authorization header."""

    def __init__(self, settings: Settings) -> None:
        self.jwt = JwtVerifier(settings) if jwt_configured(settings) else None
        self.may_serve_open = may_serve_open(settings)
        # SHA-256 of a key that was valid when last looked up → (until when it is
        # trusted without asking the database, its principal). Keyed by the hash, so
        # the keys themselves are not kept in memory. Only valid keys are remembered:
        # a stream of made-up keys costs a query each, as before, and fills nothing.
        self.key_cache_s = settings.api_key_cache_s
        self._verified: dict[bytes, tuple[float, Principal]] = {}

    async def authenticate(
        self, pool: Pool, authorization: str | None, client: str
    ) -> Principal | Rejection:
        """The principal of a request, or why it has none."""
        if authorization is None or not authorization.strip():
            # Checked on every such request, so a key created while we run closes the
            # service at once; a key presented never costs this query.
            if self.may_serve_open and not await store.api_keys_exist(pool):
                return Principal(DEFAULT_TENANT, frozenset({ADMIN}), "open", client)
            return NO_CREDENTIALS
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            return Rejection("the Authorization header must be 'Bearer <key>'", "invalid_request")
        if credential.startswith(KEY_PREFIX):
            return await self._api_key(pool, credential)
        if self.jwt is not None:
            return self.jwt.verify(credential)
        return BAD_KEY

    async def _api_key(self, pool: Pool, key: str) -> Principal | Rejection:
        prefix = key_prefix(key)
        if prefix is None:
            return BAD_KEY
        presented = key_hash(key)
        cached = self._verified.get(presented)
        if cached is not None and cached[0] > time.monotonic():
            # Looked up less than key_cache_s ago: revocation shows after at most that.
            return cached[1]
        found = await store.api_key_get(pool, prefix, TOUCH_AFTER_S)
        stored_hash = found[0].key_hash if found is not None else _NO_HASH
        if not hmac.compare_digest(stored_hash, presented) or found is None:
            return BAD_KEY
        row, touch_due = found
        if row.revoked_at is not None:
            self._verified.pop(presented, None)
            return Rejection("the API key has been revoked", "invalid_token")
        if touch_due:
            await store.api_key_touch(pool, prefix, TOUCH_AFTER_S)
        principal = Principal(row.tenant, frozenset(row.scopes), "key", row.prefix)
        if self.key_cache_s > 0:
            if len(self._verified) >= KEY_CACHE_SIZE:
                self._verified.clear()
            self._verified[presented] = (time.monotonic() + self.key_cache_s, principal)
        return principal
