"""The short CI forms of the by-hand runs (issue 8's ``benchmarks/outage.py`` and
``benchmarks/slow_consumer.py``, issue 9's ``benchmarks/chaos``, ``benchmarks/stalled.py``):
what they check of behaviour, never their speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.chaos.tally import Window, tally

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


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_clients_that_stop_reading_together_keep_their_node_within_its_budget(
    kafka_url: str,
) -> None:
    returncode, summary = _run("benchmarks.stalled", "--quick", "--kafka", kafka_url, timeout=280)
    assert summary["bars"]["bounded_cut_for_the_budget"], summary["bounded"]
    assert summary["bars"]["lifted_keeps_more_than_the_budget"], summary["lifted"]
    assert summary["bars"]["bounded_within_the_budget"], summary["bounded"]
    assert summary["lifted"]["cut"] == 0, summary["lifted"]  # each under its own bound
    assert returncode == 0


def _chaos(*scenarios: str, timeout: float) -> dict[str, Any]:
    """A quick chaos run of ``scenarios`` (one stack, one start-up for all of them)."""
    args = [arg for name in scenarios for arg in ("--scenario", name)]
    _, summary = _run("benchmarks.chaos", "--quick", *args, timeout=timeout)
    [run] = summary["runs"]
    return dict(run)


def _assert_every_acked_event_once_in_order(run: dict[str, Any]) -> None:
    """Per scenario and in total: 0 acked lost, 0 duplicated, 0 out of order, every
    reconnection recovered; and every receiver got its room's last acked events."""
    assert run["settled"], run["totals"]
    for name, scenario in run["per_scenario"].items():
        counts = scenario["counts"]
        faults = {k: counts[k] for k in ("lost", "duplicated", "out_of_order", "not_recovered")}
        # A string, printed whole: pytest cuts a tuple's repr short.
        assert faults == dict.fromkeys(faults, 0), json.dumps([name, counts, run["examples"]])
        assert counts["recovered"] == counts["reconnects"], (name, counts)
    assert all(run["nodes_alive_at_end"]), run["nodes"]


@pytest.mark.kafka
@pytest.mark.timeout(330)
def test_gateway_kills_drops_a_cut_node_and_a_broker_restart_lose_no_acked_event() -> None:
    """On its own single broker, under load from official JS and Python recovering clients:
    a SIGKILL of each gateway node and a SIGTERM of one, transport drops, one node cut from
    Kafka for 8 s while it stays up, the broker stopped for 5 s."""
    run = _chaos(
        "gateway-kill", "gateway-term", "client-drops", "node-cut", "broker-restart",
        timeout=320,
    )  # fmt: skip
    _assert_every_acked_event_once_in_order(run)
    scenarios = run["per_scenario"]
    for name in ("gateway-kill", "gateway-term", "client-drops"):
        assert scenarios[name]["counts"]["reconnects"] > 0, name  # the fault did reach clients
    assert sorted(c["node"] for c in scenarios["gateway-kill"]["cycles"]) == [0, 1, 2]
    [cut] = scenarios["node-cut"]["cycles"]
    assert cut["readyz_503_after_s"] is not None, cut  # 503 while cut off...
    assert cut["alive_at_end_of_cut"], cut  # ...no crash...
    assert cut["other_nodes_readyz_during"] == [200, 200], cut
    assert cut["readyz_200_after_restore_s"] is not None, cut  # ...and ready again after
    [during] = scenarios["node-cut"]["cut_node_publishes_during_cut"]
    assert during["refused"] > 0, during  # its client's publishes refused with an error
    assert [s["verdict"] for s in scenarios.values() if "verdict" in s] == ["PASS"] * 5


@pytest.mark.kafka
@pytest.mark.timeout(330)
def test_partition_leader_killed_and_two_brokers_down_lose_no_acked_event() -> None:
    """On its own three-broker cluster (RF=3, min.insync.replicas=2): the broker leading the
    events topic's partitions SIGKILLed and restarted, a third of the clients dropping their
    transport during the failover; then two brokers down, when every
    publish must be refused (none acked), publishing again once one is back."""
    run = _chaos("leader-kill", "two-down", timeout=320)
    _assert_every_acked_event_once_in_order(run)
    scenarios = run["per_scenario"]
    [killed] = scenarios["leader-kill"]["cycles"]
    assert killed["led_partitions"] > 0, killed
    # Clients dropped during the failover reconnect, and recover, while leaders move.
    assert scenarios["leader-kill"]["counts"]["reconnects"] > 0, killed
    [down] = scenarios["two-down"]["two_down_publishes"]
    assert down["refused"] > 0, down
    assert down["acked"] == 0, down
    [back] = scenarios["two-down"]["one_back_publishes"]
    assert back["acked"] > 0, back
    assert [s["verdict"] for s in scenarios.values() if "verdict" in s] == ["PASS"] * 2


def test_the_chaos_tally_tells_lost_duplicated_out_of_order_and_refused_apart() -> None:
    """The counting the chaos verdicts rest on, on a made-up run: one publisher, one room.
    Out of order counts acked events only: a refused one may land late (`tally`)."""
    publisher = {
        "index": 0,
        "sent": {"r": 9},
        "acked": {"r": [1, 2, 3, 4, 5, 6]},
        "refused": {"r": [7, 8, 9]},
    }
    members = [
        # 3 lost, 2 twice, 5 after 6; refused 8 and 7 delivered all the same, 7 late.
        {
            "client": "a",
            "room": "r",
            "got": {"0": [1, 2, 2, 4, 6, 5, 8, 7]},
            "reconnects": [],
            "drops": 0,
        },
        # A fresh session (not recovered) joined again: its gap is not counted as lost.
        {
            "client": "b",
            "room": "r",
            "got": {"0": [1, 5, 6]},
            "reconnects": [{"t": 10.0, "recovered": False}],
            "drops": 1,
        },
    ]
    counted = tally([publisher], members)
    totals = counted.totals([publisher])
    assert {k: totals[k] for k in ("published", "acked", "refused", "received")} == {
        "published": 9, "acked": 6, "refused": 3, "received": 11,
    }  # fmt: skip
    assert {k: totals[k] for k in ("lost", "duplicated", "out_of_order", "refused_late")} == {
        "lost": 1, "duplicated": 1, "out_of_order": 1, "refused_late": 1,
    }  # fmt: skip
    assert (totals["refused_but_delivered"], totals["not_recovered"]) == (2, 1)
    later = Window("later", {"0": 4}, {"0": 8}, 5.0, 20.0)
    assert counted.in_window(later)["out_of_order"] == 1
    assert counted.in_window(later)["lost"] == 0  # 3 was sent before this stretch
    assert counted.in_window(later)["not_recovered"] == 1
