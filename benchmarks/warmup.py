"""Warming a broker up until its CPU settles, not for a fixed time.

A fresh Kafka JVM compiles its hot paths in its first half minute of traffic or more: at
1,000 records/s, passes of 4 s cost it 1.30, 1.20, 1.04, 0.89, 0.61, 0.57, 0.53, 0.55 and
0.53 cores in turn (session 17, `benchmarks/RESULTS.md`), its compiler threads taking most
of it, and Kafka alone's p50 fell from 8.6 to 1.5 ms meanwhile. A fixed warm-up of 2 s (the
floor's until then) or 10 s (the first Kafka contestant's) measured a broker still busy
compiling, on the machine's shared cores. Redis has no compiler: its passes are level from
the first.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["SETTLED", "until_settled"]

#: A pass whose broker CPU is at least this share of the pass before did not find it
#: compiling; two such passes in a row, and it is warm (one alone came early in a run
#: whose CPU then fell by a third more).
SETTLED = 0.95
_IN_A_ROW = 2


def until_settled(run: Callable[[], float], max_passes: int) -> list[float]:
    """Call ``run`` (one warm-up pass; it returns the broker's CPU seconds) until two
    passes in a row each cost at least `SETTLED` of the one before, or ``max_passes``
    times; each pass's CPU."""
    used: list[float] = []
    level = 0
    while len(used) < max_passes:
        used.append(run())
        level = level + 1 if len(used) > 1 and used[-1] >= SETTLED * used[-2] else 0
        if level == _IN_A_ROW:
            break
    return used
