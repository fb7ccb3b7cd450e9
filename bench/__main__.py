"""Every benchmark in one run: a table per scenario, and one JSON file of it all.

    python -m bench [scenario ...] [--quick] [--out PATH]

Scenarios, run in this order (default: all): pipeline, firelag, peers, api (when
bench/api.py exists), scale, memory, apply, console. Each is a module of this package with
`async def run(quick: bool) -> list[Result]`. The JSON goes to
bench/results/<UTC timestamp>.json unless --out says otherwise, and is written again
after each scenario, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import SERVER_URL, Result

SCENARIOS = ["pipeline", "firelag", "peers", "api", "scale", "memory", "apply", "console"]
RESULTS = Path(__file__).parent / "results"

Runner = Callable[[bool], Awaitable[list[Result]]]


def available() -> list[str]:
    """The scenarios whose module exists (api comes from another hand, maybe not yet)."""
    return [name for name in SCENARIOS if importlib.util.find_spec(f"bench.{name}") is not None]


def runner(name: str) -> Runner:
    module = importlib.import_module(f"bench.{name}")
    run: Runner = module.run
    return run


def _commit() -> str | None:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
        check=False,
    ).stdout.strip()
    return out or None


async def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    conn = await asyncpg.connect(SERVER_URL)
    try:
        server = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "postgresql": server,
        "commit": _commit(),
    }


def _figure(document: dict[str, Any], scenario: str, index: int) -> dict[str, Any] | None:
    results = document["scenarios"].get(scenario)
    if not isinstance(results, list) or len(results) <= index:
        return None
    figures: dict[str, Any] = results[index]["figures"]
    return figures


def acceptance(document: dict[str, Any]) -> Result | None:
    """Ours beside the peers, and the issue's acceptance figures, where measured."""
    rows: list[list[object]] = []
    ratios: dict[str, float] = {}
    pipeline, peers = _figure(document, "pipeline", 0), _figure(document, "peers", 0)
    if pipeline and "replicas_1" in pipeline:
        ours = pipeline["replicas_1"]["rate"]
        if peers and peers.get("pgqueuer_drain_batch_100"):
            ratio = ours / peers["pgqueuer_drain_batch_100"]["rate"]
            ratios["pipeline_1_replica_over_pgqueuer_batch_100"] = ratio
            rows.append(["pipeline 1 replica ÷ pgqueuer drain batch 100", f"{ratio:.2f}", "≥ 1"])
        if peers and peers.get("raw_ceiling"):
            ratio = ours / peers["raw_ceiling"]["rate"]
            ratios["pipeline_1_replica_over_raw_ceiling"] = ratio
            rows.append(["pipeline 1 replica ÷ raw asyncpg ceiling", f"{ratio:.2f}", "≥ 0.40"])
    firelag = _figure(document, "firelag", 0)
    for run in firelag["runs"] if firelag else []:
        if run["schedule"] == "@every 1s" and run["jobs"] in (1000, 5000):
            limit = 25 if run["jobs"] == 1000 else 250
            p99 = run["start_lag_ms"]["p99"]
            rows.append(
                [
                    f"fire lag p99 start - tick, {run['jobs']} ticks/s, {run['target']} target, "
                    f"{run['replicas']} replicas",
                    f"{p99:.1f} ms",
                    f"≤ {limit} ms",
                ]
            )
    scale = _figure(document, "scale", 0)
    if scale and "ratio_largest_to_smallest_p50" in scale:
        sizes = scale["sizes"]
        rows.append(
            [
                f"due claim p50 at {sizes[-1]['jobs']:,} ÷ at {sizes[0]['jobs']:,} jobs",
                f"{scale['ratio_largest_to_smallest_p50']:.2f}",
                "≤ 1.5 (1M vs 10k)",
            ]
        )
    console = _figure(document, "console", 0)
    if console and console.get("pages"):
        slowest = max(console["pages"], key=lambda page: page["ms"]["max"])
        rows.append(
            [
                f"console: slowest page's max server time ({slowest['page']})",
                f"{slowest['ms']['max']:.1f} ms",
                "≤ 50 ms",
            ]
        )
    if not rows:
        return None
    return Result(
        "Ours beside the peers, and the acceptance figures",
        ["what", "measured", "asked"],
        rows,
        {"ratios": ratios},
    )


def write(document: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, default=str) + "\n")


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenarios", nargs="*", metavar="scenario", help=", ".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="smaller sizes, shorter windows")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/<time>.json)")
    args = parser.parse_args()
    present = available()
    chosen = args.scenarios or present
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    missing = [name for name in chosen if name not in present]
    if missing:
        parser.error(f"no module for {', '.join(missing)} (bench/{missing[0]}.py)")
    chosen = [name for name in SCENARIOS if name in chosen]
    started = datetime.now(UTC)
    out = args.out or RESULTS / f"{started:%Y%m%dT%H%M%SZ}.json"
    document: dict[str, Any] = {
        "started_at": started.isoformat(),
        "quick": args.quick,
        "machine": await machine(),
        "scenarios": {},
        "seconds": {},
        "errors": {},
    }
    failed = False
    for name in chosen:
        print(f"== {name}", flush=True)
        clock = time.monotonic()
        try:
            results = await runner(name)(args.quick)
        except Exception:  # one scenario failing must not lose the others' figures
            failed = True
            document["errors"][name] = traceback.format_exc()
            print(document["errors"][name], file=sys.stderr, flush=True)
            results = []
        document["seconds"][name] = time.monotonic() - clock
        document["scenarios"][name] = [
            {"title": r.title, "header": r.header, "rows": r.rows, "figures": r.figures}
            for r in results
        ]
        for result in results:
            print(result.table(), end="\n\n", flush=True)
        write(document, out)
    summary = acceptance(document)
    if summary is not None:
        document["acceptance"] = {"rows": summary.rows, **summary.figures}
        print(summary.table(), end="\n\n")
    write(document, out)
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    import uvloop

    sys.exit(uvloop.run(main()))
