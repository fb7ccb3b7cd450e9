"""Webhook signing secrets per tenant (SPEC §5): `keys secret` makes, rotates and retires
them; deliveries are signed with their run's tenant's (both during a rotation), with
SCHEDULER_WEBHOOK_SECRET for a tenant without one, and never with another tenant's."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from scheduler_svc import store
from scheduler_svc.store import db
from scheduler_svc.targets import Deliverer, Delivery
from scheduler_svc.targets.http import WebhookClient
from tests.helpers import cli_env, run_cli
from tests.replicas import Replicas, create_job, http_target
from tests.webhook_receiver import Recorded, WebhookReceiver, serve_receiver

pytestmark = pytest.mark.timeout(60)

DEFAULT = "whsec_operator_default_0123456789"


@pytest.fixture
async def clean_secrets(pool: Any, clean: None) -> None:
    await pool.execute("DELETE FROM tenant_secrets; DELETE FROM alerts")


def delivery(url: str, tenant: str) -> Delivery:
    return Delivery(
        run_id=7,
        job_id=3,
        job_name="report",
        tenant=tenant,
        scheduled_for=datetime(2024, 1, 1, tzinfo=UTC),
        trigger="schedule",
        attempt=1,
        attributes={},
        target={"type": "http", "url": url},
        timeout_s=5.0,
        backoff_max_s=60.0,
    )


def macs(request: Recorded) -> list[str]:
    """The v1 values of a request's X-Scheduler-Signature."""
    header = request.headers["x-scheduler-signature"]
    return [part[3:] for part in header.split(",") if part.startswith("v1=")]


def verifies(request: Recorded, secret: str) -> bool:
    """A receiver's check: some v1 is the HMAC of "<t>.<body>" with its secret, and t is fresh."""
    fields = [part.split("=", 1) for part in request.headers["x-scheduler-signature"].split(",")]
    [t] = [value for name, value in fields if name == "t"]
    expected = hmac.new(secret.encode(), f"{t}.".encode() + request.body, hashlib.sha256)
    fresh = abs(time.time() - int(t)) < 300
    return fresh and any(hmac.compare_digest(expected.hexdigest(), mac) for mac in macs(request))


def keys_secret(database_url: str, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """`scheduler-svc keys secret <args>`: its exit code, stdout and stderr."""
    done = run_cli(tmp_path, "keys", "secret", *args, env=cli_env(database_url))
    return done.returncode, done.stdout, done.stderr


async def secrets_of(pool: Any, tenant: str) -> tuple[str, str | None] | None:
    return await store.tenant_secret_get(pool, tenant)


# --- the command -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("clean_secrets")
async def test_keys_secret_creates_rotates_and_retires_a_tenants_secret(
    database_url: str, tmp_path: Path, pool: Any
) -> None:
    code, out, _ = keys_secret(database_url, tmp_path, "--tenant", "acme")
    assert code == 0
    first = out.splitlines()[-1]
    assert first.startswith("whsec_") and len(first) > 40
    assert await secrets_of(pool, "acme") == (first, None)

    code, out, _ = keys_secret(database_url, tmp_path, "--tenant", "acme")
    second = out.splitlines()[-1]
    assert code == 0 and second != first
    assert "--retire-previous" in out, "a rotation says how to end it"
    assert await secrets_of(pool, "acme") == (second, first)

    code, out, _ = keys_secret(database_url, tmp_path, "--tenant", "acme", "--retire-previous")
    assert code == 0 and "retired" in out
    assert first not in out and second not in out
    assert await secrets_of(pool, "acme") == (second, None)
    code, out, _ = keys_secret(database_url, tmp_path, "--tenant", "acme", "--retire-previous")
    assert code == 0 and "nothing to retire" in out

    code, _, err = keys_secret(database_url, tmp_path, "--tenant", "nobody", "--retire-previous")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "no signing secret" in err
    code, _, err = keys_secret(database_url, tmp_path, "--tenant", "has space")
    assert code == 1 and "--tenant" in err
    assert await secrets_of(pool, "nobody") is None


# --- signing ---------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_secrets")
async def test_a_rotation_signs_twice_a_retirement_once_and_no_tenant_with_anothers(
    pool: Any, http: WebhookClient, receiver: WebhookReceiver
) -> None:
    secrets = store.TenantSecrets(pool, DEFAULT, cache_s=0)
    deliverer = Deliverer(http, allow_private=True, webhook_secret=DEFAULT, secrets=secrets)
    url = receiver.url()
    await store.tenant_secret_rotate(pool, "acme", "whsec_acme_old_0123456789")
    await store.tenant_secret_rotate(pool, "globex", "whsec_globex_0123456789")

    await deliverer.deliver(delivery(url, "acme"))
    await store.tenant_secret_rotate(pool, "acme", "whsec_acme_new_0123456789")
    await deliverer.deliver(delivery(url, "acme"))
    await store.tenant_secret_retire(pool, "acme")
    await deliverer.deliver(delivery(url, "acme"))
    await deliverer.deliver(delivery(url, "initech"))  # no secret of its own
    await deliverer.deliver(delivery(url, "globex"))

    before, rotating, after, default, other = await receiver.wait_for(5)
    assert [len(macs(r)) for r in (before, rotating, after, default, other)] == [1, 2, 1, 1, 1]
    assert verifies(before, "whsec_acme_old_0123456789")
    assert verifies(rotating, "whsec_acme_old_0123456789")
    assert verifies(rotating, "whsec_acme_new_0123456789")
    assert verifies(after, "whsec_acme_new_0123456789")
    assert not verifies(after, "whsec_acme_old_0123456789")
    assert verifies(default, DEFAULT)
    # Neither the operator's secret nor another tenant's verifies a tenant's deliveries.
    for request in (before, rotating, after):
        assert not verifies(request, DEFAULT)
        assert not verifies(request, "whsec_globex_0123456789")
    assert not verifies(other, "whsec_acme_new_0123456789") and not verifies(other, DEFAULT)
    assert verifies(other, "whsec_globex_0123456789")


@pytest.mark.usefixtures("clean_secrets")
async def test_a_tenants_secrets_are_read_once_per_cache_period(pool: Any) -> None:
    await store.tenant_secret_rotate(pool, "acme", "whsec_acme_old_0123456789")
    secrets = store.TenantSecrets(pool, DEFAULT, cache_s=60)

    assert await secrets("acme") == ("whsec_acme_old_0123456789",)
    await store.tenant_secret_rotate(pool, "acme", "whsec_acme_new_0123456789")
    assert await secrets("acme") == ("whsec_acme_old_0123456789",), "from the cache"
    assert await store.TenantSecrets(pool, DEFAULT, cache_s=0)("acme") == (
        "whsec_acme_new_0123456789",
        "whsec_acme_old_0123456789",
    )
    assert await secrets("initech") == (DEFAULT,)
    assert await store.TenantSecrets(pool, None)("initech") == (), "unsigned"


@pytest.fixture
async def closed_pool(database_url: str) -> Any:
    """A pool whose every query fails, as with the database away."""
    pool = await db.create_pool(database_url, max_size=1)
    await pool.close()
    return pool


@pytest.mark.usefixtures("clean_secrets")
async def test_without_the_database_a_delivery_is_retried_not_signed_with_another_key(
    closed_pool: Any, http: WebhookClient, receiver: WebhookReceiver
) -> None:
    secrets = store.TenantSecrets(closed_pool, DEFAULT, cache_s=0)
    deliverer = Deliverer(http, allow_private=True, webhook_secret=DEFAULT, secrets=secrets)

    outcome = await deliverer.deliver(delivery(receiver.url(), "acme"))

    assert (outcome.ok, outcome.retryable) == (False, True)
    assert outcome.error is not None and "signing secrets" in outcome.error
    assert receiver.requests == []


# --- a replica ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("clean_secrets")
async def test_a_replica_signs_with_the_tenants_secret_and_follows_a_rotation(
    tmp_path: Path, database_url: str
) -> None:
    group = Replicas(tmp_path, database_url)
    try:
        async with serve_receiver() as receiver, httpx.AsyncClient(timeout=10) as http:
            _, out, _ = keys_secret(database_url, tmp_path, "--tenant", "default")
            old = out.splitlines()[-1]
            [replica] = await group.start("r1", SCHEDULER_WEBHOOK_SECRET=DEFAULT)
            await create_job(
                http, replica, schedule="@every 1s", target=http_target(receiver.url())
            )
            [first] = await receiver.wait_for(1, timeout=10)
            _, out, _ = keys_secret(database_url, tmp_path, "--tenant", "default")
            new = out.splitlines()[-1]

            def both(requests: list[Recorded]) -> bool:
                return len(macs(requests[-1])) == 2

            rotating = (await receiver.wait_until(both, timeout=15))[-1]
            keys_secret(database_url, tmp_path, "--tenant", "default", "--retire-previous")

            seen = len(receiver.requests)

            def one(requests: list[Recorded]) -> bool:
                return len(requests) > seen and len(macs(requests[-1])) == 1

            after = (await receiver.wait_until(one, timeout=15))[-1]
    finally:
        await group.aclose()

    assert verifies(first, old) and not verifies(first, DEFAULT)
    assert verifies(rotating, old) and verifies(rotating, new)
    assert verifies(after, new) and not verifies(after, old)
