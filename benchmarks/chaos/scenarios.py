"""The faults, one function a scenario: each runs its cycles against a `Running` stack under
load and returns what it saw per cycle; `judge` turns that, and the scenario's counts,
into a verdict."""

from __future__ import annotations

import math
import random
import signal
import time
from collections.abc import Callable
from typing import Any

from ..services import BenchmarkError
from .kafka import BrokerCluster, SingleBroker
from .plan import Plan
from .stack import NODES, Running

__all__ = ["RUNNERS", "judge"]

Json = dict[str, Any]
Runner = Callable[[Running, int, random.Random], list[Json]]

#: `/readyz` answers 503 within this long of a node losing Kafka (the issue's "a few seconds").
READYZ_BAR_S = 10.0
_IN_SYNC_TIMEOUT_S = 120.0
_READY_TIMEOUT_S = 60.0
#: Publishes sent this long after the second broker went down are the ones that must fail.
_TWO_DOWN_GRACE_S = 2.0
#: Clients drop this long after a leader is killed: the cluster has not fenced it yet.
_DROP_AFTER_KILL_S = 1.0


def _all_nodes() -> list[int]:
    return list(range(NODES))


def _steady(run: Running, hold: float | None = None) -> float | None:
    """Wait for every client to be connected again, then let the load run a while
    (``hold`` seconds; the plan's ``steady_s`` by default)."""
    reconnected = run.reconnected()
    # A timeline: load between faults, not a wait on a state.
    time.sleep(run.plan.steady_s if hold is None else hold)
    return reconnected


def _node_fault(run: Running, picks: list[int | None], signum: signal.Signals) -> list[Json]:
    """Each cycle: the node picked (None: the one most receivers are on) gets ``signum``,
    and is started again ``node_down_s`` later."""
    records = []
    for pick in picks:
        index = run.busiest() if pick is None else pick
        run.route_to([n for n in _all_nodes() if n != index])
        run.note(f"{signum.name} node", node=index)
        started = time.monotonic()
        run.gateways.signal(index, signum)
        time.sleep(run.plan.node_down_s)
        run.gateways.restart(index)
        back = round(time.monotonic() - started, 2)
        run.note("node back", node=index)
        run.route_to(_all_nodes())
        records.append({"node": index, "back_s": back, "reconnected_s": _steady(run)})
    return records


def gateway_kill(run: Running, cycles: int, rng: random.Random) -> list[Json]:
    """A random node each cycle, but each node once in every three: a short run still kills
    node 0, whose pinned publisher then publishes into a dead node until it is back."""
    rounds = math.ceil(cycles / NODES)
    picks: list[int | None] = [n for _ in range(rounds) for n in rng.sample(range(NODES), NODES)]
    return _node_fault(run, picks[:cycles], signal.SIGKILL)


def gateway_term(run: Running, cycles: int, rng: random.Random) -> list[Json]:
    """The node most receivers are on: after kills, clients gather on the nodes that stayed
    up, and a random pick could shut down an empty node."""
    return _node_fault(run, [None] * cycles, signal.SIGTERM)


def client_drops(run: Running, cycles: int, rng: random.Random) -> list[Json]:
    """A third of the receivers of each kind, and every publisher, lose their transport."""
    records = []
    for _ in range(cycles):
        js, py = _drop_clients(run)
        records.append({"js": js, "py": py, "reconnected_s": _steady(run)})
    return records


def _drop_clients(run: Running) -> tuple[Any, Any]:
    """A third of the receivers of each kind, and every publisher, lose their transport."""
    assert run.js is not None
    assert run.py is not None
    load = run.plan.load
    run.js.send("drop", n=math.ceil(load.js_receivers / 3), publishers=True)
    js = run.js.expect("dropped", 10)["clients"]
    run.py.send("drop", n=math.ceil(load.py_receivers / 3))
    py = run.py.expect("dropped", 10)["clients"]
    run.note("clients dropped", js=js, py=py)
    return js, py


def broker_restart(run: Running, cycles: int, rng: random.Random) -> list[Json]:
    kafka = _single(run)
    records = []
    for _ in range(cycles):
        run.note("broker stop")
        kafka.stop()
        time.sleep(run.plan.broker_down_s)
        started = time.monotonic()
        kafka.restart()
        run.note("broker back")
        records.append(
            {
                "broker_start_s": round(time.monotonic() - started, 1),
                "ready_s": [run.wait_readyz(n, 200, _READY_TIMEOUT_S) for n in _all_nodes()],
                "reconnected_s": _steady(run),
            }
        )
    return records


def node_cut(run: Running, cycles: int, rng: random.Random) -> list[Json]:
    """Node 0 loses Kafka (its relay goes silent) while it stays up, then gets it back."""
    relay = _single(run).relay
    if relay is None:
        raise BenchmarkError("node-cut needs the relay: the run was planned without it")
    records = []
    for _ in range(cycles):
        run.route_to([n for n in _all_nodes() if n != 0])  # its /readyz says so
        relay.cut()
        cut = time.time()
        run.note("node 0 cut from kafka")
        to_503 = run.wait_readyz(0, 503, run.plan.cut_s)
        others = [run.readyz(n) for n in _all_nodes() if n != 0]
        time.sleep(max(0.0, cut + run.plan.cut_s - time.time()))
        alive = run.gateways.alive(0)
        relay.restore()
        restored = time.time()
        run.note("node 0 link restored")
        to_200 = run.wait_readyz(0, 200, _READY_TIMEOUT_S)
        run.route_to(_all_nodes())
        records.append(
            {
                "cut_at": cut,
                "restored_at": restored,
                "readyz_503_after_s": to_503,
                "other_nodes_readyz_during": others,
                "alive_at_end_of_cut": alive,
                "readyz_200_after_restore_s": to_200,
                "reconnected_s": _steady(run),
            }
        )
    return records


def leader_kill(run: Running, cycles: int, rng: random.Random) -> list[Json]:
    """SIGKILL the broker leading most of the events topic's partitions; restart it later.

    A third of the clients lose their transport a second after the kill, while Kafka is
    electing new leaders: their claims wait on the failover, and some go to other nodes.
    """
    kafka = _cluster(run)
    records = []
    previous: int | None = None
    for _ in range(cycles):
        leaders = kafka.leaders(run.topic)
        victim = _most_leading(leaders, avoid=previous)
        run.note("broker killed", broker=victim, leads=leaders[victim])
        kafka.kill(victim)
        killed = time.monotonic()
        time.sleep(_DROP_AFTER_KILL_S)
        js, py = _drop_clients(run)
        time.sleep(max(0.0, killed + run.plan.leader_down_s - time.monotonic()))
        kafka.revive(victim)
        run.note("broker back", broker=victim)
        records.append(
            {
                "broker": victim,
                "led_partitions": leaders[victim],
                "leaders_before": dict(leaders),
                "dropped": {"js": js, "py": py},
                "in_sync_s": _await_in_sync(run, kafka),
                "reconnected_s": _steady(run, run.plan.leader_steady_s),
            }
        )
        previous = victim
    return records


def two_down(run: Running, cycles: int, rng: random.Random) -> list[Json]:
    """Two brokers of three SIGKILLed: no quorum, no in-sync pair; then one, then the other
    back."""
    kafka = _cluster(run)
    records = []
    for _ in range(cycles):
        leaders = kafka.leaders(run.topic)
        first = _most_leading(leaders, avoid=None)
        second = _most_leading(leaders, avoid=first)
        kafka.kill(first)
        kafka.kill(second)
        down = time.time()
        run.note("two brokers killed", brokers=[first, second])
        time.sleep(run.plan.two_down_s)
        kafka.revive(first)
        one_back = time.time()
        run.note("one broker back", broker=first)
        time.sleep(run.plan.one_back_s)
        kafka.revive(second)
        both_back = time.time()
        run.note("both brokers back", broker=second)
        records.append(
            {
                "brokers": [first, second],
                "down_at": down,
                "one_back_at": one_back,
                "both_back_at": both_back,
                "in_sync_s": _await_in_sync(run, kafka),
                "reconnected_s": _steady(run),
            }
        )
    return records


def _most_leading(leaders: Any, avoid: int | None) -> int:
    """The broker leading most partitions, another than last time's if another leads any
    (Kafka's preferred-leader election may hand every partition back to the one restarted)."""
    ranked = [broker for broker, _ in leaders.most_common()]
    if not ranked:
        raise BenchmarkError(f"no broker leads the events topic: {leaders}")
    others = [broker for broker in ranked if broker != avoid]
    return int((others or ranked)[0])


def _await_in_sync(run: Running, kafka: BrokerCluster) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < _IN_SYNC_TIMEOUT_S:
        if kafka.in_sync(run.topic):
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    return None


def _single(run: Running) -> SingleBroker:
    if not isinstance(run.kafka, SingleBroker):
        raise BenchmarkError("this scenario runs on the single broker")
    return run.kafka


def _cluster(run: Running) -> BrokerCluster:
    if not isinstance(run.kafka, BrokerCluster):
        raise BenchmarkError("this scenario runs on the three-broker cluster")
    return run.kafka


RUNNERS: dict[str, Runner] = {
    "gateway-kill": gateway_kill,
    "gateway-term": gateway_term,
    "client-drops": client_drops,
    "node-cut": node_cut,
    "broker-restart": broker_restart,
    "leader-kill": leader_kill,
    "two-down": two_down,
}


def publishes_between(publishers: list[Json], start: float, end: float) -> Json:
    """[sent, acked, refused] of the publishes sent in whole seconds within [start, end)."""
    totals = [0, 0, 0]
    for publisher in publishers:
        for second, bucket in publisher["perSecond"].items():
            if start <= int(second) and int(second) + 1 <= end:
                totals = [a + b for a, b in zip(totals, bucket, strict=True)]
    return {"sent": totals[0], "acked": totals[1], "refused": totals[2]}


def judge(name: str, counts: Json, cycles: list[Json], publishers: list[Json], plan: Plan) -> Json:
    """The scenario's extra figures and its verdict: PASS, or FAIL with each reason."""
    faults = [
        f"{counts[kind]} {kind.replace('_', ' ')}"
        for kind in ("lost", "duplicated", "out_of_order", "not_recovered")
        if counts[kind]
    ]
    if any(c.get("reconnected_s") is None for c in cycles):
        faults.append("some client never reconnected")
    extra: Json = {}
    if name == "node-cut":
        extra, more = _judge_cut(cycles, publishers)
        faults += more
    elif name == "two-down":
        extra, more = _judge_two_down(cycles, publishers, plan.kafka_timeout_ms / 1000)
        faults += more
    elif name == "broker-restart" and any(None in c["ready_s"] for c in cycles):
        faults.append("a node was not ready again after the broker's return")
    if name in ("leader-kill", "two-down") and any(c["in_sync_s"] is None for c in cycles):
        faults.append("replicas never all in sync again")
    verdict = "PASS" if not faults else "FAIL: " + "; ".join(faults)
    return {**extra, "verdict": verdict}


def _judge_cut(cycles: list[Json], publishers: list[Json]) -> tuple[Json, list[str]]:
    pinned = [p for p in publishers if p["pinned"]]
    during = [publishes_between(pinned, c["cut_at"], c["restored_at"]) for c in cycles]
    faults = []
    for cycle, seen in zip(cycles, during, strict=True):
        to_503 = cycle["readyz_503_after_s"]
        if to_503 is None or to_503 > READYZ_BAR_S:
            faults.append(f"/readyz 503 after {to_503} s (bar {READYZ_BAR_S} s)")
        if not cycle["alive_at_end_of_cut"]:
            faults.append("the cut node died")
        if cycle["readyz_200_after_restore_s"] is None:
            faults.append("the cut node never ready again")
        if seen["refused"] == 0:
            faults.append("no publish on the cut node was refused")
    return {"cut_node_publishes_during_cut": during}, faults


def _judge_two_down(
    cycles: list[Json], publishers: list[Json], timeout_s: float
) -> tuple[Json, list[str]]:
    faults = []
    down_windows, one_back = [], []
    for cycle in cycles:
        # Sent after both went, and refused (not merely late) before one came back.
        start = cycle["down_at"] + _TWO_DOWN_GRACE_S
        down = publishes_between(publishers, start, cycle["one_back_at"] - timeout_s)
        back = publishes_between(publishers, cycle["one_back_at"], cycle["both_back_at"])
        down_windows.append(down)
        one_back.append(back)
        if down["acked"] or not down["refused"]:
            faults.append(f"with two brokers down: {down}")
        if not back["acked"]:
            faults.append("no publish acked with one broker of the two back")
    return {"two_down_publishes": down_windows, "one_back_publishes": one_back}, faults
