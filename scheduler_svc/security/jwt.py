"""JWT bearer tokens: HS256 with a shared secret, RS256/ES256 with a public key."""

from __future__ import annotations

from typing import Any

import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from scheduler_svc.config import ConfigError, Settings
from scheduler_svc.security.principals import SCOPES, TENANT, Principal, Rejection

log = structlog.get_logger("scheduler_svc.security.auth")

# Clock skew tolerated on a JWT's exp and nbf.
JWT_LEEWAY_S = 30


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
