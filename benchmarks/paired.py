"""``python -m benchmarks.paired``: issue 10's live-path goals, each a ratio of two figures
measured seconds apart, round after round.

The full run (``python -m benchmarks``) measures each contestant in a stretch of minutes of
its own. The benchmark VM switches between two speeds in stretches of seconds to a minute
(`benchmarks/speed.py`), and session 34 found ratios across contestants moving by up to 2x
with it. Here every contestant's cluster runs at once (idle between its steps) and each
round runs each workload on the contestants it compares, one after the other, the order
turning by one each round. A goal is judged on each round's pair, whose host speeds are
recorded beside it, and on the median of the rounds.

python -m benchmarks.paired                        # 5 rounds, the figures RESULTS.md quotes
python -m benchmarks.paired --quick --rounds 1     # CI: checks the harness, asserts no speed
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import floor, report
from .contestants import CONTESTANTS, Contestant
from .loadgen import Json
from .runner import launch
from .services import Brokers, Cluster
from .speed import SKEWED, SpeedProbe, spread
from .workloads import FULL, QUICK, Plan, Target, latency_run, saturation_run, warm_up

__all__ = ["FLOOR", "GOALS", "Goal", "judged", "main", "measure", "summary_markdown"]

#: Kafka alone (`benchmarks/floor.py`, record by record), run as one of the contestants.
FLOOR = "kafka-alone"
_OUT = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True, slots=True)
class Goal:
    """``ours``'s ``figure`` against ``peer``'s (None: against ``bound`` itself)."""

    name: str
    rate: int | None  # events/s of a latency step; None: the saturation step
    ours: str
    peer: str | None
    figure: str  # p50_ms, p99_ms or deliveries_per_s
    bound: float  # the ratio (or, without a peer, the figure) the goal allows
    at_most: bool  # True: the ratio must not exceed ``bound``; False: must reach it

    @property
    def workload(self) -> str:
        return "saturation" if self.rate is None else f"latency {self.rate}/s"


GOALS = (
    Goal("p50 at 1,000/s within 1.5x Kafka alone", 1_000,
         "kafka-low-latency", FLOOR, "p50_ms", 1.5, at_most=True),
    Goal("p99 at 5,000/s x 10 under 25 ms", 5_000,
         "kafka-recovery", None, "p99_ms", 25.0, at_most=True),
    Goal("saturation at least 0.5x node-redis", None,
         "kafka-recovery", "node-redis", "deliveries_per_s", 0.5, at_most=False),
    Goal("saturation at least 2.5x redis", None,
         "kafka-recovery", "redis", "deliveries_per_s", 2.5, at_most=False),
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paired", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    parser.add_argument("--rounds", type=int, default=5, help="default 5")
    parser.add_argument("--out", type=Path, default=_OUT, help=f"default: {_OUT}")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    chosen = {name for goal in GOALS for name in (goal.ours, goal.peer) if name != FLOOR}
    contestants = [c for c in CONTESTANTS if c.name in chosen]
    doc = report.new_document(plan, contestants, [])
    doc["command"] = [Path(sys.executable).name, "-m", "benchmarks.paired", *(argv or sys.argv[1:])]
    doc["run_id"] = doc["run_id"].replace(plan.mode, f"paired-{plan.mode}")
    started = time.monotonic()
    try:
        doc["rounds"] = measure(plan, contestants, args.rounds)
    finally:
        doc["duration_s"] = round(time.monotonic() - started, 1)
        path = report.write(doc, args.out)
        print(f"results: {path}", file=sys.stderr)
    summary = summary_markdown(doc)
    (args.out / f"{doc['run_id']}.md").write_text(summary)
    print(summary)
    return 0


def measure(plan: Plan, contestants: Sequence[Contestant], rounds: int) -> list[Json]:
    """Every goal's figures, ``rounds`` times: each round a dict of workload -> contestant
    -> {the figure's value, the step's host speed, its CPU}."""
    with tempfile.TemporaryDirectory(prefix="socketio-kafka-paired-") as scratch:
        brokers = Brokers(Path(scratch))
        try:
            with _clusters(plan, contestants, brokers, Path(scratch)) as targets:
                kafka = brokers.url("kafka").removeprefix("kafka://")
                runs = _runs(plan, targets, kafka, brokers.pid("kafka"))
                return [_round(runs, turn) for turn in range(rounds)]
        finally:
            brokers.close()


@contextlib.contextmanager
def _clusters(
    plan: Plan, contestants: Sequence[Contestant], brokers: Brokers, scratch: Path
) -> Iterator[dict[str, Target]]:
    """Each contestant's nodes, started, probed and warmed up (its broker's CPU settled)."""
    clusters: list[Cluster] = []
    try:
        targets = {}
        for contestant in contestants:
            log_dir = scratch / contestant.name
            log_dir.mkdir()
            cluster = Cluster(log_dir)
            clusters.append(cluster)
            channel = f"paired-{contestant.name}-{time.time_ns()}"
            target = launch(cluster, contestant, brokers, channel)
            warm_up(plan, target)
            targets[contestant.name] = target
        yield targets
    finally:
        for cluster in clusters:
            cluster.stop()


# One measurement: the figure it yields, and the CPU of its step (`workloads._cpu`;
# other processes' cores among it: the idle clusters of the other contestants).
Run = Callable[[], tuple[float, Json]]


def _runs(
    plan: Plan, targets: dict[str, Target], kafka: str, broker: int
) -> dict[str, dict[str, Run]]:
    """workload -> contestant -> what measures its figure there."""
    runs: dict[str, dict[str, Run]] = {}
    for goal in GOALS:
        for name in (goal.ours, goal.peer):
            if name is not None:
                runs.setdefault(goal.workload, {})[name] = _run_of(
                    plan, goal, name, targets, kafka, broker
                )
    return runs


def _run_of(
    plan: Plan, goal: Goal, name: str, targets: dict[str, Target], kafka: str, broker: int
) -> Run:
    rate = goal.rate
    if name == FLOOR and rate is not None:

        def alone() -> tuple[float, Json]:
            row = floor.record_by_record(kafka, broker, rate, plan.latency_s)
            return float(row["p50_ms"]), {k: row[k] for k in ("broker_cores", "consumer_cores")}

        return alone
    target = targets[name]
    if rate is None:
        saturate = saturation_run(plan)

        def plateau() -> tuple[float, Json]:
            result = saturate(target)
            [best] = [s for s in result["steps"] if s["index"] == result["plateau_step"]]
            return float(result["plateau_deliveries_per_s"]), best["cpu"]

        return plateau
    latency = latency_run(plan, rate)

    def percentile() -> tuple[float, Json]:
        result = latency(target)
        return float(result["latency"][goal.figure]), result["cpu"]

    return percentile


def _round(runs: dict[str, dict[str, Run]], turn: int) -> Json:
    measured: Json = {}
    for workload, by_name in runs.items():
        names = list(by_name)
        names = names[turn % len(names) :] + names[: turn % len(names)]
        for name in names:
            print(f"round {turn + 1}: {workload} on {name}", file=sys.stderr)
            with SpeedProbe() as pace:
                value, cpu = by_name[name]()
            measured.setdefault(workload, {})[name] = {
                "value": value,
                "speed": pace.median,
                "cpu": cpu,
            }
    return measured


# -- the verdict ------------------------------------------------------------------------


def judged(goal: Goal, rounds: Sequence[Json]) -> list[Json]:
    """Each round's figure (a ratio, with a peer), whether it meets the goal, and whether
    its two steps ran at about the same host speed."""
    rows = []
    for measured in rounds:
        ours = measured[goal.workload][goal.ours]
        peer = measured[goal.workload][goal.peer] if goal.peer else None
        value = ours["value"] / peer["value"] if peer else ours["value"]
        speeds = [ours["speed"], *([peer["speed"]] if peer else [])]
        rows.append(
            {
                "value": round(value, 3),
                "met": value <= goal.bound if goal.at_most else value >= goal.bound,
                "speeds": speeds,
                "same_speed": (spread(speeds) or 0) >= SKEWED,
            }
        )
    return rows


def summary_markdown(doc: Json) -> str:
    rounds = doc["rounds"]
    lines = [
        f"# Paired run `{doc['run_id']}`",
        "",
        f"{len(rounds)} rounds; each figure is followed by its steps' host speeds (million "
        "loop steps a second, `benchmarks/speed.py`); a pair whose slower step ran under "
        f"{SKEWED}x the faster one's speed is marked *.",
        "",
        f"Other processes (the idle clusters among them) used at most {_others(rounds)} "
        "cores in any step.",
        "",
        "| goal | each round | median | met in rounds |",
        "| --- | --- | --- | --- |",
    ]
    for goal in GOALS:
        rows = judged(goal, rounds)
        cells = ", ".join(
            f"{r['value']:.3g} ({'/'.join(f'{s:.0f}' for s in r['speeds'])})"
            + ("" if r["same_speed"] else "*")
            for r in rows
        )
        median = statistics.median(r["value"] for r in rows) if rows else float("nan")
        met = sum(r["met"] for r in rows)
        lines.append(f"| {goal.name} | {cells} | {median:.3g} | {met} of {len(rows)} |")
    return "\n".join(lines) + "\n"


def _others(rounds: Sequence[Json]) -> float:
    cores = [
        step.get("cpu", {}).get("other_cores", 0.0)
        for measured in rounds
        for by_name in measured.values()
        for step in by_name.values()
    ]
    return max(cores, default=0.0)


if __name__ == "__main__":
    sys.exit(main())
