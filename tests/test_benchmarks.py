"""``python -m benchmarks --quick`` runs end to end and writes a sane JSON: CI's exercise of
the harness (it asserts no speed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tqdm", reason="the benchmarks need the bench extra: pip install -e '.[bench]'")
pytest.importorskip("matplotlib", reason="the benchmarks need the bench extra")

REPO = Path(__file__).resolve().parents[1]
EXPECTED = {"kafka", "kafka-low-latency", "redis", "node-redis", "node-redis-streams"}
PLOTS = {"latency_cdf.png", "saturation.png", "fanout.png", "recovery.png", "disconnect.png"}


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.timeout(900)
def test_quick_run_writes_sane_results(tmp_path: Path) -> None:
    if not (REPO / "benchmarks" / "peers" / "node_modules").is_dir():
        pytest.fail("Node peers missing: npm ci --prefix benchmarks/peers")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    [path] = tmp_path.glob("*.json")
    doc = json.loads(path.read_text())

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
        _check_results(name, entry["results"], entry["recovers"])
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


def _check_results(name: str, results: dict[str, Any], recovers: bool) -> None:
    for result in results["latency"]:
        assert result["delivered"] > 0, name
        for key in ("p50_ms", "p99_ms", "max_ms"):
            value = result["latency"][key]
            assert math.isfinite(value), (name, result["rate"], key)
            assert value > 0, (name, result["rate"], key)
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
