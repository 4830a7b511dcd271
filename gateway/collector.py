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

A full collection walks every object the collector tracks, and most of a node's are what
start-up made: modules, functions and classes, 78,000 objects, 30 ms of a stalled event
loop on this machine (50 ms in a process that had read a million records). `pace_collector`
moves them out of its sight (``gc.freeze``): a full collection then walks only what the node
made since, its connections and records in flight.

The gateway's `serve` sets it; an app that imports only the adapter keeps its own settings
(and may call it once its imports are done). `CollectorPauses` times every collection for
the node's metrics: a pause stalls every client of the node at once.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from socketio_kafka.adapter.histogram import LatencyHistogram

__all__ = ["PAUSES", "PAUSE_BUCKETS_S", "THRESHOLDS", "CollectorPauses", "pace_collector"]

#: Young collections every 5,000 allocations, the middle generation every 50 of those, the
#: oldest every 100 of the middle's (CPython: 700, 10, 10).
THRESHOLDS = (5_000, 50, 100)


#: From a young collection of a quiet node (well under a millisecond) to a full one of a
#: node holding thousands of connections.
PAUSE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def pace_collector() -> None:
    """Set this process's collector to `THRESHOLDS`, and leave what exists now (start-up's
    objects, once the garbage among them is freed) out of every later collection."""
    gc.set_threshold(*THRESHOLDS)
    gc.collect()
    gc.freeze()


class CollectorPauses:
    """How long this process's collections took, by generation (0 young, 2 full).

    One per process (`PAUSES`): the collector is the process's, whatever serves in it.
    """

    def __init__(self) -> None:
        self.by_generation = tuple(LatencyHistogram(PAUSE_BUCKETS_S) for _ in range(3))
        self._began = 0.0

    def install(self) -> None:
        """Start timing collections (safe twice)."""
        if self._timed not in gc.callbacks:
            gc.callbacks.append(self._timed)

    def uninstall(self) -> None:
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)

    def _timed(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.by_generation[info["generation"]].observe(time.perf_counter() - self._began)


PAUSES = CollectorPauses()
