"""The garbage collector's pace in a gateway process.

CPython starts a young collection every 700 container allocations, and a node makes several
for each record it reads (aiokafka's record and its headers, the decoded message, the
packet): a replay of 100,000 events ran hundreds of collections, each scanning what the last
ones left alive, and a full collection whenever the records it held grew by a quarter. Full
collections are kept rare (at most one in 25 million allocations here, not one in 70,000):
with that, session 11's machine replayed 100,000 events in 1.6-1.7 s instead of 2.1 s
(`benchmarks/RESULTS.md`).

A young collection stays small (5,000 allocations): its pause is what freeing that much
cyclic garbage costs, and connections leave cycles (engineio's closed socket, its
exception and the tasks around it). With young collections every 50,000 a flood of
connections made each one a 55-113 ms pause of the event loop, every 5 seconds; at 5,000
they take under 11 ms, and a 100,000-event replay is about 7% slower (5.9 s against 5.5 s,
4 runs each, on the machine of session 14).

The gateway's `serve` sets it; an app that imports only the adapter keeps its own settings.
"""

from __future__ import annotations

import gc

__all__ = ["THRESHOLDS", "pace_collector"]

#: Young collections every 5,000 allocations, the middle generation every 50 of those, the
#: oldest every 100 of the middle's (CPython: 700, 10, 10).
THRESHOLDS = (5_000, 50, 100)


def pace_collector() -> None:
    """Set this process's collector to `THRESHOLDS`."""
    gc.set_threshold(*THRESHOLDS)
