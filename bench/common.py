"""What the benchmarks share: a throwaway database and replicas run as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx


@dataclass(slots=True)
class Result:
    """One scenario's table, and its raw figures for the JSON file."""

    title: str
    header: list[str]
    rows: list[list[object]]
    # JSON-able: what the rows show, unrounded, plus the parameters that produced them.
    figures: dict[str, object] = field(default_factory=dict)

    def table(self) -> str:
        """The plain-text table."""
        return table(self.title, self.header, self.rows)


SERVER_URL = os.environ.get(
    "SCHEDULER_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@asynccontextmanager
async def bench_database(*, with_schema: bool = True) -> AsyncIterator[str]:
    """A fresh database on SERVER_URL, with the schema unless not `with_schema`;
    dropped afterwards."""
    name = f"scheduler_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(SERVER_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(SERVER_URL)._replace(path=f"/{name}"))
    try:
        if with_schema:
            conn = await asyncpg.connect(url)
            await apply_schema(conn)
            await conn.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def apply_schema(conn: asyncpg.Connection[Any]) -> None:
    """The schema of the scheduler_svc imported: by its migrations, or by applying
    schema.sql as releases before versioned migrations did (bench/scale.py measures
    those too, with PYTHONPATH pointing at a checkout of one)."""
    if importlib.util.find_spec("scheduler_svc.store.migrate") is not None:
        await importlib.import_module("scheduler_svc.store.migrate").migrate(conn)
    else:
        await importlib.import_module("scheduler_svc.store.db").apply_schema(conn)


# The application_name of the stand-in's session, so that a bench can tell its CPU apart.
VACUUM_SESSION = "bench-autovacuum-stand-in"


@asynccontextmanager
async def autovacuum_stand_in(
    url: str, every_s: float = 5.0, first_s: float | None = None
) -> AsyncIterator[bool]:
    """While inside, if the server runs with autovacuum off (as this machine's CI
    PostgreSQL does: /etc/postgresql/15/main/conf.d/90-ci.conf), VACUUM (ANALYZE) the
    queue tables every `every_s` seconds, as autovacuum would keep them. Without it every
    tick leaves a dead row of its job and dead entries in the partial indexes of
    job_runs, and a steady-state figure measures that bloat, not the scheduler. Yields
    whether it stands in (the tables then say so). The first pass comes after `first_s`
    (default `every_s`): autovacuum's first look at a new database may come a naptime,
    a minute, after its tables filled."""
    conn = await asyncpg.connect(url, server_settings={"application_name": VACUUM_SESSION})
    off = await conn.fetchval("SELECT current_setting('autovacuum') = 'off'")
    stop = asyncio.Event()

    async def vacuum() -> None:
        wait_s = every_s if first_s is None else first_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)
            wait_s = every_s
            if not stop.is_set():
                await conn.execute("VACUUM (ANALYZE) jobs, job_runs")

    task = asyncio.create_task(vacuum()) if off else None
    try:
        yield bool(off)
    finally:
        stop.set()
        if task is not None:
            await task
        await conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def replicas(
    database_url: str, count: int, log_dir: Path, role: str = "worker", **env: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start `count` `scheduler-svc serve` processes; stop them all by pid on exit."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(count):
            port = free_port()
            log = (log_dir / f"replica-{i}.log").open("wb")
            environ = {
                **os.environ,
                "DATABASE_URL": database_url,
                "SCHEDULER_WORKER_ID": f"replica-{i}",
                "SCHEDULER_LOG_FORMAT": "json",
                "SCHEDULER_SHUTDOWN_GRACE_S": "5",
                **env,
            }
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "scheduler_svc",
                    "serve",
                    "--role",
                    role,
                    "--port",
                    str(port),
                ],
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            process.port = port  # type: ignore[attr-defined]
            processes.append(process)
        for process in processes:
            wait_ready(f"http://127.0.0.1:{process.port}", process)  # type: ignore[attr-defined]
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(url: str, process: subprocess.Popen[Any], timeout_s: float = 60) -> None:
    """Until `url`/readyz answers 200; fails at once if the process exits (the tests use
    it too)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"replica exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0 to 100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def table(title: str, header: list[str], rows: list[list[object]]) -> str:
    """A plain-text table."""
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells[1:]]
    return "\n".join(lines)


def spread(values: list[float]) -> dict[str, float]:
    """count, p50, p99 and max of some latencies."""
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values, default=float("nan")),
    }


def ms(value: object) -> str:
    """A latency in milliseconds for a table cell."""
    return f"{value:.1f}" if isinstance(value, int | float) else str(value)


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB, from /proc/<pid>/status."""
    figures: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            figures[key] = int(value.split()[0])
    return figures
