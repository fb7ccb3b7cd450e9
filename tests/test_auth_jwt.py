"""JWT bearer tokens: HS256 with a secret, RS256/ES256 with a public key, nothing else."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from scheduler_svc.config import ConfigError
from scheduler_svc.security import jwt as jwt_tokens
from tests.helpers import assert_problem, assert_unauthorized, running_app
from tests.principals import JWT_SECRET, bearer, make_jwt, make_key

JOB = {"name": "job", "schedule": "@every 1m"}


def public_pem(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forged(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token built by hand, as an attacker would: `alg: none`, or HMAC under any key."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "u", "tenant": "acme", "scope": "admin", "exp": now + 300, **changes}


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
SECRET = JWT_SECRET.encode()


# One app per kind of key for the whole module: starting one costs more than most
# tests here. They hold no state a test leaves behind but cached keys, and every test
# makes keys of its own.
@pytest.fixture(scope="module")
async def hs256_app(make_settings: Any, pool: asyncpg.Pool[Any]) -> AsyncIterator[str]:
    async with running_app(make_settings(jwt_secret=JWT_SECRET), pool) as url:
        yield url


@pytest.fixture(scope="module")
async def rs256_app(make_settings: Any, pool: asyncpg.Pool[Any]) -> AsyncIterator[str]:
    settings = make_settings(jwt_public_key=public_pem(RSA_KEY))
    async with running_app(settings, pool) as url:
        yield url


@pytest.fixture
def hs256(hs256_app: str, clean: None) -> str:
    """The URL of an app that takes HS256 tokens, on empty tables."""
    return hs256_app


@pytest.fixture
def rs256(rs256_app: str, clean: None) -> str:
    """The URL of an app that takes RS256 tokens, on empty tables."""
    return rs256_app


async def test_hs256_token_acts_for_the_tenant_of_its_claim(
    hs256: str, pool: asyncpg.Pool[Any]
) -> None:
    async with httpx.AsyncClient(base_url=hs256) as http:
        token = make_jwt(tenant="acme")
        response = await http.post("/jobs", json=JOB, headers=bearer(token))
        assert response.status_code == 201, response.text
        tenant = await pool.fetchval("SELECT tenant FROM jobs WHERE id = $1", response.json()["id"])
        assert tenant == "acme"
        other = make_jwt(tenant="globex")
        assert (await http.get("/jobs", headers=bearer(other))).json() == []
        assert len((await http.get("/jobs", headers=bearer(token))).json()) == 1


@pytest.mark.parametrize(
    ("case", "token"),
    [
        ("expired", make_jwt(expires_in=-3600)),
        ("not valid yet", make_jwt(nbf=int(time.time()) + 3600)),
        ("wrong secret", make_jwt("another-secret-of-thirty-two-bytes-or-more")),
        ("alg none", forged({"alg": "none", "typ": "JWT"}, claims(), None)),
        ("alg None", forged({"alg": "None", "typ": "JWT"}, claims(), None)),
        ("no exp", forged({"alg": "HS256"}, {"tenant": "acme", "scope": "admin"}, SECRET)),
        ("no tenant", make_jwt(tenant=None)),
        ("empty tenant", make_jwt(tenant="")),
        ("tenant not a string", forged({"alg": "HS256"}, claims(tenant=["a", "b"]), SECRET)),
        ("tenant with spaces", make_jwt(tenant="a b")),
        ("RS256 when only a secret is set", make_jwt(RSA_KEY, "RS256")),
        ("garbage", "a.b.c"),
        ("two parts", "abc.def"),
    ],
)
async def test_bad_hs256_tokens_get_401(hs256: str, case: str, token: str) -> None:
    async with httpx.AsyncClient(base_url=hs256) as http:
        assert_unauthorized(await http.get("/jobs", headers=bearer(token)))


async def test_expiry_is_enforced_with_little_leeway(hs256: str) -> None:
    async with httpx.AsyncClient(base_url=hs256) as http:
        late = make_jwt(expires_in=-(jwt_tokens.JWT_LEEWAY_S + 5))
        problem = assert_unauthorized(await http.get("/jobs", headers=bearer(late)))
        assert "expired" in problem["detail"]
        assert (
            'error="invalid_token"'
            in ((await http.get("/jobs", headers=bearer(late))).headers["www-authenticate"])
        )


async def test_token_scopes_are_enforced(hs256: str) -> None:
    async with httpx.AsyncClient(base_url=hs256) as http:
        reader = bearer(make_jwt(scope="jobs:read"))
        assert (await http.get("/jobs", headers=reader)).status_code == 200
        assert_problem(await http.post("/jobs", json=JOB, headers=reader), 403)
        nothing = bearer(make_jwt(scope=None))
        assert_problem(await http.get("/jobs", headers=nothing), 403)
        unknown = bearer(make_jwt(scope="root superuser"))
        assert_problem(await http.get("/jobs", headers=unknown), 403)


async def test_keys_still_work_beside_jwt(hs256: str, pool: asyncpg.Pool[Any]) -> None:
    key = await make_key(pool, "acme")
    async with httpx.AsyncClient(base_url=hs256) as http:
        assert (await http.get("/jobs", headers=bearer(key))).status_code == 200
        # JWT configured: never open, even on loopback with no credentials.
        assert_unauthorized(await http.get("/jobs"))


async def test_no_credentials_with_jwt_configured_is_401_on_loopback(hs256: str) -> None:
    async with httpx.AsyncClient(base_url=hs256) as http:
        assert_unauthorized(await http.get("/jobs"))


async def test_rs256_token_is_accepted(rs256: str) -> None:
    async with httpx.AsyncClient(base_url=rs256) as http:
        token = make_jwt(RSA_KEY, "RS256")
        assert (await http.post("/jobs", json=JOB, headers=bearer(token))).status_code == 201


@pytest.mark.parametrize(
    ("case", "token"),
    [
        ("expired", make_jwt(RSA_KEY, "RS256", expires_in=-3600)),
        ("not valid yet", make_jwt(RSA_KEY, "RS256", nbf=int(time.time()) + 3600)),
        ("signed by another key", make_jwt(OTHER_RSA_KEY, "RS256")),
        ("alg none", forged({"alg": "none"}, claims(), None)),
        # Alg confusion: an HMAC keyed with the public key, which anyone can read.
        (
            "HS256 keyed with the public key",
            forged({"alg": "HS256", "typ": "JWT"}, claims(), public_pem(RSA_KEY).encode()),
        ),
        ("HS256 with a secret", make_jwt(JWT_SECRET, "HS256")),
        ("RS512", make_jwt(RSA_KEY, "RS512")),
        ("PS256", make_jwt(RSA_KEY, "PS256")),
    ],
)
async def test_bad_rs256_tokens_get_401(rs256: str, case: str, token: str) -> None:
    async with httpx.AsyncClient(base_url=rs256) as http:
        assert_unauthorized(await http.get("/jobs", headers=bearer(token)))


async def test_es256_and_a_custom_tenant_claim(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    settings = make_settings(jwt_public_key=public_pem(EC_KEY), jwt_tenant_claim="org")
    async with running_app(settings, pool) as url, httpx.AsyncClient(base_url=url) as http:
        token = make_jwt(EC_KEY, "ES256", tenant=None, org="initech")
        response = await http.post("/jobs", json=JOB, headers=bearer(token))
        assert response.status_code == 201, response.text
        tenant = await pool.fetchval("SELECT tenant FROM jobs WHERE id = $1", response.json()["id"])
        assert tenant == "initech"
        assert_unauthorized(await http.get("/jobs", headers=bearer(make_jwt(EC_KEY, "ES256"))))


async def test_audience_is_checked_when_configured(
    make_settings: Any, pool: asyncpg.Pool[Any], clean: None
) -> None:
    settings = make_settings(jwt_secret=JWT_SECRET, jwt_audience="scheduler")
    async with running_app(settings, pool) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/jobs", headers=bearer(make_jwt(aud="scheduler")))).is_success
        assert_unauthorized(await http.get("/jobs", headers=bearer(make_jwt(aud="billing"))))
        assert_unauthorized(await http.get("/jobs", headers=bearer(make_jwt())))


def test_public_key_with_escaped_newlines_is_read(make_settings: Any) -> None:
    escaped = public_pem(RSA_KEY).replace("\n", "\\n")
    verifier = jwt_tokens.JwtVerifier(make_settings(jwt_public_key=escaped))
    assert verifier.algorithms == ["RS256"]
    both = jwt_tokens.JwtVerifier(
        make_settings(jwt_public_key=public_pem(EC_KEY), jwt_secret=JWT_SECRET)
    )
    assert both.algorithms == ["ES256", "HS256"]


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"jwt_secret": "too-short"}, "SCHEDULER_JWT_SECRET"),
        ({"jwt_public_key": "not a pem"}, "SCHEDULER_JWT_PUBLIC_KEY"),
        (
            {
                "jwt_public_key": public_pem(
                    rsa.generate_private_key(public_exponent=65537, key_size=1024)
                )
            },
            "SCHEDULER_JWT_PUBLIC_KEY",
        ),
        (
            {"jwt_public_key": public_pem(ec.generate_private_key(ec.SECP384R1()))},
            "SCHEDULER_JWT_PUBLIC_KEY",
        ),
    ],
)
def test_bad_jwt_settings_name_the_variable(
    make_settings: Any, changes: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError, match=variable):
        jwt_tokens.JwtVerifier(make_settings(**changes))
