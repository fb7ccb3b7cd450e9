"""Helpers the test modules share (plain functions, not collected as tests).

Serving an app on a loopback port, running `scheduler-svc` commands as processes and
stopping them, waiting, and the shapes of HTTP answers. Fixtures are in conftest.py;
replica machinery in replicas.py; rows in factories.py; keys and tokens in
principals.py; the webhook receiver in webhook_receiver.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import uvicorn

from scheduler_svc.app import create_app
from scheduler_svc.config import Settings
from scheduler_svc.store import db

LOOPBACK = "127.0.0.1"

# --- ports and servers in this event loop ---------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def never_accepting() -> Iterator[int]:
    """A loopback port whose listen queue is full: Linux drops the SYN of any further
    connection, so connecting to it takes as long as the caller lets it."""
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        with socket.create_connection((LOOPBACK, port), timeout=5):  # fills the queue
            yield port


class _Server(uvicorn.Server):
    """uvicorn's server, which stops as soon as `stop` is called: uvicorn itself looks
    for its exit flag every 0.1 s, which every app and receiver a test starts paid."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self.should_exit = True
        self._stopping.set()

    async def main_loop(self) -> None:
        # uvicorn's loop (a tick every 0.1 s keeps the Date header current), cut short.
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.1)


@asynccontextmanager
async def serving(app: Any, what: str, **options: Any) -> AsyncIterator[int]:
    """Serve an ASGI app with uvicorn in this event loop on a free loopback port; yield
    the port. Stops the server on the way out."""
    config = uvicorn.Config(
        app, host=LOOPBACK, port=0, log_config=None, access_log=False, **options
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not server.started:
        if task.done() or loop.time() > deadline:
            raise RuntimeError(f"{what} did not start")
        await asyncio.sleep(0.005)
    port: int = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.stop()
        await task


@asynccontextmanager
async def running_app(
    settings: Settings, pool: asyncpg.Pool[Any], **app_options: Any
) -> AsyncIterator[str]:
    """Serve the app over real HTTP on a free loopback port; yield its base URL.

    With settings.role "all" or "worker" the app runs a worker too (the settings
    fixture says "api": HTTP only)."""
    app = create_app(settings, pool=pool, **app_options)
    async with serving(app, "the test server", lifespan="on") as port:
        yield f"http://{LOOPBACK}:{port}"


# --- databases ------------------------------------------------------------------------


@contextmanager
def embedded_data_dir() -> Iterator[Path]:
    """A directory for an embedded server's data, removed afterwards.

    Not under pytest's tmp_path: as root, the server runs as its own user, and every
    pytest session that starts makes pytest's temporary root private again.
    """
    path = Path(tempfile.mkdtemp(prefix="scheduler-test-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@asynccontextmanager
async def scratch_database(server_url: str, prefix: str = "scheduler_test") -> AsyncIterator[str]:
    """A new, empty database on the server of `server_url`, dropped afterwards (with any
    session still on it); yields its URL."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    admin_dsn, settings = db.connect_options(server_url)
    admin = await asyncpg.connect(admin_dsn, server_settings=settings)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(server_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# --- `scheduler-svc` as a process -----------------------------------------------------


def cli_env(database_url: str | None, **env: str) -> dict[str, str]:
    """This process's environment for a `scheduler-svc` command, with JSON logs and
    `database_url` as DATABASE_URL (None: no DATABASE_URL, so the embedded database)."""
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url is not None:
        environ["DATABASE_URL"] = database_url
    return {**environ, "SCHEDULER_LOG_FORMAT": "json", **env}


# `scheduler-svc` as this interpreter runs it (the console script may not be on PATH).
SCHEDULER_SVC = [sys.executable, "-m", "scheduler_svc"]


def run_cli(
    cwd: Path, *args: str, env: Mapping[str, str], timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `scheduler-svc <args>` to its end; its exit code and output."""
    return subprocess.run(
        [*SCHEDULER_SVC, *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def spawn_cli(
    cwd: Path, *args: str, env: Mapping[str, str], log: IO[str] | None = None
) -> subprocess.Popen[str]:
    """Start `scheduler-svc <args>`; its output goes to `log`, or to pipes without one."""
    return subprocess.Popen(
        [*SCHEDULER_SVC, *args],
        env=dict(env),
        cwd=cwd,
        stdout=log if log is not None else subprocess.PIPE,
        stderr=subprocess.STDOUT if log is not None else subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str], timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    """SIGTERM a process we started, by its pid; SIGKILL it if it has not exited within
    `timeout_s`. Its exit code, and its output if it went to pipes."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out or "", err or "")


# --- waiting ---------------------------------------------------------------------------


async def poll_json(http: httpx.AsyncClient, url: str, until: Any, timeout_s: float = 15) -> Any:
    """GET `url` until `until(body)` holds for its JSON body; that body."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        body = (await http.get(url)).json()
        if until(body):
            return body
        assert asyncio.get_running_loop().time() < deadline, f"gave up waiting on {url}: {body}"
        await asyncio.sleep(0.05)


# --- the API's answers -----------------------------------------------------------------


async def create_job(http: httpx.AsyncClient, url: str = "/jobs", **fields: Any) -> dict[str, Any]:
    """POST a job to `url` (named "job", on "@every 1h" unless `fields` say otherwise);
    the created job."""
    response = await http.post(url, json={"name": "job", "schedule": "@every 1h", **fields})
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """`response` is a problem document of `status`; the document."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["title"] and problem["type"] and problem["detail"]
    return problem


def assert_unauthorized(response: httpx.Response) -> dict[str, Any]:
    """`response` is a 401 problem that asks for a bearer credential; the document."""
    problem = assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    return problem


# --- name resolution --------------------------------------------------------------------


class FakeResolver:
    """Answers from a table: per host, one answer per call, the last one repeating."""

    def __init__(self, answers: Mapping[str, Sequence[list[str] | OSError]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        seen = self.calls.count(host)
        self.calls.append(host)
        options = self.answers.get(host)
        if not options:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answer = options[min(seen, len(options) - 1)]
        if isinstance(answer, OSError):
            raise answer
        return answer
