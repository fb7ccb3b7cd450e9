"""Saying so when the service falls behind: the rule of what a worker logs, and the
worker's own look through a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import structlog

from scheduler_svc import metrics
from scheduler_svc.engine import behind
from scheduler_svc.engine.behind import BehindWatch
from scheduler_svc.store import Backlog
from tests.factories import make_job


def test_a_worker_says_it_is_behind_once_then_again_only_after_a_while_then_caught_up() -> None:
    watch = BehindWatch(warn_s=5.0, repeat_s=60.0)
    assert watch.observe(Backlog(3, 0.2), 0.0) is None
    assert watch.observe(Backlog(900, 5.0), 10.0) == "behind"
    assert watch.observe(Backlog(950, 9.0), 15.0) is None
    assert watch.observe(Backlog(990, 12.0), 69.0) is None
    assert watch.observe(Backlog(990, 12.0), 70.0) == "still_behind"
    assert watch.since == 10.0
    assert watch.observe(Backlog(40, 4.9), 75.0) == "caught_up"
    assert watch.since is None
    assert watch.observe(Backlog(0, 0.0), 80.0) is None
    # Behind again later: said at once, not held back by the last warning.
    assert watch.observe(Backlog(900, 6.0), 81.0) == "behind"


@pytest.mark.usefixtures("clean")
async def test_a_look_logs_when_due_ticks_wait_and_sets_the_gauge(
    pool: asyncpg.Pool[Any],
) -> None:
    await make_job(pool, next_run_at=datetime.now(UTC) - timedelta(seconds=42))
    watch = BehindWatch()
    with structlog.testing.capture_logs() as lines:
        assert await behind.look(pool, watch, "w-test", 100.0) == "behind"
        assert await behind.look(pool, watch, "w-test", 105.0) is None  # said already
    [line] = [line for line in lines if line["event"] == "scheduler_behind"]
    assert line["log_level"] == "warning"
    assert line["worker"] == "w-test" and line["due_ticks"] == 1
    assert 42 <= line["behind_s"] < 60
    assert 42 <= metrics.BEHIND._value.get() < 60
