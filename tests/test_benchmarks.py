"""``python -m benchmarks --quick`` runs end to end and writes a sane JSON: CI's exercise of
the harness (it asserts no speed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from benchmarks.workloads import Plan

pytest.importorskip("tqdm", reason="the benchmarks need the bench extra: pip install -e '.[bench]'")
pytest.importorskip("matplotlib", reason="the benchmarks need the bench extra")

REPO = Path(__file__).resolve().parents[1]
EXPECTED = {"kafka", "kafka-low-latency", "redis", "node-redis", "node-redis-streams"}
PLOTS = {"latency_cdf.png", "saturation.png", "fanout.png", "recovery.png", "disconnect.png"}


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.timeout(1080)
def test_quick_run_writes_sane_results(tmp_path: Path) -> None:
    from benchmarks.workloads import QUICK

    doc = _run_bench(["-m", "benchmarks", "--quick"], tmp_path, timeout=1020)

    assert doc["mode"] == "quick"
    assert doc["machine"]["cpu_count"] >= 1
    versions = doc["versions"]
    for name in ("kafka", "redis", "node"):
        assert versions[name], name
    assert "socket.io" in versions["npm_packages"]
    assert "python-socketio" in versions["python_packages"]
    assert set(doc["contestants"]) >= EXPECTED
    for name, entry in doc["contestants"].items():
        assert entry["errors"] == [], name
        _check_results(name, entry["results"], entry["recovers"], QUICK)
    assert {p.name for p in (tmp_path / doc["run_id"]).iterdir()} == PLOTS
    summary = (tmp_path / f"{doc['run_id']}.md").read_text()
    assert summary.startswith("# Benchmark run")
    # Kafka alone, the floor under our latency: every record reached all three consumers.
    floor = doc["kafka_floor"]
    assert len(floor) >= 2
    for row in floor:
        assert row["received"] == row["sent"] > 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"], row
    assert "## Kafka alone" in summary
    _check_scale(doc["scale"])
    assert "## Recovery at scale" in summary
    # The host's speed, sampled through every part of the run (benchmarks/speed.py).
    from benchmarks.__main__ import FLOOR, SCALE

    assert set(doc["speeds"]) == set(doc["contestants"]) | {FLOOR, SCALE}
    for part, speeds in doc["speeds"].items():
        assert speeds, part
        assert all(speed > 0 for speed in speeds), part
    assert "Machine speed during each part" in summary
    # Beside each latency, saturation and busy-topic figure.
    assert summary.count("| host speed |") == 3


def _check_scale(scale: dict[str, Any]) -> None:
    """Recovery at scale (issue 10): what each part did, never how fast."""
    from benchmarks.scale import MASS_RECOVERIES  # needs the bench extra: imported once it is

    assert scale["errors"] == []
    assert [b["partitions"] for b in scale["busy_topic"]] == [48, 6]
    for busy in scale["busy_topic"]:
        assert busy["replay_records_decoded"] == busy["own"], busy  # its own, in order
        assert busy["cpu_ms_per_1000_irrelevant"] > 0, busy
        assert busy["cpu_ms_per_1000_delivered"] > 0, busy
    for name in MASS_RECOVERIES:
        mass = scale[name]
        assert mass["client"] == "js"
        assert mass["recovered_all"] == mass["clients"] > 0
        for who in (mass, mass["lone"], mass["warm_up"]):
            for key in ("lost", "duplicated", "out_of_order", "not_recovered"):
                assert who[key] == 0, (name, key, who)
        # With the history off, every replay reads Kafka; with it, the gap is in memory.
        assert (mass["replay_records_read"] > 0) == (mass["history_mb"] == 0), (name, mass)
    assert scale["memory"]["held_idle"] == scale["memory"]["connections"] > 0
    parts = [*scale["busy_topic"], *(scale[name] for name in MASS_RECOVERIES), scale["memory"]]
    assert all(part["core_speed"] > 0 for part in parts)  # the host's speed during each


def _check_results(name: str, results: dict[str, Any], recovers: bool, plan: Plan) -> None:
    # A run for each of the plan's rates and recovery sizes (only its smallest for a
    # contestant that loses sessions: it loses all of any size).
    assert [r["rate"] for r in results["latency"]] == list(plan.latency_rates), name
    missed = plan.recovery_missed if recovers else plan.recovery_missed[:1]
    assert [r["missed"] for r in results["recovery"]] == list(missed), name
    for result in results["latency"]:
        assert result["delivered"] > 0, name
        assert result["latency"]["count"] > 0, (name, result["rate"])
        for key in ("p50_ms", "p99_ms", "max_ms"):
            value = result["latency"][key]
            assert math.isfinite(value), (name, result["rate"], key)
            assert value > 0, (name, result["rate"], key)
        # Over time, every latency once, by when it was sent.
        timeline = result["timeline"]
        assert timeline, (name, result["rate"])
        assert sum(b["count"] for b in timeline) == result["latency"]["count"], name
        for bucket in timeline:
            if bucket["count"]:
                assert 0 < bucket["p50_ms"] <= bucket["p99_ms"] <= bucket["max_ms"], bucket
    [saturation] = results["saturation"]
    assert saturation["plateau_deliveries_per_s"] > 0, name
    assert saturation["server_cpu_s_per_1k"] > 0, name
    [fanout] = results["fanout"]
    assert all(r["delivered"] == fanout["sockets"] for r in fanout["rounds"]), name
    for recovery in results["recovery"]:
        if recovers:
            assert recovery["recovered"], name
            assert recovery["distinct"] > 0, name
        else:
            assert not recovery["recovered"], name
    [disconnect] = results["disconnect"]
    assert disconnect["distinct"] > 0, name  # nobody loses everything
    assert disconnect["witness"]["lost"] == 0, name
    for workload, runs in results.items():
        assert all(run["core_speed"] > 0 for run in runs), (name, workload)


def test_the_probe_samples_the_cores_speed_all_through_a_step() -> None:
    from benchmarks.speed import SpeedProbe

    with SpeedProbe(every_s=0.01) as probe:
        deadline = time.monotonic() + 10
        while len(probe.speeds) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)  # the step: the probe samples meanwhile, on its own thread
    sampled = len(probe.speeds)
    assert sampled >= 5
    assert all(0 < speed < 1000 for speed in probe.speeds), probe.speeds
    time.sleep(0.05)
    assert len(probe.speeds) == sampled  # and stops with the step


def test_the_summary_says_when_the_hosts_speed_moved_during_a_run() -> None:
    from benchmarks.speed import speed_summary

    steady = speed_summary({"kafka": [20.0, 19.5], "redis": [19.8]})
    assert "`kafka` 19.5-20.0, `redis` 19.8-19.8; slowest 0.97x the fastest." in steady
    assert "skewed" not in steady
    moved = speed_summary({"kafka": [28.0, 27.0], "redis": [17.0, 18.0]})
    assert "slowest 0.61x the fastest" in moved
    assert "skewed by up to that much" in moved


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.timeout(600)
def test_a_paired_run_measures_every_goal_on_both_sides_in_each_round(tmp_path: Path) -> None:
    from benchmarks.paired import FLOOR, GOALS

    argv = ["-m", "benchmarks.paired", "--quick", "--rounds", "1"]
    doc = _run_bench(argv, tmp_path, timeout=560)
    assert doc["command"][1:] == [*argv, "--out", str(tmp_path)]
    [measured] = doc["rounds"]
    for goal in GOALS:
        for name in filter(None, (goal.ours, goal.peer)):
            figure = measured[goal.workload][name]
            assert figure["value"] > 0, (goal.name, name, figure)
            assert figure["speed"] > 0, (goal.name, name, figure)
    assert FLOOR in measured["latency 1000/s"]
    summary = (tmp_path / f"{doc['run_id']}.md").read_text()
    assert all(f"| {goal.name} |" in summary for goal in GOALS), summary


def test_a_paired_goal_is_judged_round_by_round_with_its_speeds() -> None:
    from benchmarks.paired import GOALS, judged

    by_name = {goal.name: goal for goal in GOALS}
    saturation = by_name["saturation at least 0.5x node-redis"]
    rounds = [
        {"saturation": {"kafka-recovery": {"value": 60.0, "speed": 27.0},
                        "node-redis": {"value": 100.0, "speed": 26.0}}},
        {"saturation": {"kafka-recovery": {"value": 40.0, "speed": 18.0},
                        "node-redis": {"value": 100.0, "speed": 27.0}}},
    ]  # fmt: skip
    assert judged(saturation, rounds) == [
        {"value": 0.6, "met": True, "speeds": [27.0, 26.0], "same_speed": True},
        {"value": 0.4, "met": False, "speeds": [18.0, 27.0], "same_speed": False},
    ]
    p99 = by_name["p99 at 5,000/s x 10 under 25 ms"]  # a bound, no peer
    rounds = [{"latency 5000/s": {"kafka-recovery": {"value": v, "speed": 20.0}}} for v in (13, 31)]
    assert [r["met"] for r in judged(p99, rounds)] == [True, False]


_PACE = """
import {{ pace }} from {module};
let open = false;
const opening = setTimeout(() => {{ open = true; }}, {opens_after_ms});
try {{
  const run = await pace({{
    rate: 1000, seconds: Infinity, count: 20, send: () => {{}},
    headroom: () => (open ? Infinity : 0), stallSeconds: 0.3,
  }});
  console.log(JSON.stringify({{ sent: run.sent }}));
}} catch (error) {{
  console.log(JSON.stringify({{ error: error.message }}));
}}
clearTimeout(opening);
"""


@pytest.mark.parametrize("opens_after_ms", [100, 60_000])
def test_the_load_generator_gives_up_on_a_stalled_receiver(opens_after_ms: int) -> None:
    """A workload paced by its receivers (the recovery's witness) fails when they stop
    taking events instead of waiting without end, and one that only slows down goes on."""
    _require_peers()
    module = json.dumps((REPO / "benchmarks/peers/loadgen/publisher.js").as_uri())
    script = _PACE.format(module=module, opens_after_ms=opens_after_ms)
    done = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    outcome = json.loads(done.stdout.splitlines()[-1])
    if opens_after_ms < 300:
        assert outcome == {"sent": 20}
    else:
        assert "no headroom for 0.3 s after 0 events" in outcome["error"]


def _run_bench(argv: list[str], out: Path, timeout: float) -> dict[str, Any]:
    """Run a benchmark module writing to ``out``; the one JSON document it wrote."""
    _require_peers()
    done = subprocess.run(
        [sys.executable, *argv, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    [path] = out.glob("*.json")
    return dict(json.loads(path.read_text()))


def _require_peers() -> None:
    if not (REPO / "benchmarks" / "peers" / "node_modules").is_dir():
        pytest.fail("Node peers missing: npm ci --prefix benchmarks/peers")
