"""The benchmark harness measures and reports (tiny sizes: a smoke test, not a figure)."""

from __future__ import annotations

import math

import pytest

from bench import common, console, peers, scale
from bench.__main__ import acceptance


@pytest.fixture(autouse=True)
def bench_server(postgres_server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "SERVER_URL", postgres_server_url)


async def test_raw_ceiling_claims_every_due_job_once() -> None:
    figures = await peers.raw_ceiling(1000, timeout_s=30)

    assert figures["ticks"] == 1000
    assert figures["rate"] > 0


async def test_scale_reports_claim_latency_and_its_plan() -> None:
    claim = await scale.claims([1000, 2000], due=20)

    (result,) = scale._results(claim, None)
    assert [row[2] for row in result.rows] == [20, 20]
    assert any("jobs_due" in line for line in claim["sizes"][0]["plan_generic"])
    assert math.isfinite(claim["ratio_largest_to_smallest_p50"])
    assert "jobs" in result.table()


@pytest.mark.slow
# bench.common.replicas leaves its replicas' log files for the garbage collector to close.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_console_bench_times_every_page_on_loaded_data() -> None:
    shape = console.Shape(jobs=1000, runs=20_000, days=3)

    result = await console.measure(shape, repeat=2)

    pages = result.figures["pages"]
    assert len(pages) == len(result.rows) == 12
    assert all(page["statuses"] == [200] for page in pages), pages
    assert all(math.isfinite(page["ms"]["max"]) for page in pages)
    assert "/ui/jobs?status=paused" in result.table()


def test_acceptance_sets_ours_beside_the_peers() -> None:
    document = {
        "scenarios": {
            "pipeline": [{"figures": {"replicas_1": {"rate": 8000.0}}}],
            "peers": [
                {
                    "figures": {
                        "raw_ceiling": {"rate": 16000.0},
                        "pgqueuer_drain_batch_100": {"rate": 4000.0},
                    }
                }
            ],
        }
    }

    summary = acceptance(document)

    assert summary is not None
    assert summary.figures["ratios"] == {
        "pipeline_1_replica_over_pgqueuer_batch_100": 2.0,
        "pipeline_1_replica_over_raw_ceiling": 0.5,
    }
