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
are half again what start-up and the node's connections account for, the next full
collection walks them all again. A node that grows by its connections is not thawed for it:
each thaw is as long a pause as before (about 9 of them while a node grew from 0 to 20,000
connections, up to 1.5 s each, when any growth by half thawed).

The gateway's `serve` sets it (`pace_collector`); an app that imports only the adapter keeps
its own settings (and may call it once its imports are done). `CollectorPauses` times every
collection for the node's metrics: a pause stalls every client of the node at once.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from socketio_kafka.adapter.histogram import LatencyHistogram

__all__ = [
    "COUNT_EVERY",
    "FREEZER",
    "OBJECTS_PER_CONNECTION",
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


#: The frozen objects may be half again what start-up and the node's connections account
#: for (cycles that formed after their objects were frozen) before a full collection walks
#: them all again.
THAW_GROWTH = 1.5

#: What the collector tracks for a connection the node holds, idle in 2 rooms (uvicorn's,
#: Engine.IO's and our per-connection state: session 31's census, 127): frozen objects that
#: grew by this much a connection are the connections', not a leak.
OBJECTS_PER_CONNECTION = 127

#: Counting the frozen objects walks them all (21 ms for 2.5 million here): once in so many
#: full collections.
COUNT_EVERY = 10


def pace_collector(connections: Callable[[], int] | None = None) -> None:
    """Set this process's collector to `THRESHOLDS`, and leave what exists now (start-up's
    objects, once the garbage among them is freed) and what survives each later full
    collection out of the collections that follow (`FREEZER`). ``connections``: how many
    the process holds now, what its frozen objects grow with (`Freezer.follow`)."""
    gc.set_threshold(*THRESHOLDS)
    if connections is not None:
        FREEZER.follow(connections)
    FREEZER.install()
    gc.collect()


class Freezer:
    """After each full collection, its survivors leave the collector's sight.

    A full collection then walks what survived since the last one, not every connection
    of the node. Every `COUNT_EVERY` full collections the frozen objects are counted,
    beside what the node's connections account for (`OBJECTS_PER_CONNECTION` each, once
    `follow` says how many it holds): past `THAW_GROWTH` times what those and the fewest
    others counted since the last thaw come to, they are thawed, and the next full
    collection walks them all (and frees the cycles among them) before freezing again.
    One per process (`FREEZER`), like the collector.
    """

    def __init__(self) -> None:
        #: Frozen objects when last counted.
        self.frozen = 0
        #: The fewest of them counted since the last thaw less the connections' share.
        self._fewest_others = 0
        self._connections: Callable[[], int] = _none
        self._fulls = 0
        self._thawed = True
        #: Thaws: each makes the next full collection walk everything, as long a pause as
        #: the node's connections are many.
        self.thaws = 0

    def install(self) -> None:
        """Freeze after every full collection from now on (safe twice)."""
        if self._after not in gc.callbacks:
            gc.callbacks.append(self._after)

    def follow(self, connections: Callable[[], int]) -> None:
        """Judge the frozen objects' growth beside ``connections()``, the connections the
        process holds: a node that grows by its connections is not thawed for that."""
        self._connections = connections

    def _after(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info["generation"] != 2:
            return
        gc.freeze()
        self._fulls += 1
        if not self._thawed and self._fulls % COUNT_EVERY:
            return
        self.frozen = gc.get_freeze_count()
        held = OBJECTS_PER_CONNECTION * self._connections()
        if self._thawed:  # this collection walked everything
            self._fewest_others = self.frozen - held
            self._thawed = False
            return
        self._fewest_others = min(self._fewest_others, self.frozen - held)
        if self.frozen > THAW_GROWTH * (self._fewest_others + held):
            gc.unfreeze()
            self._thawed = True
            self.thaws += 1


def _none() -> int:
    return 0


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
