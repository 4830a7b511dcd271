"""Memory per connection (issue 10): one node's RSS for idle official-client connections.

One ``socketio-kafka serve`` process (recovery on, its default) on the Kafka at ``--kafka``;
a Node.js process opens ``--connections`` socket.io-client connections to it (WebSocket
transport, each its own Manager), then each joins 2 rooms (one of its own, one of
``--shared-rooms``). The node's RSS (``VmRSS`` of /proc/<pid>/status) is read once it
settles: ready, after a warm-up (a few connections that came and went, so lazily made
state is not counted as a connection's), with the connections idle, with their rooms, and
after they all left. Reported: KB of RSS per connection, idle and with 2 rooms, and the
node's CPU while they sit idle in their rooms (``--idle-s``: heartbeats, timers)::

    python -m benchmarks.memory --kafka 127.0.0.1:19092            # 5,000 connections
    python -m benchmarks.memory --kafka 127.0.0.1:19092 --quick    # 500

RSS counts what the process took from the system, not what Python holds now: freed
memory stays in the allocator's arenas, so the figure after the clients left shows what a
node keeps once it served that many.

``--sessions N`` first writes N sessions of another node's clients to the node's sessions
topic and reports the RSS each cost it (every node keeps every session of the cluster).
Reading them leaves freed memory in the arenas that the connections then take: a run with
``--sessions`` reports less per connection than one without; take those from a run without.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from socketio_kafka.adapter.sessions import Session, encode_session

from .contestants import PEERS
from .cpu import cpu_seconds
from .services import (
    Cluster,
    LineProcess,
    NodeCommand,
    free_port,
    metric,
    require_tool,
    wait_until,
)

__all__ = ["idle_clients", "main", "measure"]

_SCRIPT = PEERS / "loadgen" / "memory.mjs"
_WARM_UP = 50
_AT_ONCE = 100
#: RSS is settled when two reads this far apart differ by less than _STABLE_KB.
_SETTLE_EVERY_S = 0.5
_STABLE_KB = 256
_SETTLE_WITHIN_S = 30.0
_LEAVE_WITHIN_S = 600.0
#: The events topic's partitions (the gateway's default): one start offset each.
_PARTITIONS = 6


class _Clients(LineProcess):
    """The Node process holding the official clients."""

    def __init__(
        self, url: str, connections: int, shared_rooms: int, log: Path, prefix: str = ""
    ) -> None:
        node = require_tool("node", "Node.js runs the official socket.io-client")
        spec = {
            "url": url,
            "connections": connections,
            "atOnce": _AT_ONCE,
            "sharedRooms": shared_rooms,
            "prefix": prefix,
        }
        super().__init__([node, str(_SCRIPT), json.dumps(spec)], log, "JS clients")


def rss_kb(pid: int) -> int:
    """The process's resident set, in KB, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None, status
    return int(match.group(1))


def _settled_rss_kb(pid: int) -> int:
    """RSS once it stops moving (the last read past _SETTLE_WITHIN_S: a busy machine)."""
    deadline = time.monotonic() + _SETTLE_WITHIN_S
    last = rss_kb(pid)
    while time.monotonic() < deadline:
        time.sleep(_SETTLE_EVERY_S)
        now = rss_kb(pid)
        if abs(now - last) < _STABLE_KB:
            return now
        last = now
    return last


def connected_sockets(url: str) -> int:
    """The node's own count of connected sockets (its /metrics)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(r'^socketio_kafka_connected_sockets\{namespace="/"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def _command(
    kafka: str, port: int, channel: str, connections: int, flags: list[str]
) -> NodeCommand:
    argv = [
        sys.executable, "-m", "socketio_kafka.gateway", "serve",
        "--kafka", f"kafka://{kafka}", "--port", str(port),
        "--channel", channel, "--log-level", "warning",
        # Every client comes from 127.0.0.1: the per-address limits would refuse them.
        "--connect-rate", "10000000", "--max-connections", str(connections + _WARM_UP + 10),
        *flags,
    ]  # fmt: skip
    return NodeCommand(argv)


def _session(
    url: str, connections: int, shared_rooms: int, log: Path, prefix: str = ""
) -> _Clients:
    clients = _Clients(url, connections, shared_rooms, log, prefix)
    clients.send("open")
    opened = clients.expect("opened", 60 + connections / 20)
    if opened["connected"] != connections:
        raise AssertionError(f"{opened['connected']} of {connections} connected")
    return clients


def idle_clients(
    url: str, connections: int, shared_rooms: int, log: Path, prefix: str = ""
) -> LineProcess:
    """``connections`` official clients on ``url``, each in 2 rooms (``<prefix>own-<n>`` and
    one of ``shared_rooms``), idle until closed (send "close", expect "closed")."""
    clients = _session(url, connections, shared_rooms, log, prefix)
    clients.send("join")
    clients.expect("joined", 60 + connections / 20)
    return clients


def _kb_per(delta_kb: int, connections: int) -> float:
    return round(delta_kb / connections * 1024 / 1000, 1)  # KiB of /proc to kB


def measure(
    kafka: str,
    connections: int,
    shared_rooms: int,
    work: Path,
    flags: list[str],
    sessions: int = 0,
    idle_s: float = 60.0,
) -> dict[str, Any]:
    """One node, ``connections`` clients: its RSS at each step, in KiB and per connection,
    and its CPU over ``idle_s`` with them idle in their rooms; first, with ``sessions``,
    what that many sessions of another node's clients cost it."""
    port, channel = free_port(), f"memory-{uuid.uuid4().hex[:8]}"
    cluster = Cluster(work)
    clients: _Clients | None = None
    foreign: dict[str, Any] = {}
    try:
        cluster.start([(port, _command(kafka, port, channel, connections, flags))])
        pid, url = cluster.pids[0], cluster.urls[0]
        ready = _settled_rss_kb(pid)
        if sessions:
            foreign = _foreign_sessions(kafka, channel, url, pid, sessions)
            ready = _settled_rss_kb(pid)
        warm = _session(url, _WARM_UP, shared_rooms, work / "warm-up.log")
        warm.send("join")
        warm.expect("joined", 60)
        warm.send("close")
        warm.expect("closed", 30)
        warm.close()
        baseline = _settled_rss_kb(pid)

        clients = _session(url, connections, shared_rooms, work / "clients.log")
        idle = _settled_rss_kb(pid)
        held_idle = connected_sockets(url)
        clients.send("join")
        clients.expect("joined", 60 + connections / 20)
        rooms = _settled_rss_kb(pid)
        busy = cpu_seconds(pid)
        time.sleep(idle_s)
        idle_cores = (cpu_seconds(pid) - busy) / idle_s
        clients.send("count")
        still = clients.expect("counted", 30)["connected"]
        held_rooms = connected_sockets(url)
        clients.send("close")
        clients.expect("closed", 60)
        gone, left_s = _after_all_left(url, pid)
    finally:
        if clients is not None:
            clients.close()
        cluster.stop()
    return {
        "connections": connections,
        "flags": flags,
        "held_idle": held_idle,
        "held_with_rooms": held_rooms,
        "clients_still_connected": still,
        "rss_mib": {
            "ready": round(ready / 1024, 1),
            "baseline": round(baseline / 1024, 1),
            "idle": round(idle / 1024, 1),
            "rooms": round(rooms / 1024, 1),
            "after_close": round(gone / 1024, 1),
        },
        "all_left_s": round(left_s, 1),
        "kb_per_connection_idle": _kb_per(idle - baseline, connections),
        "kb_per_connection_rooms": _kb_per(rooms - baseline, connections),
        "kb_per_connection_from_ready": _kb_per(idle - ready, connections),
        "idle_s": idle_s,
        "idle_cpu_cores": round(idle_cores, 4),
        "idle_cpu_percent_per_1000": round(100 * idle_cores * 1000 / connections, 3),
        **foreign,
    }


def _foreign_sessions(kafka: str, channel: str, url: str, pid: int, count: int) -> dict[str, Any]:
    """Write ``count`` sessions of a node that keeps them (its clients connected, each in 2
    rooms) to the node's sessions topic; its RSS before and once it has read them all."""
    before = _settled_rss_kb(pid)
    asyncio.run(_write_sessions(kafka, f"{channel}.sessions", count))
    asyncio.run(
        wait_until(
            lambda: metric(url, "socketio_kafka_sessions") >= count,
            _SETTLE_WITHIN_S + count / 10_000,
            f"the node to read {count} sessions",
            every_s=0.2,
        )
    )
    after = _settled_rss_kb(pid)
    return {
        "sessions": count,
        "rss_mib_sessions": {"before": round(before / 1024, 1), "after": round(after / 1024, 1)},
        "bytes_per_session": round((after - before) * 1024 / count),
    }


async def _write_sessions(kafka: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        for first in range(0, count, 10_000):
            sends = []
            for n in range(first, min(count, first + 10_000)):
                session = Session(
                    f"pid-{n:020d}", f"sid-{n:018d}", "/", (f"own-{n}", f"shared-{n % 50}"),
                    None, tuple(1_000_000 + n + p for p in range(_PARTITIONS)),
                    "memory", "another-node",
                )  # fmt: skip
                key = session.pid.encode()
                sends.append(await producer.send(topic, encode_session(session), key))
            await asyncio.gather(*sends)
    finally:
        await producer.stop()


def _after_all_left(url: str, pid: int) -> tuple[int, float]:
    """RSS once the node saw every client leave, and how long that took it (a busy node
    answers /metrics late: a read that times out counts as not yet)."""
    started = time.monotonic()
    while time.monotonic() < started + _LEAVE_WITHIN_S:
        with contextlib.suppress(TimeoutError, urllib.error.URLError):
            if connected_sockets(url) == 0:
                break
        time.sleep(0.2)
    return _settled_rss_kb(pid), time.monotonic() - started


def _machine() -> dict[str, Any]:
    model = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    return {
        "cpu": model.group(1) if model else None,
        "cores": os.cpu_count(),
        "load_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    parser.add_argument(
        "--kafka", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    )
    parser.add_argument("--connections", type=int, default=None, help="default 5000")
    parser.add_argument("--shared-rooms", type=int, default=50, help="rooms sockets share")
    parser.add_argument("--quick", action="store_true", help="500 connections: a smoke test")
    parser.add_argument(
        "--ws-compression", action="store_true", help="the node offers per-message deflate"
    )
    parser.add_argument(
        "--sessions",
        type=int,
        default=0,
        help="first, what this many sessions of another node's clients cost the node",
    )
    parser.add_argument(
        "--idle-s",
        type=float,
        default=None,
        help="CPU sampled with the clients idle (60; quick 10)",
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="keep each run's logs under this directory")
    args = parser.parse_args(argv)
    connections = args.connections or (500 if args.quick else 5000)
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="memory-") as scratch:
            work = args.keep / f"run-{run}" if args.keep else Path(scratch)
            work.mkdir(parents=True, exist_ok=True)
            flags = ["--ws-compression"] if args.ws_compression else []
            idle_s = args.idle_s or (10.0 if args.quick else 60.0)
            figures = measure(
                args.kafka, connections, args.shared_rooms, work, flags, args.sessions, idle_s
            )
        print(json.dumps({"run": run, "machine": _machine(), **figures}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
