"""The alert sender (SPEC §8): the missed-tick check, and delivery of the alerts outbox.

Every replica that runs executors runs one. About once a second it runs the missed-tick
check (the replica that gets its advisory lock does; the others skip it), then leases
the due pending alerts (SKIP LOCKED; the lease is the alert's next attempt moved to its
end, so an alert whose sender died while delivering it is taken over then) and POSTs
each by the rules of a webhook call, signed with its tenant's secrets. A failed delivery
is retried with exponential backoff for more than an hour before the alert is `failed`.

Alerts of a job's own `alerts.url` go through the guarded webhook client, as webhooks
do; those for SCHEDULER_ALERT_URL, the operator's, through one that may reach private
addresses.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import msgspec
import structlog

from scheduler_svc import metrics, store
from scheduler_svc.engine.aio import wait_any
from scheduler_svc.store.alerts import AlertRow
from scheduler_svc.store.db import DATABASE_ERRORS, Pool
from scheduler_svc.targets.delivery import Outcome
from scheduler_svc.targets.http import WebhookClient, webhook_client
from scheduler_svc.targets.netguard import Resolver
from scheduler_svc.targets.webhook import SigningSecrets, Webhook

log = structlog.get_logger("scheduler_svc.engine.alerts")

# One delivery's limit (connect, and each read), as a job's timeout_s is a run's.
ALERT_TIMEOUT_S = 10.0
# How often the missed-tick check runs, and the sender looks for due alerts unwoken.
CHECK_EVERY_S = 1.0
# Retries: 5 s, doubling, at most 10 min apart, jittered upward only; the 13th attempt
# comes at least 3,635 s after the first (5+10+…+320+5·600), so delivery is tried for
# over an hour, as for a webhook with the default backoff_max_s, before `failed`.
BACKOFF_S = 5.0
BACKOFF_MAX_S = 600.0
MAX_ATTEMPTS = 13
# Alerts delivered at once per replica, and leased per claim at most.
CONCURRENCY = 16
# How long a stopping sender waits to give back the alerts it had not delivered.
RELEASE_S = 5.0

Result = Literal["delivered", "retried", "failed", "lost"]


def retry_delay_s(attempts: int) -> float:
    """Seconds before the next delivery attempt after `attempts` failed ones."""
    base: float = min(BACKOFF_MAX_S, BACKOFF_S * 2.0 ** min(attempts - 1, 62))
    return base * random.uniform(1.0, 1.2)


def idempotency_key(alert: AlertRow) -> str:
    """The same for every delivery of an alert, on every replica: `alert-<event>-<run id>`,
    or for job.missed (which may have no run) `alert-job.missed-<job id>-<tick, unix s>`."""
    if alert.event == "job.missed" or alert.run_id is None:
        return f"alert-{alert.event}-{alert.job_id}-{int(alert.scheduled_for.timestamp())}"
    return f"alert-{alert.event}-{alert.run_id}"


def payload(alert: AlertRow, at: datetime) -> bytes:
    """The JSON POSTed: the stored body, its ids and times from the row's own columns
    (RFC 3339 in UTC), and `at`, the time of sending."""
    return msgspec.json.encode(
        {
            **alert.body,
            "event": alert.event,
            "job_id": alert.job_id,
            "job_name": alert.body.get("job_name", alert.job_name),
            "run_id": alert.run_id,
            "scheduled_for": alert.scheduled_for.astimezone(UTC),
            "error": alert.body.get("error"),
            "at": at.astimezone(UTC),
        }
    )


def shard_of(tenants: Sequence[str] | None) -> int:
    """The missed check's lock for a replica's tenants (a signed 32-bit number): replicas
    of one shard take turns, those of different shards check their own tenants."""
    if tenants is None:
        return 0
    crc = zlib.crc32(",".join(sorted(tenants)).encode())
    return crc - 2**32 if crc >= 2**31 else crc


class AlertSender:
    """One replica's alert sender: the missed-tick check and deliveries, up to
    `concurrency` at once.

    `operator_url` is SCHEDULER_ALERT_URL; `allow_private` lets a job's own alert url
    reach private addresses too (SCHEDULER_WEBHOOK_ALLOW_PRIVATE). A lease lasts a
    delivery's timeout plus `lease_margin_s`.
    """

    def __init__(
        self,
        pool: Pool,
        http: WebhookClient,
        *,
        secrets: SigningSecrets | None,
        worker_id: str,
        operator_url: str | None,
        allow_private: bool = False,
        tenants: Sequence[str] | None = None,
        lease_margin_s: float = 10.0,
        concurrency: int = CONCURRENCY,
        resolver: Resolver | None = None,
    ) -> None:
        self._pool = pool
        self._secrets = secrets
        self.worker_id = worker_id
        self._operator_url = operator_url
        self._allow_private = allow_private
        self._tenants = tenants
        self._shard = shard_of(tenants)
        self.lease_s = ALERT_TIMEOUT_S + lease_margin_s
        self._concurrency = concurrency
        self._guarded = Webhook(
            http, secret=None, allow_private=allow_private, resolver=resolver, secrets=secrets
        )
        # The operator's URL may be private: with the guard on, a client without it
        # (opened on first use; the guard lives in the client's connector).
        self._trusted = self._guarded if allow_private else None
        self._trusted_http: WebhookClient | None = None
        self.wake = asyncio.Event()  # set to look for due alerts now
        self._inflight: dict[int, tuple[asyncio.Task[Result], int]] = {}
        self._failure: BaseException | None = None
        self._saturated = False  # the last claim took every free slot

    # --- the pass: check, claim, deliver ------------------------------------------------

    async def check_missed(self, now: datetime | None = None) -> list[store.Missed] | None:
        """Raise a job.missed alert for each missed tick not alerted yet (as of `now`,
        None: the database clock); the alerts made, None if another replica checks."""
        made = await store.alerts_check_missed(
            self._pool, self._operator_url is not None, self._shard, self._tenants, now
        )
        for alert in made or ():
            log.info(
                "alert_raised",
                alert_event="job.missed",
                alert_id=alert.id,
                job_id=alert.job_id,
                run_id=alert.run_id,
                tick=alert.scheduled_for.isoformat(),
                worker=self.worker_id,
            )
        return made

    async def claim(self, limit: int) -> list[AlertRow]:
        """Lease up to `limit` due alerts to this sender."""
        return await store.alerts_claim(
            self._pool, self.lease_s, limit, self._operator_url is not None, self._tenants
        )

    async def deliver(self, alert: AlertRow) -> Result:
        """Make one delivery attempt of a leased alert and record what it came to; `lost`
        if another sender took the alert over meanwhile (or the record failed: the lease
        then runs out, and the alert is delivered again)."""
        outcome = await self._post(alert)
        if outcome.ok:
            result: Result = "delivered"
            status: Literal["delivered", "failed", "pending"] = "delivered"
            delay_s = None
        elif outcome.retryable and alert.attempts < MAX_ATTEMPTS:
            result, status = "retried", "pending"
            delay_s = max(retry_delay_s(alert.attempts), outcome.retry_after_s or 0.0)
        else:
            result, status, delay_s = "failed", "failed", None
        try:
            recorded = await store.alert_record(
                self._pool, alert.id, alert.attempts, status, delay_s, outcome.error
            )
        except DATABASE_ERRORS as exc:
            log.warning("alert_not_recorded", alert_id=alert.id, error=str(exc))
            return "lost"
        fields = {
            "alert_event": alert.event,
            "alert_id": alert.id,
            "job_id": alert.job_id,
            "run_id": alert.run_id,
            "tick": alert.scheduled_for.isoformat(),
            "attempt": alert.attempts,
            "worker": self.worker_id,
        }
        if not recorded:
            log.warning("alert_lease_lost", **fields)
            return "lost"
        metrics.alerted(alert.event, result)
        if result == "delivered":
            log.info("alert_delivered", **fields)
        elif result == "retried":
            assert delay_s is not None
            log.warning("alert_retry", error=outcome.error, retry_in_s=round(delay_s, 3), **fields)
        else:
            log.warning("alert_failed", error=outcome.error, **fields)
        return result

    async def send_once(self, now: datetime | None = None) -> dict[int, Result]:
        """One whole pass: the missed check, then every due alert (up to the concurrency)
        delivered, each attempt recorded; what came of each, by alert id."""
        await self.check_missed(now)
        alerts = await self.claim(self._concurrency)
        results = await asyncio.gather(*(self.deliver(a) for a in alerts))
        return {a.id: r for a, r in zip(alerts, results, strict=True)}

    async def _post(self, alert: AlertRow) -> Outcome:
        url = alert.url or self._operator_url
        if url is None:  # claimed only once a day old: no replica had it set meanwhile
            return Outcome(
                ok=False,
                error=f"SCHEDULER_ALERT_URL is not set (on replica {self.worker_id})",
                retryable=False,
            )
        webhook = self._guarded if alert.url is not None else self._trusted_webhook()
        headers = [
            ("Idempotency-Key", idempotency_key(alert)),
            ("X-Scheduler-Event", alert.event),
            ("X-Scheduler-Alert-Id", str(alert.id)),
            ("X-Scheduler-Job-Id", str(alert.job_id)),
            ("X-Scheduler-Attempt", str(alert.attempts)),
        ]
        if alert.run_id is not None:
            headers.append(("X-Scheduler-Run-Id", str(alert.run_id)))
        return await webhook.send(
            url,
            payload(alert, datetime.now(UTC)),
            headers,
            tenant=alert.tenant,
            timeout_s=ALERT_TIMEOUT_S,
            retry_after_cap_s=BACKOFF_MAX_S,
        )

    def _trusted_webhook(self) -> Webhook:
        if self._trusted is None:
            self._trusted_http = webhook_client(allow_private=True, max_connections=CONCURRENCY)
            self._trusted = Webhook(
                self._trusted_http,
                secret=None,
                allow_private=True,
                resolver=None,
                secrets=self._secrets,
            )
        return self._trusted

    async def aclose(self) -> None:
        """Close the client of the operator's URL, if one was opened."""
        if self._trusted_http is not None:
            await self._trusted_http.aclose()
            self._trusted_http = None
            self._trusted = self._guarded if self._allow_private else None

    # --- the loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Check and deliver about once a second (at once when woken) until `stop`; then
        give back the alerts still being delivered, for another replica to take."""
        loop = asyncio.get_running_loop()
        check_at = 0.0
        retry_s = 0.1
        try:
            while not stop.is_set():
                if self._failure is not None:
                    raise self._failure
                self.wake.clear()
                sleep_s = CHECK_EVERY_S
                try:
                    if loop.time() >= check_at:
                        check_at = loop.time() + CHECK_EVERY_S
                        await self.check_missed()
                    free = self._concurrency - len(self._inflight)
                    if free > 0:
                        alerts = await self.claim(free)
                        for alert in alerts:
                            self._start(alert)
                        # All slots taken: more may be due, claimed as slots free up.
                        self._saturated = len(alerts) == free
                    sleep_s = max(0.0, check_at - loop.time())
                    retry_s = 0.1
                except DATABASE_ERRORS as exc:
                    log.warning("alerts_database_error", error=str(exc), retry_in_s=retry_s)
                    sleep_s, retry_s = retry_s, min(retry_s * 2, 5.0)
                await wait_any(sleep_s, stop, self.wake)
        finally:
            # The last writes must happen even if whoever awaits run is cancelled.
            await asyncio.shield(self._give_back())

    def _start(self, alert: AlertRow) -> None:
        task = asyncio.create_task(self.deliver(alert), name=f"alert-{alert.id}")
        self._inflight[alert.id] = (task, alert.attempts)

        def done(finished: asyncio.Task[Result]) -> None:
            self._inflight.pop(alert.id, None)
            if self._saturated:
                self.wake.set()
            if not finished.cancelled() and finished.exception() is not None:
                # A bug, not a delivery failure (those are Outcomes): stop the replica's
                # worker rather than let it run half alive.
                log.error("alert_sender_failed", exc_info=finished.exception())
                self._failure = finished.exception()
                self.wake.set()

        task.add_done_callback(done)

    async def _give_back(self) -> None:
        leased = [(alert_id, attempts) for alert_id, (_, attempts) in self._inflight.items()]
        tasks = [task for task, _ in self._inflight.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            if leased:
                async with asyncio.timeout(RELEASE_S):
                    await store.alerts_release(self._pool, leased)
                log.info("alerts_released", alerts=len(leased), worker=self.worker_id)
        except (*DATABASE_ERRORS, TimeoutError) as exc:
            # Their leases run out and another replica delivers them.
            log.warning("alerts_release_failed", alerts=len(leased), error=str(exc))
        finally:
            await self.aclose()
