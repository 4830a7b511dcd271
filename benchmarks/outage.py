"""The broker-outage run of issue 8: does every node publish again once Kafka is back?

Under the load that once wedged a node's producer for good (3 nodes, 30 official JS clients
in one room and 3 in another, one publisher on node 1 at 300 + 30 events/s never waiting for
its acks), the run's own Kafka is stopped for ``--outage-s`` and started again on the same
port. It measures, per node, how long after the broker's return it publishes again, the
outage lines of its log, and whether its producer was replaced; per client, whether a
reconnection kept its session and whether every acked publish arrived once, in order.

    python -m benchmarks.outage [--outage-s 30] [--runs 3] [--quick]

Never the shared broker: each run starts a private `LocalKafka` in a scratch directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from socketio_kafka.gateway.local_kafka import LocalKafka

from .contestants import PEERS, unlimited
from .services import BenchmarkError, Cluster, LineProcess, NodeCommand, free_port, require_tool

__all__ = ["Plan", "main", "run_once"]

Json = dict[str, Any]

_SCRIPT = PEERS / "loadgen" / "outage.mjs"
_NODES = 3
#: What a node's log must say about one outage, once each.
_AWAY = "kafka unreachable ("
_BACK = "kafka reachable again after"
_WEDGED = ("OutOfOrderSequenceNumber", "replacing it with a fresh producer")
#: A node publishes again within this long of the broker's return (the issue's bar).
_RETURN_BAR_S = 5.0


@dataclass(frozen=True, slots=True)
class Plan:
    outage_s: float
    clients_a: int
    clients_b: int
    rate_a: int
    rate_b: int
    load_before_s: float = 10.0
    load_after_s: float = 15.0
    ack_timeout_ms: int = 60_000


FULL = Plan(outage_s=30, clients_a=30, clients_b=3, rate_a=300, rate_b=30)
QUICK = Plan(
    outage_s=8, clients_a=8, clients_b=2, rate_a=50, rate_b=10, load_before_s=4, load_after_s=5
)


class _Clients(LineProcess):
    """The Node process driving the official JS clients; its report lines, as they come."""

    def __init__(self, spec: Json, log: Path) -> None:
        node = require_tool("node", "Node.js runs the official socket.io-client")
        super().__init__([node, str(_SCRIPT), json.dumps(spec)], log, "JS clients")


def _readyz(urls: list[str]) -> list[Json]:
    """Each node's /readyz: what it says while the broker is away (it must not block)."""
    answers: list[Json] = []
    for url in urls:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except OSError as exc:
            answers.append({"url": url, "error": repr(exc)})
            continue
        answers.append(
            {
                "status": status,
                "body": json.loads(body or b"null"),
                "ms": round((time.monotonic() - started) * 1000),
            }
        )
    return answers


def _node_logs(logs: list[Path]) -> list[Json]:
    summary = []
    for log in logs:
        lines = log.read_text(errors="replace").splitlines()
        summary.append(
            {
                "log": str(log),
                "unreachable_lines": sum(_AWAY in line for line in lines),
                "reachable_again_lines": sum(_BACK in line for line in lines),
                "outage_lines": [line for line in lines if _AWAY in line or _BACK in line],
                "wedge_lines": [line for line in lines if any(w in line for w in _WEDGED)][:5],
                "producers_replaced": sum("kafka producer replaced" in line for line in lines),
                "lines": len(lines),
            }
        )
    return summary


def _return_to_publish(probes: list[Json], returned: float) -> list[float | None]:
    """Per node: from the broker's return to the ack of its first ok publish sent after it."""
    delays: list[float | None] = []
    for probe in probes:
        acks = [acked for sent, acked in probe["oks"] if sent >= returned]
        delays.append(round(min(acks) - returned, 2) if acks else None)
    return delays


def _verdict(summary: Json) -> str:
    faults = []
    delays = summary["return_to_publish_s"]
    if any(d is None or d > _RETURN_BAR_S for d in delays):
        faults.append(f"return-to-publish {delays} (bar {_RETURN_BAR_S}s)")
    for n, node in enumerate(summary["nodes"], 1):
        if node["unreachable_lines"] != 1 or node["reachable_again_lines"] != 1:
            faults.append(
                f"node {n} outage lines {node['unreachable_lines']}+"
                f"{node['reachable_again_lines']} (want 1+1)"
            )
    if summary["sessions_lost"]:
        faults.append(f"{summary['sessions_lost']} reconnections lost their session")
    if summary["acked_lost"] or summary["acked_duplicated"]:
        faults.append(
            f"acked lost {summary['acked_lost']}, duplicated {summary['acked_duplicated']}"
        )
    return "PASS" if not faults else "FAIL: " + "; ".join(faults)


def run_once(plan: Plan, work: Path) -> Json:
    """One outage under load, in ``work`` (the broker's data, the node and client logs)."""
    kafka = LocalKafka(work / "kafka")
    cluster = Cluster(work)
    clients: _Clients | None = None
    try:
        address = kafka.start()
        ports = [free_port() for _ in range(_NODES)]
        argv = [sys.executable, "-m", "socketio_kafka.gateway", "serve", "--kafka"]
        commands = [
            (port, NodeCommand([*argv, f"kafka://{address}", "--port", str(port),
                                "--channel", "outage", "--log-level", "info",
                                *unlimited()]))
            for port in ports
        ]  # fmt: skip
        cluster.start(commands)
        spec = {
            "urls": cluster.urls,
            "clientsA": plan.clients_a,
            "clientsB": plan.clients_b,
            "rateA": plan.rate_a,
            "rateB": plan.rate_b,
            "ackTimeoutMs": plan.ack_timeout_ms,
        }
        clients = _Clients(spec, work / "clients.log")
        clients.expect("ready", 60)
        time.sleep(plan.load_before_s)  # a timeline, not a wait on a condition

        stopped = time.time()
        kafka.stop()
        time.sleep(plan.outage_s / 2)
        clients.send("drop")  # reconnections while the broker is away
        clients.expect("dropped", 10)
        during = _readyz(cluster.urls)
        time.sleep(max(0.0, stopped + plan.outage_s - time.time()))
        restarted = time.time()
        if kafka.start() != address:
            raise BenchmarkError(f"Kafka came back elsewhere than {address}")
        returned = time.time()
        time.sleep(2)
        clients.send("drop")  # and right after its return
        clients.expect("dropped", 10)
        time.sleep(plan.load_after_s)
        after = _readyz(cluster.urls)
        clients.send("finish")
        result = clients.expect("result", plan.ack_timeout_ms / 1000 + 60)
    finally:
        if clients is not None:
            clients.close()
        cluster.stop()
        kafka.stop()
    members = result["members"]
    reconnects = [r for m in members for r in m["reconnects"]]
    return {
        "plan": _plan_json(plan),
        "broker_down_s": round(returned - stopped, 1),
        "broker_start_s": round(returned - restarted, 1),
        "return_to_publish_s": _return_to_publish(result["probes"], returned),
        "probe_refusals_after_return": [
            sum(sent >= returned for sent, _ in p["refusals"]) for p in result["probes"]
        ],
        "nodes": _node_logs([work / f"node-{port}.log" for port in ports]),
        "readyz_during": during,
        "readyz_after": after,
        "sent": result["sent"],
        "acked_ok": result["acked"],
        "publish_errors": result["errors"],
        "pending_acks": result["pendingAcks"],
        "settled": result["settled"],
        "reconnections": len(reconnects),
        "recovered": sum(r["recovered"] for r in reconnects),
        "sessions_lost": sum(not r["recovered"] for r in reconnects),
        "acked_lost": sum(m["lost"] for m in members),
        "acked_duplicated": sum(m["duplicated"] for m in members),
        "acked_out_of_order": sum(m["outOfOrder"] for m in members),
        "members_with_faults": [
            m
            for m in members
            if m["lost"]
            or m["duplicated"]
            or m["outOfOrder"]
            or not all(r["recovered"] for r in m["reconnects"])
        ],
        # [seconds since the broker stopped, sent, ok, error, ack timeout] per second sent.
        "per_second": [
            [int(second) - int(stopped), b["sent"], b["ok"], b["error"], b["timeout"]]
            for second, b in sorted(result["perSecond"].items())
        ],
    }


def _plan_json(plan: Plan) -> Json:
    return {name: getattr(plan, name) for name in Plan.__slots__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.outage", description=__doc__)
    parser.add_argument("--outage-s", type=float, default=None)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="small and short: a smoke test")
    parser.add_argument("--keep", type=Path, help="keep each run's logs under this directory")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.outage_s is not None:
        plan = Plan(**{**_plan_json(plan), "outage_s": args.outage_s})
    verdicts = []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="outage-") as scratch:
            work = args.keep / f"run-{run}" if args.keep else Path(scratch)
            work.mkdir(parents=True, exist_ok=True)
            summary = run_once(plan, work)
        summary["verdict"] = _verdict(summary)
        print(json.dumps({"run": run, **summary}, indent=1), flush=True)
        print(f"run {run}: {summary['verdict']}", flush=True)
        verdicts.append(summary["verdict"])
    return 0 if all(v == "PASS" for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
