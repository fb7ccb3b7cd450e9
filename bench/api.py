"""HTTP API throughput: wrk against real `scheduler-svc serve --role api` processes.

    python -m bench.api [--quick] [--processes 1 2] [--seconds 15] [--connections 50]

A fresh database gets 10,000 jobs of one tenant (with three finished runs each, so
`last_run_at` has history to read) and an API key for that tenant, created with
`scheduler-svc keys create` as an operator would; every request sends it. Then, for
1 and for 2 server processes, wrk (`-t2 -c50 --latency`) drives for a fixed time:

- `GET /jobs/{id}`, a random one of the 10,000 per request;
- `GET /jobs?limit=50`, the first page;
- `POST /jobs`, the same small body every time (names need not be unique).

Two processes are two replicas on two ports; wrk's two threads each keep 25
connections to one of them (a Lua `setup` picks each thread's address), so the
figures are what a load balancer in front of both would see, summed by wrk itself.
With one process both threads go to it. The rate limit is raised for the run
(SCHEDULER_RATE_LIMIT=1000000/second): the limiter still counts every request, but
the default 6000/minute would answer almost all of them with 429. Responses that are
not 2xx are counted and reported; a run with any is flagged.

wrk needs CPU too: on a 2-core machine it shares the cores with the servers and
PostgreSQL, so the figures are a floor for the service, not a ceiling. The servers' own
CPU time per request (user and system, from /proc) is the steadier figure: it moves
little with what else the machine does in that minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import Result, bench_database, cpu_s, replicas

JOBS = 10_000
RUNS_PER_JOB = 3
TENANT = "bench"
CONNECTIONS = 50
THREADS = 2

MAKE_JOBS = """
INSERT INTO jobs (tenant, name, attributes, schedule, status, next_run_at)
SELECT $2, 'job-' || i, jsonb_build_object('customer', i, 'region', 'eu-west-1'),
       '*/5 * * * *', 'active', now() + interval '1 day'
FROM generate_series(1, $1) AS i
"""
MAKE_HISTORY = """
INSERT INTO job_runs (job_id, tenant, scheduled_for, status, attempt, started_at,
                      finished_at, duration_ms, worker, created_at)
SELECT j.id, j.tenant, t, 'succeeded', 1, t, t + interval '12 milliseconds', 12, 'bench', t
FROM jobs j,
     generate_series(now() - interval '15 minutes', now() - interval '5 minutes',
                     interval '5 minutes') AS t
"""

POST_BODY = json.dumps(
    {
        "name": "bench job",
        "attributes": {"customer": 42, "region": "eu-west-1"},
        "schedule": "*/5 * * * *",
        "timezone": "Europe/Paris",
    }
)

# The Lua script: per-thread target address, request shape, and a JSON summary on stdout.
LUA = """
local addrs = {%(addrs)s}
local threads = {}
local counter = 0
function setup(thread)
  counter = counter + 1
  local host_port = addrs[((counter - 1) %% #addrs) + 1]
  local host, port = host_port:match("([^:]+):(%%d+)")
  thread.addr = wrk.lookup(host, port)[1]
  thread:set("id", counter)
  table.insert(threads, thread)
end
local mode = "%(mode)s"
local jobs = %(jobs)d
function init(args)
  math.randomseed(id * 7919)
  wrk.headers["Authorization"] = "Bearer %(key)s"
  if mode == "post" then
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.body = [==[%(body)s]==]
  end
end
function request()
  if mode == "get" then
    return wrk.format(nil, "/jobs/" .. math.random(1, jobs))
  elseif mode == "list" then
    return wrk.format(nil, "/jobs?limit=50")
  end
  return wrk.format(nil, "/jobs")
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, '
    .. '"max_us": %%d, "non2xx": %%d, "socket_errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""

ENDPOINTS = {
    "get": "GET /jobs/{id}",
    "list": "GET /jobs?limit=50",
    "post": "POST /jobs",
}


async def seed(url: str) -> None:
    """10,000 jobs with three finished runs each, analyzed."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(MAKE_JOBS, JOBS, TENANT)
        await conn.execute(MAKE_HISTORY)
        await conn.execute("VACUUM ANALYZE jobs, job_runs")
    finally:
        await conn.close()


def create_key(url: str) -> str:
    """A jobs:read,jobs:write key for the bench tenant, made by the CLI as an operator would."""
    out = subprocess.run(
        [sys.executable, "-m", "scheduler_svc", "keys", "create", "--tenant", TENANT,
         "--scopes", "jobs:read,jobs:write"],
        env={**os.environ, "DATABASE_URL": url, "SCHEDULER_LOG_FORMAT": "json"},
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


def wrk(
    addrs: list[str], mode: str, key: str, seconds: float, connections: int, workdir: Path
) -> dict[str, float]:
    """One wrk run; its JSON summary with req/s and latencies in ms."""
    script = workdir / f"{mode}.lua"
    script.write_text(
        LUA
        % {
            "addrs": ", ".join(f'"{a}"' for a in addrs),
            "mode": mode,
            "jobs": JOBS,
            "key": key,
            "body": POST_BODY,
        }
    )
    command = [
        "wrk", f"-t{THREADS}", f"-c{connections}", f"-d{seconds:g}s", "--latency",
        "--timeout", "5s", "-s", str(script), f"http://{addrs[0]}",
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    raw = json.loads(line.removeprefix("WRKJSON "))
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "requests": raw["requests"],
        "non2xx": raw["non2xx"],
        "socket_errors": raw["socket_errors"],
    }


def server_env() -> dict[str, str]:
    """Settings of the measured processes: production's, but a limit wrk stays under."""
    return {"SCHEDULER_RATE_LIMIT": "1000000/second", "SCHEDULER_LOG_LEVEL": "info"}


async def measure(processes: list[int], seconds: float, connections: int) -> list[dict[str, Any]]:
    """wrk on each endpoint for each process count; one dict of figures per run."""
    if shutil.which("wrk") is None:
        raise SystemExit("bench.api needs wrk (Debian: apt-get install wrk)")
    results: list[dict[str, Any]] = []
    async with bench_database() as url:
        await seed(url)
        key = create_key(url)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for count in processes:
                with replicas(url, count, work, role="api", **server_env()) as procs:
                    addrs = [f"127.0.0.1:{p.port}" for p in procs]  # type: ignore[attr-defined]
                    for mode in ENDPOINTS:
                        # A short warm-up: connections, prepared statements, caches.
                        wrk(addrs, mode, key, 2, connections, work)
                        cpu_before = sum(cpu_s(p.pid) for p in procs)
                        figures = wrk(addrs, mode, key, seconds, connections, work)
                        cpu = sum(cpu_s(p.pid) for p in procs) - cpu_before
                        figures["server_cpu_us"] = cpu / max(1, figures["requests"]) * 1e6
                        results.append({"endpoint": ENDPOINTS[mode], "processes": count, **figures})
    return results


async def run(quick: bool) -> list[Result]:
    """The API figures as one table."""
    seconds = 5 if quick else 15
    results = await measure([1, 2], seconds, CONNECTIONS)
    return [report(results, seconds, CONNECTIONS)]


def report(results: list[dict[str, Any]], seconds: float, connections: int) -> Result:
    rows = [
        [
            r["endpoint"],
            r["processes"],
            f"{r['rps']:.0f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['server_cpu_us']:.0f}",
            r["non2xx"] + r["socket_errors"] or "",
        ]
        for r in results
    ]
    return Result(
        title=f"HTTP API: wrk -t{THREADS} -c{connections} -d{seconds:g}s, "
        f"{JOBS} jobs, authenticated",
        header=["request", "processes", "req/s", "p50 ms", "p99 ms", "server CPU µs", "errors"],
        rows=rows,
        figures={
            "jobs": JOBS,
            "seconds": seconds,
            "connections": connections,
            "threads": THREADS,
            "results": results,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 s per run instead of 15 s")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, help="per run (default 15, --quick 5)")
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    args = parser.parse_args()
    seconds = args.seconds or (5 if args.quick else 15)
    results = asyncio.run(measure(args.processes, seconds, args.connections))
    print(report(results, seconds, args.connections).table())


if __name__ == "__main__":
    main()
