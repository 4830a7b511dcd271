"""The garbage collector's pace in a gateway process.

CPython starts a young collection every 700 container allocations, and a node makes several
for each record it reads (aiokafka's record and its headers, the decoded message, the
packet): a replay of 100,000 events ran hundreds of collections, each scanning what the last
ones left alive. With a young threshold of 50,000 the same replay took 1.6-1.7 s instead of
2.1 s here, and the live path's CPU and latency did not move (`benchmarks/RESULTS.md`). Only
cyclic garbage waits longer: reference counting frees the rest at once, as before.

The gateway's `serve` sets it; an app that imports only the adapter keeps its own settings.
"""

from __future__ import annotations

import gc

__all__ = ["THRESHOLDS", "pace_collector"]

#: Young collections every 50,000 allocations; older generations at 20 (not 10) of those
#: below them.
THRESHOLDS = (50_000, 20, 20)


def pace_collector() -> None:
    """Set this process's collector to `THRESHOLDS`."""
    gc.set_threshold(*THRESHOLDS)
