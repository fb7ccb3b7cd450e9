"""Overlap `forbid` by real time (SPEC §3.7), as pure decisions: tables, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from scheduler_svc.schedule.overlap import (
    NOTHING_UNFINISHED,
    RunSpan,
    Settlement,
    TickPlan,
    Unfinished,
    plan_ticks,
    settle_waiting,
)

T0 = datetime(2031, 3, 4, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


TICKS = [at(0), at(1), at(2)]


@pytest.mark.parametrize(
    ("unfinished", "forbid", "plans"),
    [
        # Nothing of the job unfinished: the first runs, the backlog waits behind it.
        (NOTHING_UNFINISHED, True, ["run", "wait", "wait"]),
        # Overlap allowed: every tick runs.
        (NOTHING_UNFINISHED, False, ["run", "run", "run"]),
        # A running run (it may have ended unseen): every tick waits for its outcome.
        (Unfinished(None, 7, False), True, ["wait", "wait", "wait"]),
        # Ticks already waiting: later ticks queue behind them, in order.
        (Unfinished(None, None, True), True, ["wait", "wait", "wait"]),
        # A pending run, claimable since 1 s: a tick from then on overlaps it for certain;
        # an earlier tick came due before it and waits.
        (Unfinished(at(1), 7, False), True, ["wait", "skip", "skip"]),
        (Unfinished(at(-5), 7, False), True, ["skip", "skip", "skip"]),
    ],
)
def test_plan_ticks(unfinished: Unfinished, forbid: bool, plans: list[TickPlan]) -> None:
    assert plan_ticks(TICKS, unfinished, forbid=forbid) == plans


def span(
    run_id: int,
    tick: float,
    status: str = "pending",
    *,
    ready: float | None = None,
    ended: float | None = None,
    waits_for: int | None = None,
    job_id: int = 1,
    catch_up: bool = False,
) -> RunSpan:
    """A run of job 1 by default (misfire grace 60 s); waiting when pending and never
    claimable (`ready` None)."""
    waiting = status == "pending" and ready is None
    return RunSpan(
        id=run_id,
        job_id=job_id,
        status=status,
        scheduled_for=at(tick),
        ready_at=None if ready is None else at(ready),
        finished_at=None if ended is None else at(ended),
        waits_for=waits_for,
        waiting=waiting,
        catch_up=catch_up,
        misfire_grace_s=60,
    )


def settle(spans: list[RunSpan], ended: list[int], now: float = 20) -> list[Settlement]:
    return settle_waiting(spans, ended, at(now))


def test_a_tick_due_after_the_run_it_waited_for_really_ended_is_released() -> None:
    # The outage: run 1 ended at 0.1 s but its result was recorded later; ticks 1 and 2
    # came due after it ended. The first is released, the other waits for it.
    spans = [
        span(1, 0, "succeeded", ready=0, ended=0.1),
        span(2, 1, waits_for=1),
        span(3, 2, waits_for=1),
    ]
    assert settle(spans, [1]) == [
        Settlement(2, "release", None, catch_up=True),
        Settlement(3, "wait", 2),
    ]


def test_a_tick_due_while_the_run_it_waited_for_was_running_is_skipped() -> None:
    spans = [
        span(1, 0, "succeeded", ready=0, ended=2.5),
        span(2, 1, waits_for=1),
        span(3, 2, waits_for=1),
        span(4, 3, waits_for=1),
    ]
    assert settle(spans, [1]) == [
        Settlement(2, "skip", None),
        Settlement(3, "skip", None),
        Settlement(4, "release", None, catch_up=True),
    ]


def test_a_backlog_runs_one_at_a_time_in_tick_order() -> None:
    # Ticks 1-3 came due before run 5 (released at 10 s) became claimable: it does not
    # cover them, so the next in tick order is released when it ends.
    spans = [
        span(5, 0, "succeeded", ready=10, ended=10.2),
        span(7, 2, waits_for=5),
        span(6, 1, waits_for=5),
        span(8, 3),
    ]
    assert settle(spans, [5]) == [
        Settlement(6, "release", None, catch_up=True),
        Settlement(7, "wait", 6),
    ]


def test_a_release_rewrites_the_next_in_line_only_not_the_whole_backlog() -> None:
    # A replica that fell behind: a job with a long backlog of waiting runs. Each release
    # points the next in line at the run released; the others keep what they waited for
    # (they are judged against every run of the job that ends anyway). Pointing them all
    # again made each release cost the backlog's length.
    spans = [span(1, 0, "succeeded", ready=0, ended=0.5)]
    spans += [span(100 + i, 1 + i, waits_for=1) for i in range(500)]
    assert settle(spans, [1], now=30) == [
        Settlement(100, "release", None, catch_up=True),
        Settlement(101, "wait", 100),
    ]


def test_waiting_runs_wait_on_while_another_run_of_their_job_is_claimable() -> None:
    # A manual run (9) is still running: nothing is released; a tick the ended run
    # covered is skipped all the same, and the rest now wait for the manual run.
    spans = [
        span(1, 0, "succeeded", ready=0, ended=1.5),
        span(9, 0.5, "running", ready=0.5),
        span(2, 1, waits_for=1),
        span(3, 2, waits_for=1),
    ]
    assert settle(spans, [1]) == [
        Settlement(2, "skip", None),
        Settlement(3, "wait", 9),
    ]


def test_a_run_that_ended_judges_every_waiting_run_of_its_job() -> None:
    # Run 3 waits for run 9, still running; run 1, a manual run that ended, was running at
    # its tick: skipped, though it did not wait for run 1.
    spans = [
        span(1, 0, "succeeded", ready=0, ended=5),
        span(9, 0.5, "running", ready=0.5),
        span(3, 2, waits_for=9),
    ]
    assert settle(spans, [1]) == [Settlement(3, "skip", None)]


def test_a_stranded_waiting_run_is_judged_by_the_run_it_waited_for() -> None:
    # A pass added run 2 while run 1's end was being recorded: nothing ended now, but the
    # run it waits for has, at 0.5 s, before its tick.
    spans = [span(1, 0, "succeeded", ready=0, ended=0.5), span(2, 1, waits_for=1)]
    assert settle(spans, []) == [Settlement(2, "release", None, catch_up=True)]
    covered = [span(1, 0, "failed", ready=0, ended=3), span(2, 1, waits_for=1)]
    assert settle(covered, []) == [Settlement(2, "skip", None)]


def test_jobs_are_settled_apart() -> None:
    spans = [
        span(1, 0, "succeeded", ready=0, ended=0.5),
        span(2, 1, waits_for=1),
        span(11, 0, "running", ready=0, job_id=2),
        span(12, 1, job_id=2),
    ]
    assert settle(spans, [1]) == [
        Settlement(2, "release", None, catch_up=True),
        Settlement(12, "wait", 11),
    ]


def test_a_tick_due_while_a_catch_up_run_ran_waits_its_turn_within_the_grace() -> None:
    # After an outage, run 5 replays tick 0 from 30 s to 30.2 s; tick 30.1 came due
    # meanwhile. It belongs to the backlog: not skipped, it runs after the others.
    spans = [
        span(5, 0, "succeeded", ready=30, ended=30.2, catch_up=True),
        span(6, 1, waits_for=5),
        span(7, 30.1, waits_for=5),
    ]
    assert settle(spans, [5], now=30.3) == [
        Settlement(6, "release", None, catch_up=True),
        Settlement(7, "wait", 6),
    ]


def test_a_tick_held_up_by_catch_up_past_its_misfire_grace_is_skipped() -> None:
    # A catch-up slower than the schedule: a tick it held up for more than the job's
    # grace (60 s) is skipped, so the backlog cannot grow without end.
    spans = [
        span(5, 0, "succeeded", ready=30, ended=95, catch_up=True),
        span(7, 31, waits_for=5),
        span(8, 94, waits_for=5),
    ]
    assert settle(spans, [5], now=95) == [
        Settlement(7, "skip", None),
        Settlement(8, "release", None, catch_up=True),
    ]


def test_a_released_run_is_catch_up_so_a_fresh_tick_during_it_waits_its_turn() -> None:
    # The last run of a backlog (6) is released at 30 s and runs until 30.2 s; the next
    # fresh tick (30.1) comes due meanwhile. The backlog made it late: no overlap.
    released = settle([span(5, 0, "succeeded", ready=0, ended=0.1), span(6, 1, waits_for=5)], [5])
    assert released == [Settlement(6, "release", None, catch_up=True)]
    spans = [
        span(6, 1, "succeeded", ready=30, ended=30.2, catch_up=True),
        span(7, 30.1, waits_for=6),
    ]
    assert settle(spans, [6], now=30.3) == [Settlement(7, "release", None, catch_up=True)]


# --- jitter: overlap is judged at a tick's due time (SPEC §8) -------------------------


def test_a_jittered_tick_waits_for_a_pending_run_that_may_end_before_it_is_due() -> None:
    # Its due time comes after the pass: the pending run may run and end by then.
    pending_since_one = Unfinished(at(1), 7, False)
    assert plan_ticks(TICKS, pending_since_one, forbid=True, certain=False) == ["wait"] * 3


def test_a_jittered_tick_is_judged_at_its_due_time_not_its_tick() -> None:
    # Run 1 was running from 0 to 1.4; the tick at 1 is due at 1.5 (jitter): no overlap.
    due_after = RunSpan(
        id=2,
        job_id=1,
        status="pending",
        scheduled_for=at(1),
        due_at=at(1.5),
        ready_at=None,
        finished_at=None,
        waits_for=1,
        waiting=True,
    )
    ended = span(1, 0, "succeeded", ready=0, ended=1.4)
    assert settle([ended, due_after], [1]) == [Settlement(2, "release", None, catch_up=True)]
    # Due at 1.3 instead: run 1 was still running then, so it is skipped.
    due_during = msgspec.structs.replace(due_after, due_at=at(1.3))
    assert settle([ended, due_during], [1]) == [Settlement(2, "skip", None)]
