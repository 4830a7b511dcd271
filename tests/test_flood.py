"""The flood run's quick form (issue 11, ``benchmarks/flood.py``): what it checks of behaviour,
never speed (the other clients' p99 within 2x of a quiet run is measured by hand)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.flood import EventFlood

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_a_connection_flood_and_an_event_flood_are_held_to_their_limits_and_others_are_served(
    kafka_bootstrap: str,
) -> None:
    """One address opening connections as fast as it can and one socket publishing as fast
    as it can, for 4 s, beside official JS clients publishing, receiving and connecting."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.flood", "--quick", "--kafka", kafka_bootstrap],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert done.stdout.startswith("{"), done.stderr[-3000:]
    summary = json.loads(done.stdout)
    bars = summary["bars"]
    connects, events = summary["connection_flood"], summary["event_flood"]
    assert bars["limits_hold"], (connects, events)
    assert bars["limits_engaged"], (connects, events, summary["refusals_counted_by_the_node"])
    assert bars["node_up"], summary["node_at_end"]
    assert bars["others_served"], (summary["quiet"], summary["flood"])
    assert summary["node_at_end"]["log_tracebacks"] == 0


@pytest.mark.parametrize(
    ("told", "cut", "counted", "engaged"),
    [
        (101, False, 101, True),  # told each refusal in its acks
        (0, True, 101, True),  # cut before it read one: the node's queue went with the reset
        (0, False, 101, False),  # neither told nor cut: nothing the flooder saw engaged
        (0, True, 0, False),  # cut, but not for its events: the node counted no refusal
        (120, False, 101, False),  # told more than the node counted
    ],
)
def test_the_event_flood_engaged_its_limit_when_it_was_refused_or_cut_and_the_node_counted_it(
    told: int, cut: bool, counted: int, engaged: bool
) -> None:
    flood = EventFlood(closed_by_node=cut)
    flood.refused["rate limited"] = told
    assert flood.engaged({"event_rate": counted}) is engaged
