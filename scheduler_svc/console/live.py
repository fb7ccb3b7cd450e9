"""Live consoles: one LISTEN connection per replica on `scheduler_console`, its
notifications batched and fanned out to the server-sent-event streams of each tenant.

Each replica's engine (its pulse, engine/rollup.py, every quarter second) and the
statement triggers on `jobs` (the API's changes) notify once per tenant, with the jobs
changed (`{"t": tenant, "j": [job ids]}`) or `"j": null` when there were many. The hub
opens its connection when the first stream subscribes and closes it a while after the
last one left, so a replica with no console open holds no connection
for it. Notifications are gathered for BATCH_S and then handed to every subscriber of
their tenant as one batch: the ids of the jobs changed, or None, "anything may have
changed" (many jobs, or the connection was lost and notifications with it). A
subscriber keeps at most one batch: what arrives before it reads is merged into it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import msgspec
import structlog
from litestar.response import ServerSentEventMessage

from scheduler_svc import store
from scheduler_svc.store import db
from scheduler_svc.store.db import DATABASE_ERRORS

log = structlog.get_logger("scheduler_svc.console.live")

CHANNEL = "scheduler_console"
# How long notifications gather before the streams hear of them: one page refresh for
# a burst of changes, and no stream told more than once in this time.
BATCH_S = 0.25
# A stream with nothing to say sends a comment this often, so that proxies and the
# browser keep an idle connection open and a vanished client is noticed.
KEEPALIVE_S = 15.0
# How long the browser waits before opening a stream again after it ended (a replica
# stopping: behind a load balancer the next one may be another replica).
RETRY_MS = 2_000
# How often the LISTEN connection checks that it is still connected.
PING_S = 15.0
# The LISTEN connection stays open this long after the last stream left: moving from
# one page to the next closes a stream and opens another.
IDLE_CLOSE_S = 60.0
# A batch naming more jobs than this says None instead: the pages refresh whatever
# they show, and a subscriber that does not read keeps a bounded set.
MAX_JOB_IDS = 200
# A new subscriber waits at most this long for the LISTEN connection, so that changes
# made once it has subscribed reach it; past that it gets None when the connection is up.
SUBSCRIBE_WAIT_S = 5.0

Batch = frozenset[int] | None


class Closed(Exception):
    """The hub has closed: the stream ends."""


class _Notice(msgspec.Struct, frozen=True):
    """A notification's payload, as console_notify() and RunStats.pulse write it."""

    t: str
    j: list[int] | None


_decode_notice = msgspec.json.Decoder(_Notice).decode


def _merged(pending: set[int] | None, jobs: Iterable[int] | None) -> set[int] | None:
    """Two batches as one, None when either is or when it names too many jobs."""
    if pending is None or jobs is None:
        return None
    pending.update(jobs)
    return pending if len(pending) <= MAX_JOB_IDS else None


class Subscription:
    """One stream's changes of its tenant: at most one batch waits, into which later
    ones are merged. Iterate it, or call get() to wait with a timeout."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self._jobs: set[int] | None = set()
        self._ready = asyncio.Event()  # a batch waits
        self._ended = False
        # Handed to its stream (subscribe() returned), and covered by the current
        # LISTEN connection since then: the hub says None to those it could not cover.
        self._handed = False
        self._synced = False

    def _offer(self, batch: Iterable[int] | None) -> None:
        if not self._ended:
            self._jobs = _merged(self._jobs, batch)
            self._ready.set()

    def _end(self) -> None:
        self._ended = True
        self._ready.set()

    async def get(self, timeout_s: float | None = None) -> Batch:
        """The next batch: the ids of the jobs changed, or None for "anything may have
        changed". TimeoutError when none came within `timeout_s`; Closed once the hub
        has closed."""
        if not self._ready.is_set():
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        if self._ended:
            raise Closed
        jobs, self._jobs = self._jobs, set()
        self._ready.clear()
        return None if jobs is None else frozenset(jobs)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Batch:
        try:
            return await self.get()
        except Closed:
            raise StopAsyncIteration from None


class LiveHub:
    """The replica's LISTEN connection on CHANNEL, opened while streams subscribe and
    reopened with backoff when lost, and the streams' subscriptions by tenant."""

    def __init__(
        self,
        database_url: str,
        *,
        worker_id: str | None = None,
        batch_s: float = BATCH_S,
        idle_close_s: float = IDLE_CLOSE_S,
    ) -> None:
        self._dsn, settings = db.connect_options(database_url)
        # The replica's name with a mark of its own: an operator (or a test) can tell
        # this session from the pool's.
        self.application_name = f"{db.application_name(worker_id)}/console"
        self._server_settings = {"application_name": self.application_name, **settings}
        self._batch_s = batch_s
        self._idle_close_s = idle_close_s
        self._subscribers: dict[str, set[Subscription]] = {}
        self._pending: dict[str, set[int] | None] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._closed = False
        # Batches handed to each tenant's streams so far (SharedRenders' freshness).
        self._generations: dict[str, int] = {}

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is open now."""
        return self._listening.is_set()

    def generation(self, tenant: str) -> int | None:
        """How many batches `tenant`'s streams have been handed: a page read after the
        latest one shows every change it named, so pages read since may be shared
        (views.SharedRenders). None while this replica is not listening for `tenant`
        (no stream of it here, or no connection): changes would go unseen, share none."""
        if not self._listening.is_set() or tenant not in self._subscribers:
            return None
        return self._generations.get(tenant, 0)

    @asynccontextmanager
    async def subscribe(self, tenant: str) -> AsyncIterator[Subscription]:
        """A subscription to `tenant`'s changes while inside. Entering opens the LISTEN
        connection if need be and waits for it (up to SUBSCRIBE_WAIT_S), so that the
        changes committed from then on reach it."""
        subscription = Subscription(tenant)
        if self._closed:
            subscription._end()
            yield subscription
            return
        self._subscribers.setdefault(tenant, set()).add(subscription)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="console-listener")
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SUBSCRIBE_WAIT_S):
                    await self._listening.wait()
            subscription._handed = True
            subscription._synced = self._listening.is_set()
            yield subscription
        finally:
            self._unsubscribe(subscription)

    def _unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.tenant, set())
        subscribers.discard(subscription)
        if not subscribers:
            self._subscribers.pop(subscription.tenant, None)
            self._pending.pop(subscription.tenant, None)
            self._generations.pop(subscription.tenant, None)
        if not self._subscribers and not self._closed and self._listener is not None:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(self._idle_close_s, self._close_idle)

    def _close_idle(self) -> None:
        self._idle_timer = None
        if not self._subscribers:
            self._stop_listener()

    def _stop_listener(self) -> asyncio.Task[None] | None:
        listener, self._listener = self._listener, None
        self._listening.clear()
        if listener is not None:
            listener.cancel()
        return listener

    async def _listen(self) -> None:
        """Keep the LISTEN connection open until cancelled."""
        retry_s = 0.1
        while True:
            conn: asyncpg.Connection[Any] | None = None
            try:
                conn = await asyncpg.connect(
                    self._dsn, server_settings=self._server_settings, timeout=10
                )
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                self._connected()
                retry_s = 0.1
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), PING_S)
                    if not lost.is_set():
                        async with asyncio.timeout(5):
                            await store.ping(conn)
                log.warning("console_listen_connection_lost")
                # Soon, but a connection that keeps being lost backs off too.
                wait_s, retry_s = retry_s, min(retry_s * 2, 5.0)
            except DATABASE_ERRORS as exc:
                log.warning("console_listen_database_error", error=str(exc), retry_in_s=retry_s)
                wait_s, retry_s = retry_s, min(retry_s * 2, 5.0)
            except Exception:
                # A bug here must not end live updates for good: logged, then tried again.
                log.exception("console_listen_failed", retry_in_s=retry_s)
                wait_s, retry_s = retry_s, min(retry_s * 2, 5.0)
            finally:
                self._disconnected()
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(wait_s)

    def _connected(self) -> None:
        if asyncio.current_task() is not self._listener:
            return
        # Streams that were told of changes before this connection may have missed
        # some while no connection listened.
        missed = {
            s.tenant
            for subscribers in self._subscribers.values()
            for s in subscribers
            if s._handed and not s._synced
        }
        for subscribers in self._subscribers.values():
            for s in subscribers:
                s._synced = True
        for tenant in missed:
            self._add(tenant, None)
        self._listening.set()

    def _disconnected(self) -> None:
        if asyncio.current_task() is not self._listener:
            return
        self._listening.clear()
        for subscribers in self._subscribers.values():
            for s in subscribers:
                s._synced = False

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            notice = _decode_notice(payload if isinstance(payload, str) else "")
        except msgspec.DecodeError:
            log.warning("console_notification_malformed", payload=str(payload)[:200])
            return
        if notice.t in self._subscribers:
            self._add(notice.t, notice.j)

    def _add(self, tenant: str, jobs: Iterable[int] | None) -> None:
        if tenant in self._pending:
            self._pending[tenant] = _merged(self._pending[tenant], jobs)
        else:
            self._pending[tenant] = _merged(set(), jobs)
        if self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(self._batch_s, self._flush)

    def _flush(self) -> None:
        self._flush_timer = None
        pending, self._pending = self._pending, {}
        for tenant, jobs in pending.items():
            self._generations[tenant] = self._generations.get(tenant, 0) + 1
            batch = None if jobs is None else frozenset(jobs)
            for subscription in self._subscribers.get(tenant, ()):
                subscription._offer(batch)

    def stop(self) -> None:
        """End every stream and stop listening, without waiting; safe to call again.
        For a server shutting down: its streams end, so its connections can drain."""
        self._closed = True
        for timer in (self._flush_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._flush_timer = self._idle_timer = None
        for subscribers in self._subscribers.values():
            for subscription in subscribers:
                subscription._end()
        self._stop_listener()

    async def close(self) -> None:
        """stop(), then wait until the LISTEN connection is closed."""
        listener = self._listener
        self.stop()
        if listener is not None:
            await asyncio.gather(listener, return_exceptions=True)


def _change(batch: Batch) -> ServerSentEventMessage:
    jobs = None if batch is None else sorted(batch)
    return ServerSentEventMessage(event="change", data=msgspec.json.encode({"jobs": jobs}))


async def stream(
    hub: LiveHub, tenant: str, *, keepalive_s: float = KEEPALIVE_S
) -> AsyncIterator[ServerSentEventMessage]:
    """The server-sent events of one console of `tenant`, for Litestar's
    ServerSentEvent: first a comment with the reconnection delay (sent once subscribed),
    then `event: change` with data `{"jobs": [ids] | null}` for each batch, and a
    comment after `keepalive_s` of silence. Ends when the hub closes."""
    async with hub.subscribe(tenant) as changes:
        yield ServerSentEventMessage(data=None, comment="live", retry=RETRY_MS)
        while True:
            try:
                batch = await changes.get(keepalive_s)
            except TimeoutError:
                yield ServerSentEventMessage(data=None, comment="keep-alive")
                continue
            except Closed:
                return
            yield _change(batch)
