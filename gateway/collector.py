"""The garbage collector's pace in a gateway process.

CPython starts a young collection every 700 container allocations, and a node makes several
for each record it reads (aiokafka's record and its headers, the decoded message, the
packet): a replay of 100,000 events ran hundreds of collections, each scanning what the last
ones left alive, and a full collection whenever the records it held grew by a quarter. Full
collections are kept rare (at most one in 25 million allocations here, not one in 70,000):
with that, session 11's machine replayed 100,000 events in 1.6-1.7 s instead of 2.1 s
(`benchmarks/RESULTS.md`).

A young collection stays small (5,000 allocations): its pause is what freeing that much
cyclic garbage costs. With young collections every 50,000 a flood of connections made each
one a 55-113 ms pause of the event loop, every 5 seconds; at 5,000 they take under 11 ms,
and a 100,000-event replay is about 7% slower (5.9 s against 5.5 s, 4 runs each, on the
machine of session 14). A middle collection walks what survived the young ones since the
last, and a new connection's objects all survive: while 3,000-6,000 connections opened as
fast as they could, one walked up to 280,000 objects, 85-177 ms (18-48 ms under rounds of
2,000 after). Every 10 young ones instead of 50 took those to 13-31 ms, and the plateau of
deliveries looked a tenth lower (session 32; `docs/decisions.md`): not taken.

A full collection walks every object the collector tracks: start-up's modules, functions
and classes (78,000 objects, 30 ms of a stalled event loop on this machine), and each
connection's state (127 objects an idle one: 1.5 s a collection at 20,000 connections).
`Freezer` moves what survives each full collection out of the collector's sight
(``gc.freeze``): the next one walks only what the node made since, its new connections and
records in flight. A frozen object is still freed when nothing refers to it; one left in a
cycle is not (the collector never looks at it again): a connection closes without one
(gateway/websocket.py), and what else leaks that way is bounded: once the frozen objects
grew by half, the next full collection walks them all again.

The gateway's `serve` sets it (`pace_collector`); an app that imports only the adapter keeps
its own settings (and may call it once its imports are done). `CollectorPauses` times every
collection for the node's metrics: a pause stalls every client of the node at once.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from socketio_kafka.adapter.histogram import LatencyHistogram

__all__ = [
    "FREEZER",
    "PAUSES",
    "PAUSE_BUCKETS_S",
    "THRESHOLDS",
    "CollectorPauses",
    "Freezer",
    "pace_collector",
]

#: Young collections every 5,000 allocations, the middle generation every 50 of those, the
#: oldest every 100 of the middle's (CPython: 700, 10, 10).
THRESHOLDS = (5_000, 50, 100)


#: From a young collection of a quiet node (well under a millisecond) to a full one of a
#: node holding thousands of connections.
PAUSE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


#: The frozen objects may grow by half (a node's new connections, or cycles that formed
#: after their objects were frozen) before a full collection walks them all again.
THAW_GROWTH = 1.5

#: Counting the frozen objects walks them all (21 ms for 2.5 million here): once in so many
#: full collections.
_COUNT_EVERY = 10


def pace_collector() -> None:
    """Set this process's collector to `THRESHOLDS`, and leave what exists now (start-up's
    objects, once the garbage among them is freed) and what survives each later full
    collection out of the collections that follow (`FREEZER`)."""
    gc.set_threshold(*THRESHOLDS)
    FREEZER.install()
    gc.collect()


class Freezer:
    """After each full collection, its survivors leave the collector's sight.

    A full collection then walks what survived since the last one, not every connection
    of the node. Every `_COUNT_EVERY` full collections the frozen objects are counted: past
    `THAW_GROWTH` times the fewest counted since the last thaw, they are thawed, and the next
    full collection walks them all (and frees the cycles among them) before freezing again.
    One per process (`FREEZER`), like the collector.
    """

    def __init__(self) -> None:
        #: Frozen objects when last counted, and the fewest since the last thaw.
        self.frozen = 0
        self._fewest = 0
        self._fulls = 0
        self._thawed = True
        #: Thaws: each makes the next full collection walk everything, as long a pause as
        #: the node's connections are many.
        self.thaws = 0

    def install(self) -> None:
        """Freeze after every full collection from now on (safe twice)."""
        if self._after not in gc.callbacks:
            gc.callbacks.append(self._after)

    def _after(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info["generation"] != 2:
            return
        gc.freeze()
        self._fulls += 1
        if self._thawed:  # this collection walked everything
            self.frozen = self._fewest = gc.get_freeze_count()
            self._thawed = False
        elif self._fulls % _COUNT_EVERY == 0:
            self.frozen = gc.get_freeze_count()
            self._fewest = min(self._fewest, self.frozen)
            if self.frozen > self._fewest * THAW_GROWTH:
                gc.unfreeze()
                self._thawed = True
                self.thaws += 1


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
FREEZER = Freezer()
