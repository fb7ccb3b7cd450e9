"""A load-balanced cluster on this machine: nginx in front of API replicas, plus workers.

    python -m bench.cluster [--api 2] [--workers 2] [--seconds 60] [--log-dir DIR]

Starts, as local processes on 127.0.0.1: a throwaway database on
SCHEDULER_BENCH_DATABASE_URL (dropped at the end), `--api` replicas of
`scheduler-svc serve --role api`, `--workers` replicas of `--role worker`, and Debian's
nginx with a generated configuration: an `upstream` over the API replicas with passive
health checks (`max_fails`, `fail_timeout`), `proxy_next_upstream` on errors, timeouts
and 502/503/504, and keepalive connections to the replicas. It prints the nginx URL,
runs for `--seconds` (or until Ctrl-C), and stops every process it started, by pid.

Tests use `cluster()` as an async context manager on a database of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import bench_database, free_port

LOOPBACK = "127.0.0.1"
READY_S = 60.0  # every process answers within this
STOP_S = 20.0  # after SIGTERM a process gets this long before SIGKILL
# Behind the proxy every request comes from 127.0.0.1, which in open mode is one
# rate-limit principal; a bench must not measure the limiter.
DEFAULT_ENV = {"SCHEDULER_RATE_LIMIT": "1000000/minute", "SCHEDULER_SHUTDOWN_GRACE_S": "5"}


def nginx_binary() -> str | None:
    """Path of the nginx executable, or None (Debian puts it in /usr/sbin)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


@dataclass
class Process:
    """One process the cluster started."""

    name: str  # also the replica's SCHEDULER_WORKER_ID
    role: str  # api | worker | nginx
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL this process (only it, by pid) if it still runs."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Cluster:
    """What `cluster()` started; `url` is nginx's."""

    url: str
    directory: Path
    apis: list[Process]
    workers: list[Process]
    nginx: Process
    access_log: Path
    error_log: Path
    children: list[Process] = field(default_factory=list)  # nginx's own workers, for cleanup

    @property
    def processes(self) -> list[Process]:
        return [self.nginx, *self.apis, *self.workers]


def nginx_config(directory: Path, port: int, upstreams: Sequence[int]) -> str:
    """nginx.conf for a proxy on 127.0.0.1:`port` over the API replicas on `upstreams`.

    The proxying is deploy/nginx.conf's (passive health checks, retries, keepalive, the
    console's event stream unbuffered).
    Everything nginx writes (pid, logs, temporary files) goes under `directory`. Request
    bodies and upstream responses are kept in memory (the API takes at most 64 KiB), so
    nginx's workers never write a temporary file, whichever user they run as.
    """
    servers = "\n".join(
        f"        server {LOOPBACK}:{p} max_fails=3 fail_timeout=10s;" for p in upstreams
    )
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
daemon off;
master_process on;
worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "nginx-error.log"} warn;

events {{
    worker_connections 1024;
}}

http {{
    # The client's X-Request-Id if it sent one, else nginx's own: the replica logs and
    # echoes the same id, so a line here finds its line there.
    map $http_x_request_id $req_id {{
        default $http_x_request_id;
        "" $request_id;
    }}
    log_format cluster escape=json '{{"time":"$time_iso8601","request_id":"$req_id",'
        '"method":"$request_method","uri":"$request_uri","status":$status,'
        '"upstream":"$upstream_addr","upstream_status":"$upstream_status",'
        '"request_time":$request_time}}';
    access_log {directory / "nginx-access.log"} cluster;
{temp}
    client_body_buffer_size 128k;
    client_max_body_size 1m;
    proxy_max_temp_file_size 0;

    upstream scheduler_api {{
{servers}
        keepalive 32;
    }}

    server {{
        listen {LOOPBACK}:{port};
        # The console's live stream, as deploy/nginx.conf passes it: unbuffered, uncached,
        # held open while the browser listens.
        location = /ui/events {{
            proxy_pass http://scheduler_api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Request-Id $req_id;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;
            proxy_cache off;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries {len(upstreams)};
            proxy_connect_timeout 2s;
            proxy_read_timeout 5m;
        }}
        location / {{
            proxy_pass http://scheduler_api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Request-Id $req_id;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # A POST or PATCH already sent to a replica is not sent again (nginx's
            # default): its replica may have committed it.
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries {len(upstreams)};
            proxy_next_upstream_timeout 10s;
            proxy_connect_timeout 2s;
        }}
    }}
}}
"""


def _environ(database_url: str, name: str, env: Mapping[str, str]) -> dict[str, str]:
    """The replica's environment: ours without SCHEDULER_* and DATABASE_URL, then its own."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k != "DATABASE_URL" and not k.startswith("SCHEDULER_")
    }
    return {
        **inherited,
        **DEFAULT_ENV,
        "DATABASE_URL": database_url,
        "SCHEDULER_WORKER_ID": name,
        "SCHEDULER_LOG_FORMAT": "json",
        **env,
    }


def _spawn_replica(
    directory: Path, database_url: str, name: str, role: str, env: Mapping[str, str]
) -> Process:
    port = free_port()
    log_path = directory / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "scheduler_svc", "serve", "--role", role, "--port", str(port)],
            env=_environ(database_url, name, env),
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Process(name, role, port, process, log_path)


def _spawn_nginx(binary: str, directory: Path, upstreams: Sequence[int]) -> Process:
    port = free_port()
    config = directory / "nginx.conf"
    config.write_text(nginx_config(directory, port, upstreams))
    log_path = directory / "nginx.log"  # what nginx says before its error_log is open
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [binary, "-p", str(directory), "-c", str(config), "-e", str(log_path)],
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Process("nginx", "nginx", port, process, log_path)


def _children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (nginx's worker processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # The command name is in parentheses and may hold spaces: split after it.
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


async def _ready(process: Process, path: str, deadline: float) -> None:
    """Until `path` answers 200 on `process`; fails at once if the process exits."""
    async with httpx.AsyncClient(timeout=1) as http:
        while True:
            if not process.alive():
                raise RuntimeError(
                    f"{process.name} exited with {process.process.returncode}:\n"
                    + process.log_tail()
                )
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{process.url}{path}")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{process.name} was not ready in time:\n{process.log_tail()}")
            await asyncio.sleep(0.05)


def _exited(process: Process, timeout_s: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.process.wait(timeout_s)


async def _stop(processes: Sequence[Process], nginx_children: Sequence[int]) -> None:
    """SIGTERM each process that still runs, wait up to STOP_S, then SIGKILL; by pid."""
    try:
        for p in processes:
            if p.alive():
                p.process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(asyncio.to_thread(_exited, p, STOP_S) for p in processes))
    finally:  # also when cancelled (Ctrl-C) while waiting
        for p in processes:
            if p.alive():
                if p.role == "nginx":  # its workers would outlive a killed master
                    for pid in nginx_children:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                p.kill()
            p.process.wait()


@contextlib.asynccontextmanager
async def cluster(
    database_url: str,
    *,
    api: int = 2,
    workers: int = 2,
    directory: Path | None = None,
    env: Mapping[str, str] | None = None,
    ready_s: float = READY_S,
) -> AsyncIterator[Cluster]:
    """Start nginx over `api` API replicas, and `workers` workers, all on `database_url`;
    yield once every replica answers /readyz directly and nginx answers; stop them all.

    Logs (one file per process, nginx's access and error logs) go to `directory`, a new
    temporary directory if None (removed afterwards). `env` adds SCHEDULER_* settings.
    """
    if api < 1 or workers < 0:
        raise ValueError("a cluster needs at least one API replica")
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    own_dir = directory is None
    base = Path(tempfile.mkdtemp(prefix="scheduler-cluster-")) if own_dir else directory
    assert base is not None
    started: list[Process] = []
    nginx_children: list[int] = []
    try:
        apis = [
            _spawn_replica(base, database_url, f"api-{i + 1}", "api", env or {}) for i in range(api)
        ]
        started += apis
        worker_list = [
            _spawn_replica(base, database_url, f"worker-{i + 1}", "worker", env or {})
            for i in range(workers)
        ]
        started += worker_list
        deadline = time.monotonic() + ready_s
        await asyncio.gather(*(_ready(p, "/readyz", deadline) for p in started))
        nginx = _spawn_nginx(binary, base, [p.port for p in apis])
        started.insert(0, nginx)
        await _ready(nginx, "/readyz", deadline)
        nginx_children += _children(nginx.pid)
        yield Cluster(
            url=nginx.url,
            directory=base,
            apis=apis,
            workers=worker_list,
            nginx=nginx,
            access_log=base / "nginx-access.log",
            error_log=base / "nginx-error.log",
        )
    finally:
        await _stop(started, nginx_children)
        if own_dir:
            shutil.rmtree(base, ignore_errors=True)


async def _run(api: int, workers: int, seconds: float, log_dir: Path) -> int:
    async with (
        bench_database() as url,
        cluster(url, api=api, workers=workers, directory=log_dir) as c,
    ):
        print(c.url, flush=True)
        for p in c.processes:
            print(f"  {p.name:<9} pid {p.pid:<7} {p.url}", flush=True)
        print(f"  logs in {log_dir}; stopping in {seconds:g} s (Ctrl-C stops now)", flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            dead = [p for p in c.processes if not p.alive()]
            if dead:
                for p in dead:
                    print(f"{p.name} exited with {p.process.returncode}:\n{p.log_tail()}")
                return 1
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--api", type=int, default=2, help="API replicas behind nginx")
    parser.add_argument("--workers", type=int, default=2, help="worker replicas")
    parser.add_argument("--seconds", type=float, default=60, help="stop after this long")
    parser.add_argument("--log-dir", type=Path, help="keep the logs here (default: a new temp dir)")
    args = parser.parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="scheduler-cluster-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    async def run() -> int:
        # SIGINT (Ctrl-C) and SIGTERM cancel the main task, which stops what it started;
        # set explicitly, as a shell starts a background job with SIGINT ignored.
        task = asyncio.current_task()
        assert task is not None
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
        return await _run(args.api, args.workers, args.seconds, log_dir)

    try:
        return asyncio.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    finally:
        print(f"stopped; logs kept in {log_dir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
