"""The workloads of issue 4, their sizes in quick and full mode, and the figures each yields."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from .cpu import MACHINE, CpuSample, Usage
from .loadgen import Json, run_loadgen
from .warmup import until_settled

__all__ = [
    "FULL",
    "QUICK",
    "Plan",
    "Step",
    "Target",
    "latency_run",
    "probe",
    "saturation_run",
    "steps",
    "warm_up",
]

Mode = Literal["quick", "full"]


@dataclass(frozen=True, slots=True)
class Plan:
    """How big each workload is."""

    mode: Mode
    receivers: int  # latency and saturation: sockets in the room, on nodes 2 and 3
    latency_rates: tuple[int, ...]  # events/s
    latency_s: float
    warmup_s: float  # latencies of the first events are not counted
    saturation_rates: tuple[int, ...]  # offered events/s, one step each, until the plateau
    step_s: float
    window: int  # events published but not yet delivered to every receiver
    fanout_sockets: int
    fanout_rounds: int
    recovery_missed: tuple[int, ...]
    disconnect_rate: int
    disconnect_phases_s: tuple[float, float, float]  # streaming before, away, after
    floor_rate: int  # Kafka alone (benchmarks/floor.py): records/s, and seconds per setting
    floor_s: float
    warm_up_passes: int  # at most, until the broker's CPU settles (benchmarks/warmup.py)

    def as_json(self) -> Json:
        return asdict(self)


QUICK = Plan(
    mode="quick",
    receivers=4,
    latency_rates=(100, 1_000, 5_000),
    latency_s=2.0,
    warmup_s=0.5,
    saturation_rates=(1_000, 2_000, 4_000, 8_000),
    step_s=1.5,
    window=500,
    fanout_sockets=150,
    fanout_rounds=3,
    recovery_missed=(500,),
    disconnect_rate=200,
    disconnect_phases_s=(1.0, 1.0, 1.0),
    floor_rate=200,
    floor_s=1.0,
    warm_up_passes=1,
)

FULL = Plan(
    mode="full",
    receivers=10,
    latency_rates=(100, 1_000, 5_000),
    latency_s=10.0,
    warmup_s=1.0,
    saturation_rates=tuple(1_000 * 2**k for k in range(8)),
    step_s=3.0,
    window=1_000,
    fanout_sockets=3_000,
    fanout_rounds=5,
    recovery_missed=(1_000, 10_000, 100_000),
    disconnect_rate=500,
    disconnect_phases_s=(3.0, 5.0, 3.0),
    floor_rate=1_000,
    floor_s=8.0,
    warm_up_passes=12,
)


@dataclass(frozen=True, slots=True)
class Target:
    """A running contestant: its node URLs (node 1, 2, 3) and the pids its CPU is read from."""

    urls: Sequence[str]
    nodes: Sequence[int]
    broker: int
    log: Path  # the load generator's stderr

    @property
    def groups(self) -> Mapping[str, Sequence[int]]:
        return {"nodes": self.nodes, "broker": [self.broker]}


@dataclass(frozen=True, slots=True)
class Step:
    """One run of the load generator: ``workload`` names the list its result goes to."""

    workload: str
    label: str
    run: Callable[[Target], Json]


def steps(plan: Plan, recovers: bool) -> list[Step]:
    """Every run, in order, for a contestant (one that loses sessions is shown the smallest
    recovery size only: it loses all of any size)."""
    missed = plan.recovery_missed if recovers else plan.recovery_missed[:1]
    return [
        *(
            Step("latency", f"latency {rate}/s", latency_run(plan, rate))
            for rate in plan.latency_rates
        ),
        Step("saturation", "saturation", saturation_run(plan)),
        Step("fanout", f"fan-out to {plan.fanout_sockets}", _fanout(plan)),
        *(Step("recovery", f"recovery of {n}", _recovery(n)) for n in missed),
        Step("disconnect", "loss under a disconnect", _disconnect(plan)),
    ]


_WARM_UP_RATE = 1_000  # events/s: every contestant takes it without queueing


def warm_up(plan: Plan, target: Target) -> list[float]:
    """Load the contestant as its first measured step will until its broker's CPU
    settles (`benchmarks/warmup.py`), and forget the results; each pass's broker CPU.

    A broker just started runs its first seconds of traffic interpreted: a fresh Kafka JVM
    spent 0.8 cores on 100 events/s in the first step measured, 0.2 once warm. Whichever
    contestant came first paid it, and its CPU and latency read as its own. One pass of
    10 s was not enough: the first measured rates of session 17 still found the broker
    compiling (0.52 cores at 1,000 events/s, 0.21 a pass later).
    """

    def run() -> float:
        cpu = latency_run(plan, _WARM_UP_RATE)(target)["cpu"]
        return float(cpu["broker_cpu_s"]) if cpu else 0.0

    return until_settled(run, plan.warm_up_passes)


def probe(target: Target) -> None:
    """Wait until an event published on any node reaches the other two (the cluster is one)."""
    spec = {"workload": "probe", "urls": list(target.urls), "room": _room("probe")}
    _run(target, {**spec, "timeout_s": 60}, "probe", 90)


def _room(workload: str) -> str:
    return f"{workload}-{uuid.uuid4().hex[:8]}"


def _run(target: Target, spec: Json, label: str, timeout: float) -> tuple[Json, Json]:
    """The load generator's result, and the CPU used between each ``x-start``/``x-end`` or
    ``start``/``end`` pair of its marks."""
    spec = {"urls": list(target.urls), "room": _room(spec["workload"]), **spec}
    run = run_loadgen(spec, groups=target.groups, label=label, log=target.log, timeout=timeout)
    return run.result, _usages(run.marks)


def _usages(marks: Mapping[str, CpuSample]) -> Json:
    """CPU between ``start`` and ``end`` (as "run") and each ``step-N-start``/``-end`` pair."""
    usages: Json = {}
    for name, start in marks.items():
        prefix = name.removesuffix("start")
        end = marks.get(prefix + "end") if prefix != name else None
        if end is not None:
            usages[prefix.removesuffix("-") or "run"] = _cpu(Usage.between(start, end))
    return usages


def _cpu(usage: Usage) -> Json:
    server = usage.cpu_s["nodes"] + usage.cpu_s["broker"]
    # Whatever else ran on the machine meanwhile: a reader can tell a quiet run from a noisy one.
    others = usage.cpu_s[MACHINE] - server - usage.cpu_s["loadgen"]
    return {
        "wall_s": round(usage.wall_s, 3),
        "nodes_cpu_s": round(usage.cpu_s["nodes"], 2),
        "broker_cpu_s": round(usage.cpu_s["broker"], 2),
        "server_cpu_s": round(server, 2),
        "loadgen_cpu_s": round(usage.cpu_s["loadgen"], 2),
        "server_cores": round(server / usage.wall_s, 2) if usage.wall_s else 0.0,
        "loadgen_cores": round(usage.share("loadgen"), 2),
        "other_cores": round(max(0.0, others) / usage.wall_s, 2) if usage.wall_s else 0.0,
    }


def latency_run(plan: Plan, rate: int) -> Callable[[Target], Json]:
    def run(target: Target) -> Json:
        spec = {
            "workload": "latency",
            "rate": rate,
            "duration_s": plan.latency_s,
            "warmup_s": plan.warmup_s,
            "receivers": plan.receivers,
            "drain_s": 15,
        }
        result, usages = _run(target, spec, f"latency {rate}/s", plan.latency_s + 90)
        return {**result, "cpu": usages.get("run")}

    return run


def saturation_run(plan: Plan) -> Callable[[Target], Json]:
    def run(target: Target) -> Json:
        spec = {
            "workload": "saturation",
            "rates": list(plan.saturation_rates),
            "step_s": plan.step_s,
            "window": plan.window,
            "receivers": plan.receivers,
            "drain_s": 30,
        }
        timeout = len(plan.saturation_rates) * plan.step_s + 120
        result, usages = _run(target, spec, "saturation", timeout)
        for step in result["steps"]:
            step["cpu"] = usages[f"step-{step['index']}"]
        return {**result, **_plateau(result["steps"])}

    return run


def _plateau(steps: Sequence[Json]) -> Json:
    """The step that delivered most per second, and its CPU per 1,000 deliveries."""
    best = max(steps, key=lambda step: step["deliveries_per_s"])
    thousands = best["deliveries"] / 1000
    cpu = best["cpu"]
    return {
        "plateau_deliveries_per_s": round(best["deliveries_per_s"]),
        "plateau_events_per_s": round(best["published"] / best["seconds"]),
        "server_cpu_s_per_1k": round(cpu["server_cpu_s"] / thousands, 4) if thousands else None,
        "loadgen_cpu_s_per_1k": round(cpu["loadgen_cpu_s"] / thousands, 4) if thousands else None,
        "plateau_step": best["index"],
    }


def _fanout(plan: Plan) -> Callable[[Target], Json]:
    def run(target: Target) -> Json:
        spec = {
            "workload": "fanout",
            "sockets": plan.fanout_sockets,
            "rounds": plan.fanout_rounds,
            "workers": 2,
            "round_timeout_s": 60,
        }
        timeout = plan.fanout_sockets / 10 + plan.fanout_rounds * 60 + 60
        result, usages = _run(target, spec, f"fan-out to {plan.fanout_sockets}", timeout)
        return {**result, "cpu": usages.get("run")}

    return run


def _recovery(missed: int) -> Callable[[Target], Json]:
    def run(target: Target) -> Json:
        timeout_s = 60 + missed / 500
        spec = {"workload": "recovery", "missed": missed, "window": 1_000, "timeout_s": timeout_s}
        result, _ = _run(target, spec, f"recovery of {missed}", 4 * timeout_s + 60)
        return result

    return run


def _disconnect(plan: Plan) -> Callable[[Target], Json]:
    def run(target: Target) -> Json:
        before, gap, after = plan.disconnect_phases_s
        spec = {
            "workload": "disconnect",
            "rate": plan.disconnect_rate,
            "before_s": before,
            "gap_s": gap,
            "after_s": after,
        }
        result, _ = _run(target, spec, "loss under a disconnect", before + gap + after + 120)
        return result

    return run
