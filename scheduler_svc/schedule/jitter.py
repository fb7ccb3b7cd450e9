"""Jitter (SPEC §8): each tick of a job with `jitter_s` is due a little after it, by an
offset in [0, jitter_s) that is a fixed function of (job, tick), to the millisecond.

Fixed, so that every replica, and a replica that materializes the tick again after a
crash, agrees on it; spread, so that a thousand jobs on `0 * * * *` reach their targets
over the window rather than in the same millisecond. A keyed hash (BLAKE2b) of the job id
and the tick's microseconds, not Python's hash(), which differs from process to process.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta


def offset_s(job_id: int, tick: datetime, jitter_s: float) -> float:
    """The seconds after `tick` that job `job_id`'s run of it is due: in [0, jitter_s)."""
    window_ms = int(jitter_s * 1000)
    if window_ms <= 0:
        return 0.0
    micros = int(tick.timestamp()) * 1_000_000 + tick.microsecond
    digest = hashlib.blake2b(f"{job_id}:{micros}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") % window_ms) / 1000


def due_at(job_id: int, tick: datetime, jitter_s: float) -> datetime:
    """When job `job_id`'s run of `tick` is due."""
    offset = offset_s(job_id, tick, jitter_s)
    # Most jobs have no jitter: the tick itself, without making a new datetime per tick.
    return tick + timedelta(seconds=offset) if offset else tick
