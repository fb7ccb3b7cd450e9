"""Jobs as code: `scheduler-svc apply` of a file of N jobs, as a user runs it.

    python -m bench.apply [--jobs 1000] [--rounds 3]

One `scheduler-svc serve --role api` replica on a fresh database, authenticated by an
API key made with `scheduler-svc keys create`. Each round times, as wall-clock seconds
of the `scheduler-svc apply` process (its ~1.2 s of Python start-up included): creating
N jobs from a file (N dry-run PUTs, N PUTs), applying the same file again (a no-op, but
each job has a secret header from `${BENCH_TOKEN}`, which only the service can compare:
N dry-run PUTs), applying what `export` wrote of them (a no-op judged from the listing
alone: its secrets are "***"), and changing every job's schedule with `--prune`. Rounds
after the first delete the jobs first. The figure compared with the acceptance is the
create's: under 10 s for 1,000.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import Result, bench_database, replicas

SCHEDULER_SVC = [sys.executable, "-m", "scheduler_svc"]


def jobs_file(path: Path, count: int, schedule: str) -> None:
    """A file of `count` keyed jobs, all on `schedule`, with a webhook and a secret."""
    jobs = [
        {
            "key": f"bench/job-{i:05d}",
            "name": f"bench job {i}",
            "schedule": schedule,
            "timezone": "Europe/Paris",
            "attributes": {"i": i},
            "target": {
                "type": "http",
                "url": "https://example.com/hook",
                "headers": {"Authorization": "Bearer ${BENCH_TOKEN}"},
            },
        }
        for i in range(count)
    ]
    path.write_text(yaml.safe_dump({"jobs": jobs}, sort_keys=False))


def apply(env: dict[str, str], *args: str) -> tuple[float, str]:
    """Seconds `scheduler-svc apply <args>` took, and its plan line."""
    started = time.perf_counter()
    done = subprocess.run(
        [*SCHEDULER_SVC, "apply", *args], env=env, capture_output=True, text=True, timeout=120
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"apply exited {done.returncode}: {done.stderr.strip()}")
    plan = next(line for line in done.stdout.splitlines() if line.startswith("Plan: "))
    return seconds, plan


def export(env: dict[str, str], path: Path) -> None:
    """`scheduler-svc export > path`."""
    with path.open("w") as out:
        subprocess.run([*SCHEDULER_SVC, "export"], env=env, stdout=out, check=True, timeout=120)


def make_key(database_url: str) -> str:
    """A new API key of tenant `bench`, made as an operator does."""
    env = {**os.environ, "DATABASE_URL": database_url, "SCHEDULER_LOG_FORMAT": "json"}
    done = subprocess.run(
        [*SCHEDULER_SVC, "keys", "create", "--tenant", "bench", "--scopes", "jobs:read,jobs:write"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]  # printed once, on the last line


async def measure(count: int, rounds: int) -> dict[str, Any]:
    """Seconds of each step of each round."""
    steps: dict[str, list[float]] = {
        "create": [],
        "no-op re-apply (a secret in each job)": [],
        "no-op apply of its export": [],
        "update all, --prune": [],
    }
    plans: dict[str, str] = {}
    async with bench_database() as url:
        key = await asyncio.to_thread(make_key, url)
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            first, second, empty = folder / "a.yaml", folder / "b.yaml", folder / "empty.yaml"
            exported = folder / "exported.yaml"
            jobs_file(first, count, "0 3 * * *")
            jobs_file(second, count, "30 4 * * *")
            empty.write_text("jobs: []\n")
            # A limit far above the bench's requests: it measures apply, not the limiter.
            limit = {"SCHEDULER_RATE_LIMIT": "1000000/minute"}
            with replicas(url, 1, folder, role="api", **limit) as started:
                env = {
                    **os.environ,
                    "SCHEDULER_URL": f"http://127.0.0.1:{started[0].port}",  # type: ignore[attr-defined]
                    "SCHEDULER_API_KEY": key,
                    "BENCH_TOKEN": "s3cret",
                }
                for _ in range(rounds):
                    await asyncio.to_thread(apply, env, "-f", str(empty), "--prune")
                    for step, path, extra in (
                        ("create", first, ()),
                        ("no-op re-apply (a secret in each job)", first, ()),
                        ("no-op apply of its export", exported, ()),
                        ("update all, --prune", second, ("--prune",)),
                    ):
                        if path is exported:
                            await asyncio.to_thread(export, env, exported)
                        seconds, plan = await asyncio.to_thread(apply, env, "-f", str(path), *extra)
                        steps[step].append(seconds)
                        plans[step] = plan
    return {"jobs": count, "seconds": steps, "plans": plans}


def result(f: dict[str, Any]) -> Result:
    rows = []
    for step, seconds in f["seconds"].items():
        median = statistics.median(seconds)
        rounds = " / ".join(f"{s:.2f}" for s in seconds)
        rows.append([step, f"{median:.2f}", rounds, f"{f['jobs'] / median:,.0f}", f["plans"][step]])
    return Result(
        f"scheduler-svc apply of {f['jobs']:,} jobs (1 API replica), seconds",
        ["step", "median s", "rounds", "jobs/s", "plan"],
        rows,
        f,
    )


async def run(quick: bool) -> list[Result]:
    """1,000 jobs, 3 rounds (1 with quick)."""
    return [result(await measure(1000, 1 if quick else 3))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(result(await measure(args.jobs, args.rounds)).table())


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
