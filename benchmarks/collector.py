"""A node's garbage collector under a churn of connections (issue 10): its pauses, and what
it keeps.

One ``socketio-kafka serve`` process on the Kafka at ``--kafka`` holds ``--connections``
official clients (each in 2 rooms, `benchmarks.memory`'s clients) while, round after round,
``--churn`` more connect, join and leave (closed cleanly, or killed: resets, in turn); in
each round, one full collection comes while they are up (asked for: a short run would not
reach one by itself). Beside them the node stands for a busy one's other work: every 10 ms
it holds ``--held`` objects at once, then frees them (a fetched batch in fan-out), and it
emits 1,000 events/s to the shared rooms through Kafka. Each middle and full collection is
timed inside the node (an ``--extension``, `watch`, which also counts the objects each
walks), and after the last round, once engineio's ping tasks let go of the closed
connections (25 s) and their sessions expired (a 5 s recovery window; no live history),
the node stops its load, collects, and counts the objects it keeps, tracked and frozen:
against the count before the rounds, what the connections that left kept, by type.

Two arms, each on a fresh node, in one run: the gateway's collector (`gateway/collector.py`:
what survives a full collection is frozen), and the one before session 32 (start-up frozen,
nothing after)::

    python -m benchmarks.collector --kafka 127.0.0.1:19092            # 6,000 + 4 x 2,000
    python -m benchmarks.collector --kafka 127.0.0.1:19092 --quick    # 600 + 2 x 300

``--grow``: a node that grows instead. Each round's clients stay, and the node is asked for
as many full collections as it makes between two counts of its frozen objects; the arms
are the gateway's collector and session 32's, which thawed whenever the frozen objects
grew by half, its connections' as any::

    python -m benchmarks.collector --grow --kafka 127.0.0.1:19092     # 1,000 + 5 x 2,000
    python -m benchmarks.collector --grow --quick ...                 # 300 + 3 x 600
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import socketio

from socketio_kafka.gateway.collector import COUNT_EVERY, FREEZER

from .memory import connected_sockets, idle_clients, rss_kb
from .services import Cluster, NodeCommand, free_port, wait_until

__all__ = ["main", "measure", "watch"]

ARMS = ("freezing", "before")
GROWING_ARMS = ("freezing", "growth")
#: engineio's ping task holds a closed connection until it wakes (its 25 s interval).
_PING_HOLD_S = 27.0
_SESSIONS_KEPT_S = 5
_EVENTS_PER_S = 1_000
_SHARED_ROOMS = 50
#: The node's environment names its arm.
_ARM = "SOCKETIO_KAFKA_BENCHMARK_COLLECTOR"


# -- inside the node (--extension benchmarks.collector:watch) ------------------------------


def watch(sio: socketio.AsyncServer) -> None:
    """Time the node's middle and full collections, and answer the benchmark's calls.

    Loaded as the app is made, before ``serve`` paces the collector: the "before" arm's
    node freezes once, what start-up made, as `collector.pace_collector` did; the "growth"
    arm's does not tell the freezer its connections, as session 32's did not."""
    freezing = os.environ.get(_ARM) != "before"
    if os.environ.get(_ARM) == "growth":
        FREEZER.follow = lambda connections: None  # type: ignore[method-assign]
    if not freezing:
        once: list[bool] = []

        def start_up_only(phase: str, info: dict[str, Any]) -> None:
            if phase == "stop" and info["generation"] == 2 and not once:
                once.append(True)
                gc.freeze()

        FREEZER._after = start_up_only  # type: ignore[method-assign]
    pauses: list[tuple[int, float, int]] = []
    began, walked = [0.0], [0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        generation = info["generation"]
        if phase == "start":
            # What it will walk (counted before the clock starts, as long again for a full one).
            walked[0] = sum(len(gc.get_objects(g)) for g in range(generation + 1) if generation)
            began[0] = time.perf_counter()
        elif generation:
            pauses.append((generation, (time.perf_counter() - began[0]) * 1000, walked[0]))

    gc.callbacks.insert(0, timed)
    tasks: list[asyncio.Task[None]] = []
    counted: list[Counter[str]] = []

    async def emit_ticks() -> None:
        sent = 0
        while True:
            for _ in range(_EVENTS_PER_S // 100):
                await sio.emit("tick", "x" * 200, room=f"shared-{sent % _SHARED_ROOMS}")
                sent += 1
            await asyncio.sleep(0.01)

    async def hold(count: int) -> None:
        while True:
            held: list[list[None]] = [[] for _ in range(count)]
            try:
                await asyncio.sleep(0.01)
            finally:  # cancelled too: its traceback would keep them
                del held

    @sio.on("collector.load")  # type: ignore[untyped-decorator]
    async def load(_: str, held: int) -> bool:
        pauses.clear()
        tasks.extend(asyncio.create_task(c) for c in (emit_ticks(), hold(held)))
        return True

    @sio.on("collector.collect")  # type: ignore[untyped-decorator]
    async def collect(_: str, times: int = 1) -> int:
        return sum(gc.collect() for _ in range(times))

    @sio.on("collector.kept")  # type: ignore[untyped-decorator]
    async def kept(_: str) -> dict[str, Any]:
        for task in tasks:  # what they hold is no connection's
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()
        gc.collect()  # freezing, everything is frozen after it: seen thawed, then again
        frozen = gc.get_freeze_count()
        if freezing:
            gc.unfreeze()
        kinds = Counter(type(o).__qualname__ for o in gc.get_objects())
        if freezing:
            gc.freeze()
        grown, counted[:] = kinds - (counted[0] if counted else kinds), [kinds]
        return {
            "objects": kinds.total() + (0 if freezing else frozen),  # start-up's, before
            "frozen": frozen,
            "grown": grown.most_common(8),
            "thaws": FREEZER.thaws,
            "pauses": list(pauses),
        }


# -- the benchmark -------------------------------------------------------------------------


async def _call(url: str, event: str, *data: Any) -> Any:
    client = socketio.AsyncClient()
    await client.connect(url, transports=["websocket"])
    try:
        return await client.call(event, *data, timeout=120)
    finally:
        await client.disconnect()


def _node(kafka: str, port: int, most: int, arm: str) -> NodeCommand:
    argv = [
        sys.executable, "-m", "socketio_kafka.gateway", "serve",
        "--kafka", f"kafka://{kafka}", "--port", str(port),
        "--channel", f"collector-{uuid.uuid4().hex[:8]}", "--log-level", "warning",
        "--connect-rate", "10000000", "--max-connections", str(most),
        # The sessions of clients that left go before the count (every 5 s, past this), and
        # no history of recent events fills meanwhile: what is left is the connections'.
        "--recovery-window", str(_SESSIONS_KEPT_S), "--replay-history-mb", "0",
        "--extension", "benchmarks.collector:watch",
    ]  # fmt: skip
    return NodeCommand(argv, {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), _ARM: arm})


def _pauses(timed: list[list[float]], generation: int) -> dict[str, Any]:
    mine = sorted((m, n) for g, m, n in timed if g == generation)
    ms = [m for m, _ in mine]
    return {
        "count": len(ms),
        "longest_ms": round(ms[-1], 1) if ms else 0.0,
        "median_ms": round(ms[len(ms) // 2], 1) if ms else 0.0,
        "total_ms": round(sum(ms), 1),
        "most_walked": max((n for _, n in mine), default=0),
        "each": [[round(m, 1), n] for g, m, n in timed if g == generation][:40],
    }


def measure(
    kafka: str,
    arm: str,
    connections: int,
    churn: int,
    rounds: int,
    held: int,
    work: Path,
    grow: bool = False,
) -> dict[str, Any]:
    """One arm on a fresh node: its collections' pauses over the rounds, and what it kept
    (``grow``: what its frozen objects grew by a connection)."""
    port = free_port()
    cluster = Cluster(work)
    base = None
    grown: list[Any] = []
    most = connections + churn * (rounds if grow else 1) + 50
    try:
        cluster.start([(port, _node(kafka, port, most, arm))])
        url, pid = cluster.urls[0], cluster.pids[0]
        base = idle_clients(url, connections, _SHARED_ROOMS, work / "base.log")
        start = asyncio.run(_call(url, "collector.kept"))
        asyncio.run(_call(url, "collector.load", held))
        rss_before = rss_kb(pid)
        started = time.monotonic()
        for n in range(rounds):
            clients = idle_clients(url, churn, _SHARED_ROOMS, work / f"churn-{n}.log", f"c{n}-")
            if grow:  # the freezer counts once a round
                grown.append(clients)
                asyncio.run(_call(url, "collector.collect", COUNT_EVERY))
                continue
            asyncio.run(_call(url, "collector.collect"))  # one full collection while they are up
            if n % 2:
                clients.close()  # killed: every connection reset
            else:
                clients.send("close")
                clients.expect("closed", 60)
                clients.close()
            asyncio.run(
                wait_until(
                    lambda: connected_sockets(url) == connections,
                    120,
                    f"the node to hold {connections} again",
                    every_s=0.2,
                )
            )
        churned_s = time.monotonic() - started
        if not grow:
            time.sleep(_PING_HOLD_S)
        after = asyncio.run(_call(url, "collector.kept"))
        rss_after = rss_kb(pid)
    finally:
        for clients in (base, *grown):
            if clients is not None:
                clients.close()
        cluster.stop()
    per_churned = (
        {"frozen_per_connection": round((after["frozen"] - start["frozen"]) / (churn * rounds), 1)}
        if grow
        else {
            "kept_per_churned_connection": round(
                (after["objects"] - start["objects"]) / (churn * rounds), 1
            )
        }
    )
    return {
        "arm": arm,
        "churn_s": round(churned_s, 1),
        "middle": _pauses(after["pauses"], 1),
        "full": _pauses(after["pauses"], 2),
        "thaws": after["thaws"],
        "objects_before": start["objects"],
        "objects_after": after["objects"],
        "frozen_before": start["frozen"],
        "frozen_after": after["frozen"],
        "grown": after["grown"],
        **per_churned,
        "rss_mib_before": round(rss_before / 1024, 1),
        "rss_mib_after": round(rss_after / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.collector", description=__doc__)
    parser.add_argument(
        "--kafka", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    )
    parser.add_argument("--quick", action="store_true", help="a smoke test (sizes above)")
    parser.add_argument("--grow", action="store_true", help="each round's clients stay")
    parser.add_argument("--connections", type=int, help="held throughout (default 6,000)")
    parser.add_argument("--churn", type=int, help="connections a round (default 2,000)")
    parser.add_argument("--rounds", type=int, help="default 4 (growing: 5)")
    parser.add_argument("--held", type=int, help="objects held together (default 20,000)")
    parser.add_argument(
        "--arms", help=f"default: {','.join(ARMS)} (growing: {','.join(GROWING_ARMS)})"
    )
    args = parser.parse_args(argv)
    if args.grow:
        connections = args.connections or (300 if args.quick else 1_000)
        churn = args.churn or (600 if args.quick else 2_000)
        rounds = args.rounds or (3 if args.quick else 5)
    else:
        connections = args.connections or (600 if args.quick else 6_000)
        churn = args.churn or (300 if args.quick else 2_000)
        rounds = args.rounds or (2 if args.quick else 4)
    held = args.held or (5_000 if args.quick else 20_000)
    names = (args.arms or ",".join(GROWING_ARMS if args.grow else ARMS)).split(",")
    arms = {}
    for arm in names:
        with tempfile.TemporaryDirectory(prefix="collector-") as scratch:
            arms[arm] = measure(
                args.kafka, arm, connections, churn, rounds, held, Path(scratch), args.grow
            )
        print(json.dumps(arms[arm]), file=sys.stderr, flush=True)
    figures: dict[str, Any] = {"connections": connections, "churn": churn, "rounds": rounds}
    figures |= {"grow": args.grow, "held": held, "load_1m": round(os.getloadavg()[0], 2)}
    figures["arms"] = arms
    with contextlib.suppress(KeyError, ZeroDivisionError, IndexError):
        other = names[1] if names[0] == "freezing" else names[0]
        figures["longest_full_ratio"] = round(
            arms["freezing"]["full"]["longest_ms"] / arms[other]["full"]["longest_ms"], 3
        )
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
