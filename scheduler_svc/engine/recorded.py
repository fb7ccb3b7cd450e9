"""Results a database crash may have forgotten, and recording them again.

The worker's pool commits without waiting for the WAL flush (store/db.create_pool), so a
database crash can forget results recorded in the last moments before it: PostgreSQL
writes the WAL out within three wal_writer_delay, 600 ms by default. The run is then
`running` again, its lease runs out, and this replica takes it over from itself. Calling
the target again would be allowed (at least once, under the same idempotency key), but
the run's end would then be the second attempt's, and overlap would judge the ticks that
came due meanwhile by it: an overlap-forbidding job would skip them (test_outages.py).

So an executor remembers the final results it recorded in the last UNSURE_S seconds; when
the database is lost (its worker's LISTEN connection goes), it keeps those until their
lease would have ended; and a run it takes over from itself among them is recorded again,
with the real end of its attempt, not run again.
"""

from __future__ import annotations

import time
from collections import deque

from scheduler_svc.models import ClaimedRun, RunResult

# How far back a result may have been forgotten (above the WAL writer's 600 ms).
UNSURE_S = 2.0
# Kept past its lease by this much: the takeover comes at the next lease check after it.
TAKEOVER_SLACK_S = 5.0


class RecentResults:
    """One executor's final results of the last UNSURE_S, and those a lost database may
    have forgotten."""

    def __init__(self, lease_margin_s: float) -> None:
        self._lease_margin_s = lease_margin_s
        self._recent: deque[tuple[float, RunResult, float]] = deque()  # (when, result, lease)
        self._unsure: dict[int, tuple[RunResult, float]] = {}  # run id → (result, keep until)

    def remember(
        self, attempts: list[tuple[RunResult, ClaimedRun | None]], recorded: set[int]
    ) -> None:
        """An exchange recorded these (`recorded`: the run ids it took)."""
        now = time.monotonic()
        for result, run in attempts:
            if run is not None and result.status != "pending" and result.run_id in recorded:
                self._recent.append((now, result, run.timeout_s + self._lease_margin_s))
        while self._recent and self._recent[0][0] < now - UNSURE_S:
            self._recent.popleft()

    def database_lost(self) -> None:
        """The database went away: keep what was recorded in the last UNSURE_S until its
        lease would have ended."""
        now = time.monotonic()
        self._unsure = {k: v for k, v in self._unsure.items() if v[1] > now}
        for at, result, lease_s in self._recent:
            if at >= now - UNSURE_S:
                self._unsure[result.run_id] = (result, now + lease_s + TAKEOVER_SLACK_S)
        self._recent.clear()

    def forgotten(self, run: ClaimedRun, worker_id: str) -> RunResult | None:
        """The result to record again for `run`, just leased, if it is one this worker
        recorded and the database forgot (it takes the run over from itself)."""
        if run.lost_worker != worker_id:
            return None
        kept = self._unsure.pop(run.id, None)
        return None if kept is None else kept[0]
