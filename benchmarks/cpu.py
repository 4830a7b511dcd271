"""CPU seconds of processes, read from /proc: the machine-independent cost of a workload."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MACHINE",
    "CpuSample",
    "Usage",
    "await_quiet",
    "cpu_seconds",
    "machine_cpu_seconds",
    "sample",
]

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
MACHINE = "machine"  # the group every sample also has: busy CPU of the whole machine


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far, all its threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name (which may hold spaces): state is the first, then
    # utime and stime are the 12th and 13th.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (every core, every process)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS_PER_SECOND


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds per group of processes at one moment (``at``: monotonic seconds)."""

    at: float
    groups: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Usage:
    """What a group of processes used between two samples."""

    wall_s: float
    cpu_s: Mapping[str, float]

    def share(self, group: str) -> float:
        """CPU seconds per wall second: 1.0 is one core busy."""
        return self.cpu_s[group] / self.wall_s if self.wall_s > 0 else 0.0

    @classmethod
    def between(cls, start: CpuSample, end: CpuSample) -> Usage:
        return cls(end.at - start.at, {g: end.groups[g] - start.groups[g] for g in start.groups})


def sample(groups: Mapping[str, Sequence[int]]) -> CpuSample:
    """CPU seconds of each named group of pids, and of the machine (`MACHINE`), now."""
    at = time.monotonic()
    seconds = {name: sum(map(cpu_seconds, pids)) for name, pids in groups.items()}
    return CpuSample(at, {**seconds, MACHINE: machine_cpu_seconds()})


def await_quiet(cores: float, window_s: float = 3.0, timeout_s: float = 180.0) -> float:
    """Wait until the whole machine stays under ``cores`` busy for ``window_s`` (other work on
    a shared machine would skew the figures); return how long that took, or -1.0 if it never
    got that quiet within ``timeout_s`` (the run goes on, and every figure shows the noise)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        before = machine_cpu_seconds()
        time.sleep(window_s)  # the measuring window itself, not a wait for luck
        if (machine_cpu_seconds() - before) / window_s < cores:
            return round(time.monotonic() - start, 1)
    return -1.0
