"""Who is calling: API keys, JWT bearer tokens and the open-on-loopback rule.

An ASGI middleware (AuthMiddleware) resolves each request's principal (or why it has
none); the ScopeGuard middleware answers 401 without one and 403 without the scope the
route needs. Handlers get the principal's tenant through the `tenant` dependency.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import string
import time
from dataclasses import dataclass
from inspect import getmro
from typing import Any, Literal

import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.types import ASGIApp, Receive, Scope, Send

from scheduler_svc import store
from scheduler_svc.config import ConfigError, Settings
from scheduler_svc.db import Pool
from scheduler_svc.errors import SchedulerError

log = structlog.get_logger("scheduler_svc.auth")

READ = "jobs:read"
WRITE = "jobs:write"
ADMIN = "admin"  # implies every other scope
SCOPES = (READ, WRITE, ADMIN)

# The tenant of every request served without credentials (open mode).
DEFAULT_TENANT = "default"
# Routes anyone may call: liveness, readiness, metrics and the API's own documentation.
EXEMPT_PATHS = r"^/(?:healthz|readyz|metrics)?$|^/api(?:/|$)"
_EXEMPT = re.compile(EXEMPT_PATHS)
# Tenant names: printable, no white space, as long as a job name at most.
TENANT = re.compile(r"^[^\s\x00-\x1f\x7f]{1,200}$")

# API keys look like sch_k3x9p2am_<43 characters>: the visible prefix names the key in
# lists and logs; the rest is 32 random bytes (256 bits), base64url.
KEY_PREFIX = "sch_"
_KEY = re.compile(r"^(sch_[a-z0-9]{8})_[A-Za-z0-9_-]{43}$")
_ID_ALPHABET = string.ascii_lowercase + string.digits
# Compared against when no key has the presented prefix, so that a miss costs the same.
_NO_HASH = hashlib.sha256(b"no such key").digest()
# last_used_at is written at most this often per key: a read per request, not a write.
TOUCH_AFTER_S = 60.0
# Verified keys remembered at most this many at once (then forgotten all together).
KEY_CACHE_SIZE = 10_000
# Clock skew tolerated on a JWT's exp and nbf.
JWT_LEEWAY_S = 30


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


def new_key() -> tuple[str, str]:
    """A fresh random API key and its visible prefix."""
    prefix = KEY_PREFIX + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def key_hash(key: str) -> bytes:
    """What the database stores of a key: its SHA-256."""
    return hashlib.sha256(key.encode()).digest()


def key_prefix(key: str) -> str | None:
    """The prefix of a well-formed API key, or None."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def is_exempt(scope: Scope) -> bool:
    """Whether a request needs no principal: an exempt path, or a CORS-style OPTIONS."""
    return scope.get("method") == "OPTIONS" or _EXEMPT.match(scope["path"]) is not None


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


class JwtVerifier:
    """Checks JWT bearer tokens: signature by a pinned algorithm, exp, nbf, tenant, scopes."""

    def __init__(self, settings: Settings) -> None:
        # One key per accepted algorithm: a token's `alg` picks its key, so an HS256 token
        # can never be checked against the public key (alg confusion) and `none` has no key.
        self._keys: dict[str, Any] = {}
        if settings.jwt_secret:
            if len(settings.jwt_secret.encode()) < 32:
                raise ConfigError(
                    "SCHEDULER_JWT_SECRET: expected at least 32 bytes (256 bits) for HS256"
                )
            self._keys["HS256"] = settings.jwt_secret.encode()
        if settings.jwt_public_key:
            algorithm, key = _public_key(settings.jwt_public_key)
            self._keys[algorithm] = key
        self._tenant_claim = settings.jwt_tenant_claim
        self._audience = settings.jwt_audience

    @property
    def algorithms(self) -> list[str]:
        """The algorithms a token may be signed with."""
        return sorted(self._keys)

    def verify(self, token: str) -> Principal | Rejection:
        """The principal a token names, or why it names none."""
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            return Rejection("the bearer token is neither an API key nor a JWT", "invalid_token")
        if not isinstance(algorithm, str) or algorithm not in self._keys:
            accepted = ", ".join(self.algorithms)
            return Rejection(f"JWTs must be signed with {accepted}", "invalid_token")
        try:
            claims = jwt.decode(
                token,
                self._keys[algorithm],
                algorithms=[algorithm],
                audience=self._audience,
                leeway=JWT_LEEWAY_S,
                options={"require": ["exp"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            return Rejection("the token has expired", "invalid_token")
        except jwt.ImmatureSignatureError:
            return Rejection("the token is not valid yet", "invalid_token")
        except (jwt.MissingRequiredClaimError, jwt.InvalidAudienceError) as exc:
            return Rejection(f"the token is not accepted: {exc}", "invalid_token")
        except jwt.InvalidSignatureError:
            return Rejection("the token's signature does not verify", "invalid_token")
        except jwt.InvalidTokenError:
            return Rejection("the token is malformed", "invalid_token")
        tenant = claims.get(self._tenant_claim)
        if not isinstance(tenant, str) or not TENANT.match(tenant):
            return Rejection(
                f"the token has no '{self._tenant_claim}' claim naming a tenant", "invalid_token"
            )
        raw_scopes = claims.get("scope", "")
        named = raw_scopes.split() if isinstance(raw_scopes, str) else []
        subject = claims.get("sub")
        return Principal(
            tenant=tenant,
            scopes=frozenset(s for s in named if s in SCOPES),
            kind="jwt",
            name=subject if isinstance(subject, str) else "-",
        )


def _public_key(pem: str) -> tuple[str, Any]:
    """The algorithm and key of SCHEDULER_JWT_PUBLIC_KEY: RSA → RS256, EC P-256 → ES256."""
    # An environment variable often carries the PEM's line breaks as literal \n.
    text = pem.replace("\\n", "\n").strip()
    try:
        key = load_pem_public_key(text.encode())
    except ValueError:
        raise ConfigError("SCHEDULER_JWT_PUBLIC_KEY: expected a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ConfigError("SCHEDULER_JWT_PUBLIC_KEY: RSA keys need at least 2048 bits")
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256", key
    raise ConfigError("SCHEDULER_JWT_PUBLIC_KEY: expected an RSA or EC P-256 public key")


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


class AuthMiddleware:
    """ASGI middleware: puts the request's Principal in scope["user"], or its Rejection in
    scope["auth"].

    It never answers a request itself: ScopeGuard does, inside the route, so that 401s
    are problem documents that pass through every middleware (request ids, logs), and
    so that the rate limiter can count refused requests by client address. Plain ASGI
    rather than Litestar's AbstractAuthenticationMiddleware, which builds a connection
    and parses every header of every request to read this one.
    """

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and not _EXEMPT.match(scope["path"]):
            client = scope.get("client")
            outcome = await self.authenticator.authenticate(
                scope["litestar_app"].state.pool,
                _authorization(scope),
                client[0] if client else "-",
            )
            if isinstance(outcome, Principal):
                scope["user"], scope["auth"] = outcome, None
            else:
                scope["user"], scope["auth"] = None, outcome
        await self.app(scope, receive, send)


def _authorization(scope: Scope) -> str | None:
    # ASGI servers lower-case header names; the first Authorization header counts.
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value.decode("latin-1")
    return None


class ScopeGuard:
    """ASGI middleware, innermost: 401 without a principal, 403 without the route's scope.

    A route needs `opt={"scope": ...}` if set, else jobs:read to read (GET, HEAD) and
    jobs:write for anything else, so routes added later are covered as they land.
    The refusal is a problem document answered in place, inside the rate limiter, so
    refused requests still count against their client address's budget.

    A middleware rather than a Litestar guard: Litestar copies the route handler for
    each guard it calls, which cost a fifteenth of a `GET /jobs/{id}`.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and not is_exempt(scope):
            refusal = _refusal(scope)
            if refusal is not None:
                await answer_in_route(scope, receive, send, refusal)
                return
        await self.app(scope, receive, send)


def _refusal(scope: Scope) -> HTTPException | None:
    principal = scope.get("user")
    if not isinstance(principal, Principal):
        rejection = scope.get("auth")
        if not isinstance(rejection, Rejection):
            rejection = NO_CREDENTIALS
        challenge = 'Bearer realm="scheduler-svc"'
        if rejection.error is not None:
            challenge += f', error="{rejection.error}"'
        return NotAuthorizedException(
            detail=rejection.detail, headers={"WWW-Authenticate": challenge}
        )
    needed = scope["route_handler"].opt.get("scope") or (
        READ if scope.get("method") in ("GET", "HEAD") else WRITE
    )
    if principal.allows(needed):
        return None
    return PermissionDeniedException(
        detail=f"this {'API key' if principal.kind == 'key' else 'token'} lacks the scope {needed}",
        headers={
            "WWW-Authenticate": f'Bearer realm="scheduler-svc", '
            f'error="insufficient_scope", scope="{needed}"'
        },
    )


async def answer_in_route(
    scope: Scope, receive: Receive, send: Send, exc: HTTPException | SchedulerError
) -> None:
    """Answer a request with `exc` as its route's exception handlers render it.

    For middleware inside the route: raising would skip the outer middleware's view
    of the response (request id, metrics) and reach only the application's handler.
    """
    app = scope["litestar_app"]
    request: Request[Any, Any, Any] = app.request_class(scope, receive, send)
    handlers = scope["route_handler"].resolve_exception_handlers()
    # Litestar's own lookup order: the status code, then the exception's classes.
    handler = handlers.get(exc.status_code) or next(
        handlers[cls] for cls in getmro(type(exc)) if cls in handlers
    )
    response = handler(request, exc)
    await response.to_asgi_response(app=None, request=request)(scope, receive, send)


def tenant_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The tenant a request acts for (ScopeGuard has ensured there is a principal)."""
    principal = connection.scope.get("user")
    if not isinstance(principal, Principal):  # an exempt route asked for a tenant
        raise NotAuthorizedException(detail=NO_CREDENTIALS.detail)
    return principal.tenant
