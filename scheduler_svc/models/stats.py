"""The console's per-minute rollup of runs (table run_minutes, written by engine/rollup.py):
the fire-lag buckets, the bucket of a lag, a quantile read back from bucket counts, and
one minute's counts as the store returns them."""

from __future__ import annotations

import math
from bisect import bisect_left
from datetime import datetime

from msgspec import Struct

# Upper bounds of the fire-lag buckets in milliseconds, the last one unbounded. A lag
# equal to a bound is in that bound's bucket. run_minutes.lag_counts holds one count per
# bucket in this order: changing the bounds changes what the rows of the last day mean.
LAG_BUCKETS_MS: tuple[float, ...] = (
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1000,
    2000,
    5000,
    10000,
    30000,
    60000,
    math.inf,
)

# The finite bounds in seconds, for bisect.
_BOUNDS_S = tuple(bound / 1000 for bound in LAG_BUCKETS_MS[:-1])


def lag_bucket(seconds: float) -> int:
    """The index in LAG_BUCKETS_MS of the bucket a fire lag of `seconds` falls in (a lag
    below zero, a clock's step back, falls in the first)."""
    return bisect_left(_BOUNDS_S, seconds)


def lag_quantile(counts: list[int] | tuple[int, ...], q: float) -> float | None:
    """The `q` quantile (0 ≤ q ≤ 1) of the lags counted in `counts` (by LAG_BUCKETS_MS), in
    seconds; None when nothing was counted.

    It is the upper bound of the bucket the quantile falls in, not a value interpolated
    within it: "p99 is at most 0.05 s" is what the counts say, and a chart must not
    claim more. A quantile in the last bucket is math.inf: it is over the last finite
    bound (60 s), by how much the counts cannot tell. Counts past the known buckets (a
    later release's) count as the last bucket.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile is between 0 and 1, not {q}")
    total = sum(counts)
    if total <= 0:
        return None
    # The rank of the quantile's lag among all of them, 1-based (nearest rank).
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank:
            bound = LAG_BUCKETS_MS[min(index, len(LAG_BUCKETS_MS) - 1)]
            return bound / 1000
    return math.inf  # unreachable: seen reaches total, and rank ≤ total


class MinuteStats(Struct, frozen=True, kw_only=True):
    """One minute of a tenant's runs, summed over the replicas that counted them: runs that
    ended by outcome, attempts to be retried, and first attempts' fire lag by bucket
    (LAG_BUCKETS_MS)."""

    minute: datetime
    succeeded: int
    failed: int
    skipped: int
    cancelled: int
    retried: int
    lag_counts: tuple[int, ...]
