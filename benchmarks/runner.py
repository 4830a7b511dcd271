"""One run: every workload on every contestant, one contestant at a time, on this machine.

Every service is started here and stopped here, failure and Ctrl-C included: brokers in a
scratch data dir, nodes and load generators as child processes.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from .contestants import Contestant
from .cpu import await_quiet
from .loadgen import Json
from .services import BROKERS, BenchmarkError, Brokers, Cluster, free_port
from .speed import SpeedProbe
from .workloads import Plan, Target, probe, steps, warm_up

__all__ = ["NODES", "launch", "run"]

NODES = 3
# Idle nodes and broker stay under this; more means other work shares the machine.
_QUIET_CORES = 0.4


def run(plan: Plan, contestants: Sequence[Contestant], doc: Json) -> None:
    """Run ``plan`` on each contestant; results, errors and broker versions go into ``doc``."""
    total = sum(len(steps(plan, c.recovers)) for c in contestants)
    with (
        tempfile.TemporaryDirectory(prefix="socketio-kafka-bench-") as scratch,
        contextlib.ExitStack() as stack,
        tqdm(total=total, desc="benchmarks", unit="run", dynamic_ncols=True) as overall,
    ):
        brokers = Brokers(Path(scratch))
        stack.callback(brokers.close)
        for index, contestant in enumerate(contestants):
            # A broker no later contestant needs stops now: it would only take CPU.
            needed = {c.broker for c in contestants[index:]}
            for broker in BROKERS:
                if broker not in needed:
                    brokers.stop(broker)
            log_dir = Path(scratch) / contestant.name
            log_dir.mkdir()
            speeds = doc["speeds"].setdefault(contestant.name, [])
            doc["contestants"][contestant.name] = _run_contestant(
                contestant, plan, brokers, log_dir, overall, f"bench-{doc['run_id']}", speeds
            )
            doc["versions"][contestant.broker] = brokers.version(contestant.broker)


def launch(cluster: Cluster, contestant: Contestant, brokers: Brokers, channel: str) -> Target:
    """Start ``contestant``'s `NODES` nodes in ``cluster`` on its broker, and return them
    once an event published on any reaches the others (`probe`)."""
    url = brokers.url(contestant.broker)
    ports = [free_port() for _ in range(NODES)]
    cluster.start([(port, contestant.command(port, url, channel)) for port in ports])
    log = cluster.log_dir / "loadgen.log"
    target = Target(cluster.urls, cluster.pids, brokers.pid(contestant.broker), log)
    try:
        probe(target)
    except BenchmarkError as exc:
        raise BenchmarkError(f"{exc}\n{cluster.log_tails()}") from exc
    return target


def _run_contestant(
    contestant: Contestant,
    plan: Plan,
    brokers: Brokers,
    log_dir: Path,
    overall: tqdm[object],
    channel: str,
    speeds: list[float],
) -> Json:
    entry: Json = {
        "title": contestant.title,
        "broker": contestant.broker,
        "recovers": contestant.recovers,
        "nodes": NODES,
        "results": {},
        "errors": [],
    }
    planned = steps(plan, contestant.recovers)
    attempted = 0
    cluster = Cluster(log_dir)
    try:
        overall.set_description(f"{contestant.name}: starting")
        target = launch(cluster, contestant, brokers, f"{channel}-{contestant.name}")
        overall.set_description(f"{contestant.name}: warming up")
        entry["warm_up_broker_cpu_s"] = warm_up(plan, target)
        entry["quiet_wait_s"] = None
        if plan.mode == "full":  # worth a quiet machine; a quick run only checks
            overall.set_description(f"{contestant.name}: waiting for a quiet machine")
            entry["quiet_wait_s"] = await_quiet(cores=_QUIET_CORES)
        for step in planned:
            attempted += 1
            overall.set_description(f"{contestant.name}: {step.label}")
            try:
                with SpeedProbe() as pace:
                    result = step.run(target)
                speeds += pace.speeds
                result["core_speed"] = pace.median
                entry["results"].setdefault(step.workload, []).append(result)
            except BenchmarkError as exc:
                entry["errors"].append(f"{step.label}: {exc}")
                tqdm.write(f"{contestant.name}: {step.label} failed: {exc}")
            overall.update()
    except BenchmarkError as exc:
        entry["errors"].append(f"start: {exc}")
        tqdm.write(f"{contestant.name} could not start: {exc}")
    finally:
        cluster.stop()
    overall.update(len(planned) - attempted)  # what a failed start left undone
    return entry
