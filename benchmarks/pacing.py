"""Fixed waits against waits that follow the load (`adapter/pacing.py`), in one run.

Each round starts 3 gateway nodes (recovery on) per setting on one local Kafka, in turn, and
runs the benchmark's own latency workload at each ``--rates`` (10 receivers on nodes 2 and
3, as ``python -m benchmarks``) and its saturation steps. Settings are interleaved round by
round, so a machine whose speed drifts shows it in both::

    python -m benchmarks.pacing --rounds 2 --rates 100,300,600
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from .contestants import CONTESTANTS
from .cpu import await_quiet
from .services import Brokers, Cluster, free_port
from .workloads import FULL, Target, latency_run, probe, saturation_run, warm_up

#: The waits before pacing (session 12's idle waits, at every load), the idle linger before
#: session 16 (paced), and the defaults.
SETTINGS = {
    "fixed": ("--linger-ms", "2", "--linger-max-ms", "2", "--fetch-interval-max-ms", "5"),
    "linger-2": ("--linger-ms", "2"),
    "paced": (),
}


def measure(
    brokers: Brokers, flags: tuple[str, ...], rates: list[int], log_dir: Path
) -> dict[str, object]:
    """One setting's figures: p50/p99 and CPU per rate, and the saturation plateau."""
    (recovering,) = (c for c in CONTESTANTS if c.name == "kafka-recovery")
    contestant = replace(recovering, flags=recovering.flags + flags)
    url = brokers.url("kafka")
    cluster = Cluster(log_dir)
    channel = f"pacing-{time.time_ns()}"  # one for all 3 nodes: they are one cluster
    ports = [free_port() for _ in range(3)]
    cluster.start([(port, contestant.command(port, url, channel)) for port in ports])
    try:
        target = Target(cluster.urls, cluster.pids, brokers.pid("kafka"), log_dir / "loadgen.log")
        probe(target)
        warm_up(FULL, target)
        await_quiet(cores=0.4)
        row: dict[str, object] = {}
        for rate in rates:
            result = latency_run(FULL, rate)(target)
            row[f"{rate}/s"] = {
                "p50_ms": result["latency"]["p50_ms"],
                "p99_ms": result["latency"]["p99_ms"],
                "nodes_cpu_s": result["cpu"]["nodes_cpu_s"],
                "broker_cpu_s": result["cpu"]["broker_cpu_s"],
            }
        plateau = saturation_run(FULL)(target)["plateau_deliveries_per_s"]
        row["saturation_deliveries_per_s"] = plateau
        return row
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pacing", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rates", default="100,300,1000", help="events/s, comma-separated")
    args = parser.parse_args(argv)
    rates = [int(rate) for rate in args.rates.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="socketio-kafka-pacing-"))
    brokers = Brokers(scratch)
    try:
        for round_ in range(args.rounds):
            for name, flags in SETTINGS.items():
                log_dir = scratch / f"{name}-{round_}"
                log_dir.mkdir()
                row = {"setting": name, "round": round_, **measure(brokers, flags, rates, log_dir)}
                print(json.dumps(row), flush=True)
    finally:
        brokers.close()
    print(json.dumps({"command": ["python", "-m", "benchmarks.pacing", *sys.argv[1:]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
