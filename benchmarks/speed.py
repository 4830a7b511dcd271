"""How fast one core of this machine runs Python right now: a slow host told from a slow
contestant.

A VM's cores can slow down with nothing inside the VM to show it. Session 33's first full
run spent 1.5-1.8x the CPU a delivery of a run 25 minutes later on the same code, with other
processes near idle and no steal; in session 34 the same pure-Python loop took 2.4 to 3.2 s
minutes apart on an idle machine. Every figure the benchmarks compare (CPU per delivery,
the plateau, the latencies under load) scales with it, and it moved from 17 to 28 in half
a minute: so it is sampled all through each step (`SpeedProbe`, 1% of a core) and the
summary says how far it moved during the run. Sampled under the step's load, it reads the
host and that load's share of the core's caches together: an idle machine moved as much.
Waiting before each step for the fast speed was tried and dropped (`docs/decisions.md`,
session 34): the host changed speed within steps as often.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType

__all__ = ["COLUMN", "SKEWED", "SpeedProbe", "core_speed", "speed_summary", "spread"]

_STEPS = 100_000  # about 10 ms of the loop on the benchmark machine
# Slowest over fastest below this: ratios between figures measured at different moments
# of the run may be off by as much (the summary says so).
SKEWED = 0.85
#: The tables' column of a step's speed (its `SpeedProbe.median`): compare rows of about
#: the same.
COLUMN = "host speed"


def core_speed(samples: int = 5) -> float:
    """Million steps a second of a fixed pure-Python loop, per second of this thread's own
    CPU time (so that other processes in the VM do not count, a slower host does): the
    median of ``samples`` runs of about 10 ms."""
    rates = []
    for _ in range(samples):
        start = time.thread_time()
        _loop(_STEPS)
        rates.append(_STEPS / (time.thread_time() - start) / 1e6)
    return round(statistics.median(rates), 2)


def _loop(steps: int) -> int:
    total = 0
    for step in range(steps):
        total += step
    return total


class SpeedProbe:
    """`core_speed` of one sample every ``every_s`` on a thread of its own, from ``with``
    to its end (and once at the start, so that a short step has one)."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.speeds: list[float] = []
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="speed-probe", daemon=True)

    def __enter__(self) -> SpeedProbe:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def median(self) -> float:
        """The step's speed: the median of its samples (there is always one)."""
        return round(statistics.median(self.speeds), 1)

    def _sample(self) -> None:
        while True:
            self.speeds.append(core_speed(samples=1))
            if self._stop.wait(self._every_s):
                return


def spread(speeds: Iterable[float]) -> float | None:
    """The slowest speed over the fastest (1.0: steady), or None without any."""
    values = list(speeds)
    return round(min(values) / max(values), 2) if values else None


def speed_summary(speeds: Mapping[str, Sequence[float]]) -> str:
    """One paragraph for the run's summary: each part's speed range and the run's spread."""
    parts = [
        f"`{name}` {min(values):.1f}-{max(values):.1f}" for name, values in speeds.items() if values
    ]
    ratio = spread(v for values in speeds.values() for v in values)
    if ratio is None:
        return "No speed was measured."
    text = (
        "Machine speed during each part (million steps a second of a fixed Python loop on "
        f"one core, sampled every half second): {', '.join(parts)}; slowest {ratio:.2f}x the"
        " fastest."
    )
    if ratio < SKEWED:
        text += (
            " **The host's speed moved during this run: figures measured at different speeds"
            " (and ratios between them) are skewed by up to that much.**"
        )
    return text
