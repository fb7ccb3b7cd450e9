"""One replica's background work: scheduler, executors, LISTEN wake-ups, maintenance,
the alert sender, the console's counts of runs (rollup) and the look at how far behind
the service is (behind.py).

One TaskGroup owns every loop. Stopping sets one event: the loops stop claiming,
then the executor drains its in-flight runs for the grace period and hands back
what did not finish.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import structlog

from scheduler_svc import store
from scheduler_svc.config import Settings
from scheduler_svc.engine import behind, maintenance
from scheduler_svc.engine.aio import wait_any
from scheduler_svc.engine.alerts import AlertSender
from scheduler_svc.engine.executor import Executor
from scheduler_svc.engine.rollup import RunStats
from scheduler_svc.engine.scheduler import Scheduler
from scheduler_svc.store import db
from scheduler_svc.store.db import DATABASE_ERRORS, Pool
from scheduler_svc.targets import Deliverer

log = structlog.get_logger("scheduler_svc.engine.worker")

# How often the LISTEN connection checks that it is still connected.
LISTEN_PING_S = 15.0


class Worker:
    """Scheduler and executors of one replica, woken by the database's notifications;
    and its alert sender, if given one. They count runs for the console in `stats`: the
    one given (its owner flushes it), or one of the worker's own."""

    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        deliverer: Deliverer,
        alerts: AlertSender | None = None,
        stats: RunStats | None = None,
    ) -> None:
        assert settings.database_url is not None
        self._settings = settings
        self._pool = pool
        self._owns_stats = stats is None
        self.stats = stats or RunStats(pool, settings.worker_id)
        self.executor = Executor(
            pool,
            deliverer,
            worker_id=settings.worker_id,
            concurrency=settings.concurrency,
            lease_margin_s=settings.lease_margin_s,
            tenants=settings.tenants,
            # Jobs without alert settings are alerted at SCHEDULER_ALERT_URL, if set.
            operator_alerts=settings.alert_url is not None,
            stats=self.stats,
        )
        self.scheduler = Scheduler(
            pool,
            executor=self.executor,
            tenants=settings.tenants,
            operator_alerts=settings.alert_url is not None,
            stats=self.stats,
        )
        self.alerts = alerts
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        """Start every loop in the background; the task fails if any loop fails."""
        self._task = asyncio.create_task(self._run(), name="worker")
        return self._task

    async def _run(self) -> None:
        log.info("worker_started", worker=self.executor.worker_id)
        async with asyncio.TaskGroup() as group:
            group.create_task(self.scheduler.run(self._stop), name="scheduler")
            group.create_task(self.executor.run(self._stop), name="executor")
            group.create_task(self._listen(), name="listener")
            if self.alerts is not None:
                group.create_task(self.alerts.run(self._stop), name="alerts")
            group.create_task(
                maintenance.run(self._pool, self._settings.run_retention_days, self._stop),
                name="maintenance",
            )
            group.create_task(
                behind.run(self._pool, self.executor.worker_id, self._stop), name="behind"
            )
            if self._owns_stats:
                group.create_task(self.stats.run(self._stop), name="rollup")

    def begin_stop(self) -> asyncio.Task[None]:
        """Stop claiming now and drain in the background; calling it again changes nothing."""
        if self._stopping is None:
            self._stop.set()
            self._stopping = asyncio.create_task(self._drain(), name="worker-stop")
        return self._stopping

    async def stop(self) -> None:
        """Stop claiming, let in-flight runs finish for up to the shutdown grace, and
        hand back the rest."""
        await self.begin_stop()

    async def _drain(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self.executor.drain(self._settings.shutdown_grace_s)
        if self._owns_stats:  # after the drain, whose results count too
            await self.stats.flush_last()
        log.info("worker_stopped", worker=self.executor.worker_id)

    def _cancelled(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        """NOTIFY scheduler_cancel: its payload is the id of the run cancelled."""
        if isinstance(payload, str) and payload.isdigit():
            self.executor.cancel(int(payload))

    async def _listen(self) -> None:
        """Keep a LISTEN connection open and turn notifications into wake-ups."""
        assert self._settings.database_url is not None
        dsn, server_settings = db.connect_options(self._settings.database_url)
        server_settings = {
            "application_name": db.application_name(self._settings.worker_id),
            **server_settings,
        }
        retry_s = 0.1
        while not self._stop.is_set():
            conn: asyncpg.Connection[Any] | None = None
            try:
                conn = await asyncpg.connect(dsn, server_settings=server_settings, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                await conn.add_listener("scheduler_jobs", lambda *_: self.scheduler.wake.set())
                await conn.add_listener("scheduler_runs", lambda *_: self.executor.wake.set())
                await conn.add_listener("scheduler_cancel", self._cancelled)
                # Whatever changed while nobody listened is picked up now.
                self.scheduler.wake.set()
                self.executor.wake.set()
                await self.executor.cancels.recheck()
                retry_s = 0.1
                while not self._stop.is_set() and not lost.is_set():
                    await wait_any(LISTEN_PING_S, self._stop, lost)
                    if not self._stop.is_set() and not lost.is_set():
                        async with asyncio.timeout(5):
                            await store.ping(conn)
                if lost.is_set():
                    log.warning("listen_connection_lost")
            except DATABASE_ERRORS as exc:
                if conn is not None and conn.is_closed():
                    # Lost while the LISTENs were being set up: the same event as above,
                    # reported the same way, then retried like any error.
                    log.warning("listen_connection_lost", error=str(exc), retry_in_s=retry_s)
                else:
                    log.warning("listen_database_error", error=str(exc), retry_in_s=retry_s)
                await wait_any(retry_s, self._stop)
                retry_s = min(retry_s * 2, 5.0)
            finally:
                if conn is not None:
                    conn.terminate()
