"""A latency histogram cheap enough for the produce path: one bucket increment a record."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

__all__ = ["PRODUCE_BUCKETS_S", "LatencyHistogram"]

#: From a millisecond (a broker next door, acks in one round trip) to 30 s (past the
#: default 15 s request timeout, so a publish that ends in a timeout lands below +Inf).
PRODUCE_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@dataclass(slots=True)
class LatencyHistogram:
    """Observations counted in the one bucket each falls in, and summed; made cumulative
    (Prometheus's form) only when read, at scrape time.

    A dataclass of plain values, so that ``dataclasses.asdict`` of the stats holding it is
    still JSON.
    """

    bounds: tuple[float, ...] = PRODUCE_BUCKETS_S
    #: Per bucket, not cumulative; the last counts what is above every bound.
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float, times: int = 1) -> None:
        """``times`` observations of ``seconds`` (a batch acknowledged at once)."""
        # bisect_left: a value equal to a bound is in that bound's bucket (le is <=).
        self.counts[bisect.bisect_left(self.bounds, seconds)] += times
        self.sum += seconds * times

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)``, ending with ``(inf, count)``."""
        total = 0
        buckets = []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            buckets.append((bound, total))
        return buckets
