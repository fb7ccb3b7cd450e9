"""Overlap `forbid` by real time (SPEC §3.7): which ticks run, wait or are skipped.

A tick is skipped only if an earlier run of its job was pending or running at the
tick, by the clock that matters: a run counts from when it became claimable
(`ready_at`) until it really ended on its replica (`finished_at`, which the executor
records as measured, not as when the result reached the database). A run the database
still shows running may have ended already, its result held back by an outage, so a
tick that comes due while one is running waits (a pending run with no attempt due)
until that run's outcome is recorded; it is then skipped or released. Ticks that came
due while nothing of the job was running (after an outage, a backlog) are not
overlaps: they run one at a time, in tick order.

A backlog's runs are catch-up (`catch_up`: run after the next tick of their job had
come due). A tick that comes due while one of them runs belongs to the backlog too: it
waits its turn rather than being skipped, for as long as it is within the job's misfire
grace, so that an outage loses no tick and a catch-up slower than the schedule cannot
grow a queue without end.

Pure: the scheduler and the executor read rows, ask here, and write back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

import msgspec

OVERLAP_SKIPPED = "an earlier run of this job was still pending or running (overlap: forbid)"

TickPlan = Literal["run", "wait", "skip"]


class Unfinished(msgspec.Struct, frozen=True):
    """What a claimed job's unfinished runs say about its due ticks (jobs_claim_due)."""

    pending_since: datetime | None  # its earliest pending run became claimable then
    blocker: int | None  # a pending or running run of it, for a waiting tick to wait for
    waiting: bool  # it has ticks waiting already


NOTHING_UNFINISHED = Unfinished(pending_since=None, blocker=None, waiting=False)


def plan_ticks(
    ticks: Iterable[datetime], unfinished: Unfinished, *, forbid: bool, certain: bool = True
) -> list[TickPlan]:
    """For a job's due ticks (their due times), in order: run, wait for an earlier run,
    or skip.

    A tick at or after `pending_since` overlaps for certain: a pending run has no
    attempt under way that could have ended unseen; unless not `certain`: ticks due
    after the pass (jitter), by when that run may have run and ended. Otherwise a tick
    waits while anything of the job is pending, running or waiting, and behind an
    earlier tick of the same pass when overlap is forbidden."""
    plans: list[TickPlan] = []
    free = unfinished.blocker is None and not unfinished.waiting
    for tick in ticks:
        if certain and unfinished.pending_since is not None and unfinished.pending_since <= tick:
            plans.append("skip")
        elif free:
            plans.append("run")
            free = not forbid
        else:
            plans.append("wait")
    return plans


class RunSpan(msgspec.Struct, frozen=True, kw_only=True):
    """A run as deciding waiting runs sees it (runs_waiting_get), with its job's grace."""

    id: int
    job_id: int
    status: str
    scheduled_for: datetime
    ready_at: datetime | None
    finished_at: datetime | None
    waits_for: int | None
    waiting: bool
    catch_up: bool = False
    misfire_grace_s: int = 60
    due_at: datetime | None = None  # its tick plus its job's jitter; None: the tick
    tenant: str = ""  # whose run it is (the console's counts of skipped runs)

    @property
    def claimable(self) -> bool:
        """Pending with an attempt due, or running: it holds up later ticks."""
        return not self.waiting and self.status in ("pending", "running")

    def overlaps(self, run: RunSpan, now: datetime) -> bool:
        """Whether this ended run makes the waiting `run` an overlap: it was pending or
        running at that run's due time (its tick, without jitter), and was on time, or was
        catch-up while the tick has been waiting longer than its misfire grace."""
        tick = run.due_at or run.scheduled_for
        if self.ready_at is None or self.finished_at is None:
            return False
        if not self.ready_at <= tick < self.finished_at:
            return False
        return not self.catch_up or (now - tick).total_seconds() > run.misfire_grace_s


class Settlement(msgspec.Struct, frozen=True):
    """What becomes of one waiting run: skipped, released now (catch-up or not), or
    waiting for `waits_for`."""

    id: int
    action: Literal["skip", "release", "wait"]
    waits_for: int | None
    catch_up: bool = False


def settle_waiting(spans: list[RunSpan], ended: Iterable[int], now: datetime) -> list[Settlement]:
    """Decide the waiting runs among `spans` once earlier runs of their jobs ended.

    A waiting run is judged against each run that just `ended` and against the run it
    waited for, if that one has ended and is among `spans` (runs_waiting_get brings it
    for the next in line of each job only; the runs behind it are judged by the runs
    that end, each in turn): skipped if one of them overlaps it
    (RunSpan.overlaps). It waits on while its job still has a claimable run (for that
    run). Otherwise the earliest of its job's remaining waiting runs is released, and
    the others wait for it: one at a time, in tick order (the next in line is pointed
    at it; the rest keep the run they waited for, see below). A released run is catch-up:
    it runs late, behind the runs it waited for, so a tick that comes due while it runs
    waits its turn too (a backlog's last run would otherwise make the next fresh tick an
    overlap)."""
    by_id = {span.id: span for span in spans}
    ended_by_job: dict[int, list[RunSpan]] = defaultdict(list)
    for run_id in ended:
        span = by_id.get(run_id)
        if span is not None and span.finished_at is not None:
            ended_by_job[span.job_id].append(span)
    waiting: dict[int, list[RunSpan]] = defaultdict(list)
    claimable: dict[int, int] = {}
    for span in spans:
        if span.waiting:
            waiting[span.job_id].append(span)
        elif span.claimable:
            claimable[span.job_id] = max(span.id, claimable.get(span.job_id, 0))

    settlements: list[Settlement] = []
    for job_id, runs in waiting.items():
        remaining = []
        for run in sorted(runs, key=lambda r: (r.scheduled_for, r.id)):
            judges = list(ended_by_job.get(job_id, ()))
            blocker = by_id.get(run.waits_for) if run.waits_for is not None else None
            if blocker is not None and blocker.finished_at is not None:
                judges.append(blocker)
            if any(judge.overlaps(run, now) for judge in judges):
                settlements.append(Settlement(run.id, "skip", None))
            else:
                remaining.append(run)
        if not remaining:
            continue
        holder = claimable.get(job_id)
        if holder is None:
            first, *rest = remaining
            # It waited behind earlier runs of its job: late, so catch-up.
            settlements.append(Settlement(first.id, "release", None, catch_up=True))
            holder = first.id
        else:
            rest = remaining
        # Only the next in line is pointed at the run it now waits for. The others are
        # judged against every run of their job that ends all the same, and pointing a
        # backlog of N waiting runs again at each release rewrote N rows N times: a
        # replica that fell behind at thousands of ticks a second never caught up.
        if rest and rest[0].waits_for != holder:
            settlements.append(Settlement(rest[0].id, "wait", holder))
    return settlements
