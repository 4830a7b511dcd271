"""How long a node lets records gather before a Kafka request: longer when it is busy.

Every fetch and every produce request costs the broker and the node about as much CPU as
the batch of records it carries (`benchmarks/RESULTS.md`, "The knee"), so waiting longer
to batch takes more events through the same cores, and at low rates only adds latency.
Fixed waits choose one end of that trade for every load. `Pacing` moves along it: it
measures how late the node's event loop runs a timer (a loop with a backlog, or a machine
short of cores, runs it late) and how much of a core the node's process uses, and sets the
consumer's fetch interval and the producer's linger between their configured values (an
idle node, whose timers run less than 1 ms late: the loops' timers have millisecond
resolution) and their maxima (a node whose timers run ``busy_lag_ms`` late or more, or
that uses ``_CPU_BUSY`` of a core). Either signal alone misses a busy node: a node taking
thousands of publishes a second runs many short callbacks, and its timers stay on time
while it uses most of the one core a Python process can (session 16's runs:
`benchmarks/RESULTS.md`, "Session 16").

The waits follow the square of the load: a node at half load waits a quarter of the way to
the maxima, a saturated one all of it. Long waits pay only where the node has no cores to
spare (each fetch it saves is 1-2 ms of its CPU, each produce request part of its CPU and
the broker's); below that they only add latency (session 19: maxima twice as long, reached
this way, took 11-62% more deliveries per second at saturation in 4 interleaved rounds,
while a node at 1,000 events/s waited no longer than before).

A wait widens only as far as it would gather records: by how many the node reads (for the
fetch interval) or publishes (for the linger) in the longest wait. A node busy with other
work (a flood of connections, a replay) and a sparse stream of events would only delay them.
Nor does it widen by less than the gap between two records: the node taking 1,000 publishes
a second of the benchmark's latency step read a fifth busy by its CPU and lingered 0.5 ms,
half a record's gap, which gathered nothing and delayed every publish (session 40).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["Pacing"]

#: How often the loop's lateness is sampled, and how much each sample weighs.
_TICK_S = 0.02
_WEIGHT = 0.2
#: Linger changes smaller than this are not passed on (each is a producer attribute write).
_LINGER_STEP_MS = 0.25
#: Timers this late are on time: uvloop and asyncio wake at millisecond resolution (an idle
#: loop ran a 20 ms sleep 0.44-0.48 ms late on average here).
_ON_TIME_MS = 1.0
#: Records a wait's maximum would gather: under the first, it does not widen (waiting would
#: gather nothing); from the second on, it widens as far as the load says.
_SPARSE = 2.0
_DENSE = 8.0
#: Of one core, smoothed: up to the first the node is idle by its CPU; from the second on,
#: busy (a Python process uses one core at most, and queues well before it is full).
_CPU_IDLE = 0.5
_CPU_BUSY = 0.8


class Pacing:
    """The fetch interval and linger for this node's load, updated by `run`.

    Example::

        pacing = Pacing(5, 20, 2, 10, set_linger=publisher.set_linger)
        supervisor.start("pacing", pacing.run)
        await asyncio.sleep(pacing.fetch_interval_s)  # between two fetches
    """

    def __init__(
        self,
        fetch_interval_ms: float,
        fetch_interval_max_ms: float,
        linger_ms: float,
        linger_max_ms: float,
        set_linger: Callable[[float], None],
        busy_lag_ms: float = 3.0,
    ) -> None:
        self._fetch = (fetch_interval_ms, max(fetch_interval_ms, fetch_interval_max_ms))
        self._linger = (linger_ms, max(linger_ms, linger_max_ms))
        self._set_linger = set_linger
        self._busy_lag_ms = busy_lag_ms
        #: How late the loop runs timers, smoothed (ms).
        self.lag_ms = 0.0
        #: The share of one core the process uses, smoothed.
        self.cpu = 0.0
        #: 0 (idle: the configured waits) to 1 (busy: the maxima).
        self.load = 0.0
        self.fetch_interval_s = fetch_interval_ms / 1000
        self.linger_ms = linger_ms
        #: Records read from Kafka, and handed to the producer, since the last sample: the
        #: consume loop counts them here, the producer's every record (`handed`).
        self.read = 0
        self.sent = 0
        self._rates = (0.0, 0.0)

    @property
    def adaptive(self) -> bool:
        """False when the maxima equal the configured waits: nothing to run."""
        return self._fetch[0] != self._fetch[1] or self._linger[0] != self._linger[1]

    @property
    def widened_s(self) -> float:
        """How far the load widened the linger past its configured value, in seconds: 0 on
        an idle node. Other requests that gather callers wait this too (`Watermarks`)."""
        return (self.linger_ms - self._linger[0]) / 1000

    def handed(self, records: int) -> None:
        """Records were handed to the producer: events, and the session store's (a mass
        reconnect's claims and session records gather in a busy node's linger too)."""
        self.sent += records

    async def run(self) -> None:
        """Sample the loop's lateness and the process's CPU forever (run it under a
        `Supervisor`)."""
        loop = asyncio.get_running_loop()
        while True:
            began, used = loop.time(), time.process_time()
            await asyncio.sleep(_TICK_S)
            elapsed = loop.time() - began
            cpu = (time.process_time() - used) / elapsed
            self.observe((elapsed - _TICK_S) * 1000, elapsed, cpu)

    def observe(self, late_ms: float, elapsed_s: float = _TICK_S, cpu: float = 0.0) -> None:
        """Take one sample: how late a timer ran, the share of a core the process used, and
        the records counted in ``elapsed_s``; set the waits for them."""
        self.lag_ms += _WEIGHT * (max(0.0, late_ms) - self.lag_ms)
        self.cpu += _WEIGHT * (cpu - self.cpu)
        by_lag = (self.lag_ms - _ON_TIME_MS) / (self._busy_lag_ms - _ON_TIME_MS)
        by_cpu = (self.cpu - _CPU_IDLE) / (_CPU_BUSY - _CPU_IDLE)
        self.load = min(1.0, max(0.0, by_lag, by_cpu))
        read_rate, sent_rate = self._rates
        read_rate += _WEIGHT * (self.read / elapsed_s - read_rate)
        sent_rate += _WEIGHT * (self.sent / elapsed_s - sent_rate)
        self._rates, self.read, self.sent = (read_rate, sent_rate), 0, 0
        ramp = self.load * self.load
        self.fetch_interval_s = _wait(self._fetch, ramp, read_rate) / 1000
        linger = _wait(self._linger, ramp, sent_rate)
        if abs(linger - self.linger_ms) >= _LINGER_STEP_MS or (
            linger != self.linger_ms and linger in self._linger
        ):
            self.linger_ms = linger
            self._set_linger(linger)


def _wait(bounds: tuple[float, float], ramp: float, rate: float) -> float:
    """A wait between its ``bounds`` (ms): as far towards the maximum as ``ramp`` says,
    and as the records at ``rate`` a second that the longest wait would gather allow; not
    widened at all while what it adds would not gather one more record."""
    low, high = bounds
    widened = ramp * _gathering(rate * high / 1000) * (high - low)
    return low + widened if rate * widened >= 1000 else low


def _gathering(records: float) -> float:
    """0 to 1: how far a wait that would gather ``records`` may widen."""
    return min(1.0, max(0.0, (records - _SPARSE) / (_DENSE - _SPARSE)))
