"""The chaos table of ``docs/reliability.md``: written between two markers, so a new run
replaces the last one and leaves the rest of the page alone."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from socketio_kafka.gateway.local_kafka import KAFKA_VERSION

from ..contestants import PEERS
from ..services import BenchmarkError

__all__ = ["BEGIN", "END", "block", "stamp", "write_docs"]

Json = dict[str, Any]

BEGIN = "<!-- chaos:begin -->"
END = "<!-- chaos:end -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"

_FAULTS = {
    "gateway-kill": "SIGKILL of a random gateway node (each once in three cycles), restarted"
    " {node_down_s:g} s later",
    "gateway-term": "SIGTERM of the gateway node most receivers are on, restarted"
    " {node_down_s:g} s later",
    "client-drops": "transport drops: a third of the receivers (JS `engine.close()`, Python"
    " `eio.ws.close()`) and every publisher",
    "node-cut": "node 0 cut from Kafka for {cut_s:g} s by a silent TCP relay, staying up",
    "broker-restart": "the single broker stopped for {broker_down_s:g} s and started again",
    "leader-kill": "SIGKILL of the broker leading most of the events topic's partitions"
    " (3 brokers, RF=3, min.insync.replicas=2), restarted {leader_down_s:g} s later; a third"
    " of the receivers and every publisher drop their transport 1 s after the kill;"
    " {leader_steady_s:g} s of load after each return",
    "two-down": "two of the three brokers SIGKILLed for {two_down_s:g} s, then one back for"
    " {one_back_s:g} s, then the other",
}


def _environment() -> str:
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("python-socketio", "aiokafka")
    )
    client = json.loads((PEERS / "node_modules" / "socket.io-client" / "package.json").read_text())
    return (
        f"{_cpu()}, {os.cpu_count()} cores, Python {platform.python_version()}, {versions},"
        f" Apache Kafka {KAFKA_VERSION}, socket.io-client {client['version']}"
    )


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    names = [line.partition(":")[2].strip() for line in info.splitlines() if "model name" in line]
    return names[0] if names else platform.machine()


def _row(name: str, scenario: Json, plan: Json) -> str:
    counts = scenario["counts"]
    fault = _FAULTS[name].format(**plan)
    extra = ""
    if "cut_node_publishes_during_cut" in scenario:
        cycle = scenario["cycles"][0]
        seen = scenario["cut_node_publishes_during_cut"][0]
        extra = (
            f"; `/readyz` 503 after {cycle['readyz_503_after_s']} s, 200 again"
            f" {cycle['readyz_200_after_restore_s']} s after the link's return;"
            f" cut node's publishes during the cut: {seen['refused']:,} refused,"
            f" {seen['acked']:,} acked"
        )
    if "two_down_publishes" in scenario:
        down, back = scenario["two_down_publishes"][0], scenario["one_back_publishes"][0]
        extra = (
            f"; sent with two down: {down['sent']:,}, {down['refused']:,} refused,"
            f" {down['acked']:,} acked; with one back: {back['acked']:,} acked"
        )
    recovered = f"{counts['recovered']} of {counts['reconnects']}"
    sent = scenario["publishes"]
    return (
        f"| {name} | {fault} | {len(scenario['cycles'])} | {sent['published']:,}:"
        f" {sent['acked']:,} / {sent['refused']:,} | {counts['lost']} |"
        f" {counts['duplicated']} | {counts['out_of_order']} | {recovered} |"
        f" {counts['refused_but_delivered']:,} | {scenario['verdict']}{extra} |"
    )


_INTRO = """\
## Chaos runs (issue 9)

Faults under a steady stream: 3 gateway nodes (recovery on), official JS and Python
`AsyncRecoveringClient` receivers in rooms, and publishers (one per node, the first pinned to
node 0) sending numbered events to every room, pipelined (the next before the previous ack).
Lost: acked, never received by a member that was in the room throughout. Out of order: acked,
received after a higher number from the same publisher to the same room. Refused but delivered:
refused (an error reply, or no ack in time) and delivered all the same, which a refusal saying
"it may still be written" allows; never counted as a duplicate. Such an event may also arrive
late: a publisher whose transport drops while Kafka elects a leader publishes on through
another node, and the old node's record lands when Kafka takes it (the tally counts these as
`refused_late`; a client that resends with an `id` can keep the first place). These four count
deliveries: an event 10 members missed counts 10. The node cut is silent (a TCP relay that
stops forwarding and closes nothing), so the node learns of it only through its own probes.
The short form of every row runs in `tests/test_chaos.py`; the tables below are full runs,
by hand."""

_STACKS = {"single": "One broker", "cluster": "Three brokers (RF=3, `min.insync.replicas=2`)"}


def _markers(stack: str) -> tuple[str, str]:
    return f"<!-- chaos:{stack}:begin -->", f"<!-- chaos:{stack}:end -->"


def block(summary: Json, run: Json, command: list[str]) -> str:
    """One run's table: what ran, where, one row a scenario, between its own markers."""
    plan, load = summary["plan"], summary["plan"]["load"]
    begin, end = _markers(run["stack"])
    totals = run["totals"]
    lines = [
        begin,
        f"### {_STACKS[run['stack']]}",
        "",
        f"{load['js_receivers']} JS and {load['py_receivers']} Python receivers in"
        f" {len(load['rooms'])} rooms, {load['publishers']} publishers at"
        f" {plan['events_per_s']} events/s in all; the nodes' `--kafka-timeout-ms"
        f" {plan['kafka_timeout_ms']}`. In total {totals['published']:,} published,"
        f" {totals['acked']:,} acked, {totals['refused']:,} refused,"
        f" {totals['received']:,} deliveries. {summary['date']}, {summary['environment']}:"
        f" `{shlex.join(command)}`",
        "",
        "| scenario | fault | cycles | published: acked / refused | acked lost | duplicated"
        " | out of order | reconnects recovered | refused but delivered | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(_row(name, run["per_scenario"][name], plan) for name in run["scenarios"]),
        end,
    ]
    return "\n".join(lines)


def write_docs(summary: Json, command: list[str], doc: Path = DOC) -> None:
    """Put each run's table in ``doc``'s chaos section, replacing the last table of the same
    stack and leaving the others (and the rest of the page) alone."""
    text = doc.read_text()
    if (BEGIN in text) != (END in text):
        raise BenchmarkError(f"{doc} has one chaos marker without the other")
    if BEGIN not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{_INTRO}\n\n{END}\n"
    for run in summary["runs"]:
        new = block(summary, run, command)
        begin, end = _markers(run["stack"])
        if begin in text and end in text:
            head, _, rest = text.partition(begin)
            text = head + new + rest.partition(end)[2]
        else:
            head, _, tail = text.partition(END)
            text = f"{head}{new}\n\n{END}{tail}"
    doc.write_text(text)


def stamp() -> Json:
    """When and where: for the summary and the table."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": _environment(),
        "argv": sys.argv,
    }
