"""Which pool serves a history read: the read replica (DATABASE_READ_URL) while it answers,
is a standby and keeps up, else the primary; and the write positions that keep what a
client just wrote on the primary until the replica has replayed it (read-your-writes).
docs/read-replicas.md tells the whole story.

A write position is the primary's WAL position (an LSN) once the write has committed:
the replica has the write when its replay position is at or past it. Two positions
decide a read: the one its client sends back (the read-after LSN), and the latest one
a write of its tenant got from this process (the tenant fence).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import asyncpg
import structlog

from scheduler_svc.store.db import (
    DATABASE_ERRORS,
    Pool,
    application_name,
    connect_options,
    create_pool,
)
from scheduler_svc.store.sql import QUERIES, Conn

log = structlog.get_logger("scheduler_svc.store.replica")

P = ParamSpec("P")
T = TypeVar("T")

ReplicaState = Literal["ok", "lagging", "down"]
Served = Literal["primary", "replica"]

CHECK_EVERY_S = 1.0  # how often the replica's position and the primary's are compared
CHECK_TIMEOUT_S = 2.0  # a check (connecting included) that takes longer: the replica is down
# A read on the replica (waiting for a connection included) that takes longer than this
# runs again on the primary. A replica that stops answering is down at the next check,
# and reads started after that go straight to the primary.
READ_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 10.0
# Tenants whose last write position this process remembers; the oldest are forgotten
# into one position every tenant's reads then respect (a bound on memory, not on safety).
FENCED_TENANTS = 10_000
# Errors of the replica's session (08 connection, 53 resources, 57 operator intervention:
# shutting down, starting up): it is down until a check finds it back. Others, such as a
# query cancelled by a recovery conflict, or a read that took too long (a busy pool,
# not a dead replica), only send that one read to the primary.
_DOWN_CLASSES = ("08", "53", "57")
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int:
    """An LSN as PostgreSQL writes it (`16/B374D848`) as a number; ValueError otherwise."""
    match = _LSN.fullmatch(text)
    if match is None:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(match[1], 16) << 32) | int(match[2], 16)


def format_lsn(lsn: int) -> str:
    """A number as PostgreSQL writes an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


async def wal_position(conn: Conn) -> int:
    """The primary's current WAL position."""
    text: str = await conn.fetchval(QUERIES["wal_position"])
    return parse_lsn(text)


@dataclass(frozen=True, slots=True)
class ReplicaPosition:
    """What a read replica says of itself."""

    in_recovery: bool
    replay_lsn: int | None
    replay_age_s: float | None


async def replica_position(conn: Conn) -> ReplicaPosition:
    """Whether the server is a standby, how far it has replayed, and how old that is."""
    record = await conn.fetchrow(QUERIES["replica_position"])
    assert record is not None
    replay = record["replay_lsn"]
    return ReplicaPosition(
        in_recovery=record["in_recovery"],
        replay_lsn=parse_lsn(replay) if replay is not None else None,
        replay_age_s=record["replay_age_s"],
    )


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """The replica as the last check found it: lag_s is None when it is not known."""

    state: ReplicaState
    lag_s: float | None


class ReadRouter:
    """Chooses the pool of each history read and keeps the replica's state current.

    Without a replica (`read_url` None) every read goes to the primary and the router
    does nothing else. With one, `start` checks it once and then about once a second in
    a task of its own, and `close` stops that task and closes its connections. Checks
    use a connection of their own, so that a replica pool busy with reads is not taken
    for a dead replica; the pool for reads is opened by the first check that succeeds.
    """

    def __init__(
        self,
        primary: Pool,
        read_url: str | None = None,
        *,
        max_lag_s: float = 5.0,
        max_size: int = 10,
        worker_id: str | None = None,
        check_every_s: float = CHECK_EVERY_S,
        on_read: Callable[[Served], None] | None = None,
        on_check: Callable[[ReplicaStatus], None] | None = None,
    ) -> None:
        self.primary = primary
        self._url = read_url
        self._max_size = max_size
        self._worker_id = worker_id
        self._replica: Pool | None = None
        self._probe: asyncpg.Connection[Any] | None = None
        self._primary_answers = True
        self._max_lag_s = max_lag_s
        self._check_every_s = check_every_s
        self._on_read = on_read
        self._on_check = on_check
        self._status = ReplicaStatus("down", None)  # until the first check says otherwise
        self._logged: ReplicaState | None = None
        self._replayed = 0  # the replica's replay position at the last check
        # The primary's positions over the last while, oldest first: [lsn, last seen at
        # (monotonic)]. The replica, once at or past one, is no staler than "last seen".
        self._positions: deque[list[Any]] = deque()
        self._window_s = max(60.0, 2 * max_lag_s + 10 * check_every_s)
        self._fences: OrderedDict[str, int] = OrderedDict()
        self._forgotten = 0  # the highest position forgotten from _fences
        self._task: asyncio.Task[None] | None = None

    @property
    def configured(self) -> bool:
        """Whether there is a read replica at all."""
        return self._url is not None

    @property
    def status(self) -> ReplicaStatus | None:
        """The replica's state and lag; None without a replica."""
        return self._status if self.configured else None

    async def start(self) -> None:
        """Check the replica once (bounded), then keep checking it in the background."""
        if self._url is None or self._task is not None:
            return
        await self.check()
        self._task = asyncio.create_task(self._checking(), name="read-replica-checks")

    async def close(self) -> None:
        """Stop checking and close the replica's pool."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._probe is not None:
            self._probe.terminate()
            self._probe = None
        if self._replica is not None:
            replica, self._replica = self._replica, None
            try:
                await asyncio.wait_for(replica.close(), CLOSE_TIMEOUT_S)
            except TimeoutError:  # a read still running on it
                replica.terminate()

    async def _checking(self) -> None:
        while True:
            await asyncio.sleep(self._check_every_s)
            try:
                await self.check()
            except Exception as exc:
                # A bug here must not leave a stale "ok" standing: down is the safe side.
                log.exception("read_replica_check_failed")
                self._set(ReplicaStatus("down", None), "read_replica_down", _describe(exc))

    async def check(self) -> ReplicaStatus:
        """Compare the replica's replay position with the primary's WAL position now."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                self._saw_primary_at(await wal_position(self.primary))
            self._primary_answers = True
        except DATABASE_ERRORS as exc:  # the lag is then judged by what was seen before
            if self._primary_answers:
                log.warning("primary_position_unavailable", error=_describe(exc))
            self._primary_answers = False
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                position = await replica_position(await self._probe_connection())
                if self._replica is None:
                    assert self._url is not None
                    self._replica = await create_pool(
                        self._url, max_size=self._max_size, worker_id=self._worker_id
                    )
        except DATABASE_ERRORS as exc:
            if self._probe is not None:
                self._probe.terminate()
                self._probe = None
            return self._set(ReplicaStatus("down", None), "read_replica_down", _describe(exc))
        if not position.in_recovery or position.replay_lsn is None:
            # A primary (a promoted standby, or the primary's own URL) has writes of
            # its own or misses the primary's: its reads cannot be trusted.
            return self._set(ReplicaStatus("down", None), "read_replica_not_a_standby", None)
        self._replayed = position.replay_lsn
        lag_s = self._lag_s(position)
        state: ReplicaState = "ok" if lag_s <= self._max_lag_s else "lagging"
        lag = round(lag_s, 3) if math.isfinite(lag_s) else None
        return self._set(ReplicaStatus(state, lag), f"read_replica_{state}", None)

    async def _probe_connection(self) -> asyncpg.Connection[Any]:
        if self._probe is None or self._probe.is_closed():
            assert self._url is not None
            dsn, server_settings = connect_options(self._url)
            self._probe = await asyncpg.connect(
                dsn,
                server_settings={"application_name": application_name(self._worker_id)}
                | server_settings,
            )
        return self._probe

    def _saw_primary_at(self, lsn: int) -> None:
        now = time.monotonic()
        if self._positions and self._positions[-1][0] == lsn:
            self._positions[-1][1] = now
        else:
            self._positions.append([lsn, now])
        while len(self._positions) > 1 and self._positions[0][1] < now - self._window_s:
            self._positions.popleft()

    def _lag_s(self, position: ReplicaPosition) -> float:
        """How stale the replica's data may be, in seconds: about 0 when it has replayed
        all the primary had written when this check asked it.

        Two upper bounds, the smaller taken. Since the primary was last seen at a
        position the replica has replayed: a check's resolution, right after an idle
        spell too. Since the last transaction it replayed committed: fine-grained under
        steady writes, but it grows on an idle primary, which the first bound covers.
        """
        replayed = position.replay_lsn
        assert replayed is not None
        seen = [at for lsn, at in self._positions if lsn <= replayed]
        bounds = [max(0.0, time.monotonic() - seen[-1])] if seen else []
        if position.replay_age_s is not None:
            bounds.append(max(0.0, position.replay_age_s))
        return min(bounds) if bounds else math.inf

    def _set(self, status: ReplicaStatus, event: str, error: str | None) -> ReplicaStatus:
        if status.state != self._logged:  # each change of state, and the first check
            level = log.info if status.state == "ok" else log.warning
            level(event, lag_s=status.lag_s, **({"error": error} if error else {}))
            self._logged = status.state
        self._status = status
        if self._on_check is not None:
            self._on_check(status)
        return status

    def _replica_for(self, tenant: str, after_lsn: int | None) -> Pool | None:
        """The replica's pool if it may serve this read, else None (the primary)."""
        if self._replica is None or self._status.state != "ok":
            return None
        needed = max(after_lsn or 0, self._fences.get(tenant, 0), self._forgotten)
        return self._replica if needed <= self._replayed else None

    async def read(
        self,
        tenant: str,
        after_lsn: int | None,
        query: Callable[Concatenate[Conn, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> tuple[T, Served]:
        """Run `query(conn, *args)` on the replica when it may serve `tenant` a read made
        after `after_lsn`, else on the primary; a replica that fails it hands it to the
        primary. The answer and which pool gave it."""
        replica = self._replica_for(tenant, after_lsn)
        if replica is not None:
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    answer = await query(replica, *args, **kwargs)
                return self._served(answer, "replica")
            except DATABASE_ERRORS as exc:
                self._read_failed(exc)
        answer = await query(self.primary, *args, **kwargs)
        return self._served(answer, "primary")

    def _served(self, answer: T, served: Served) -> tuple[T, Served]:
        if self._on_read is not None:
            self._on_read(served)
        return answer, served

    def _read_failed(self, exc: BaseException) -> None:
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if isinstance(exc, TimeoutError) or (
            isinstance(exc, asyncpg.PostgresError) and not sqlstate.startswith(_DOWN_CLASSES)
        ):
            log.warning("read_replica_query_failed", error=_describe(exc))
            return
        # Down at once, not at the next check: the reads in between go to the primary.
        self._set(ReplicaStatus("down", None), "read_replica_down", _describe(exc))

    async def wrote(self, tenant: str) -> int | None:
        """After a write of `tenant` committed: the primary's WAL position, which this
        process's reads for `tenant` now wait for. None without a replica."""
        if self._url is None:
            return None
        lsn = await wal_position(self.primary)
        if lsn > self._fences.get(tenant, 0):
            self._fences[tenant] = lsn
            self._fences.move_to_end(tenant)
        while len(self._fences) > FENCED_TENANTS:
            _, forgotten = self._fences.popitem(last=False)
            self._forgotten = max(self._forgotten, forgotten)
        return lsn


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
