"""The short CI forms of issue 8's by-hand runs (``benchmarks/outage.py`` and
``benchmarks/slow_consumer.py``): what they check of behaviour, never their speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(module: str, *args: str, timeout: float) -> tuple[int, Any]:
    """The run's exit code and the one JSON summary it printed."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    decoder, docs, text, at = json.JSONDecoder(), [], done.stdout, 0
    while (start := text.find("{", at)) != -1:
        doc, at = decoder.raw_decode(text, start)
        docs.append(doc)
    assert len(docs) == 1, done.stderr[-3000:]
    return done.returncode, docs[0]


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_a_broker_outage_under_load_loses_no_session_and_no_acked_event() -> None:
    """8 s without the broker under load (its own broker: this one is stopped), official JS
    clients dropping during and after it."""
    returncode, run = _run("benchmarks.outage", "--quick", timeout=280)
    assert run["sessions_lost"] == 0, run["verdict"]
    assert run["recovered"] == run["reconnections"] > 0
    assert (run["acked_lost"], run["acked_duplicated"], run["pending_acks"]) == (0, 0, 0)
    # A pipelined publisher: what was accepted keeps its order across the outage.
    assert run["acked_out_of_order"] == 0, run["members_with_faults"][:3]
    for node in run["nodes"]:
        assert (node["unreachable_lines"], node["reachable_again_lines"]) == (1, 1), node
    assert [r["status"] for r in run["readyz_during"]] == [503] * 3
    assert [r["status"] for r in run["readyz_after"]] == [200] * 3
    assert returncode == 0, run["verdict"]


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_a_client_that_stops_reading_is_cut_bounded_and_recovers_every_event(
    kafka_url: str,
) -> None:
    _, summary = _run("benchmarks.slow_consumer", "--quick", "--kafka", kafka_url, timeout=280)
    assert summary["slow_consumers_cut"] >= 1, summary
    assert summary["bars"]["rss_growth_under_50mb"], summary["stalled"]["rss_mb"]
    assert summary["bars"]["every_event_once"], summary["recovery"]
    # (Its third bar, the other client's p99 within 2x, is speed: measured by hand.)
