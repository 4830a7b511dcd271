"""What a chaos run runs: its Kafka, 3 gateway nodes, and the two client processes (the
official JS clients with the publishers, and the Python `AsyncRecoveringClient`s)."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from ..contestants import PEERS, unlimited
from ..services import Cluster, LineProcess, NodeCommand, free_port, require_tool
from .kafka import BrokerCluster, SingleBroker
from .plan import Plan, Stack

__all__ = ["CHANNEL", "NODES", "Running"]

Json = dict[str, Any]

CHANNEL = "chaos"
NODES = 3
_SCRIPT = PEERS / "loadgen" / "chaos.mjs"
_RECONNECT_TIMEOUT_S = 90.0
_READY_TIMEOUT_S = 90.0


class Running:
    """The services of one run, started in ``work`` by `start` and stopped by `close`."""

    def __init__(self, plan: Plan, stack: Stack, work: Path) -> None:
        self.plan = plan
        self.stack = stack
        self.work = work
        self.kafka: SingleBroker | BrokerCluster = (
            SingleBroker(work, relay="node-cut" in plan.scenarios)
            if stack == "single"
            else BrokerCluster(work)
        )
        self.gateways = Cluster(work)
        self.ports = [free_port() for _ in range(NODES)]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.js: LineProcess | None = None
        self.py: LineProcess | None = None
        #: What the harness did, when: the run's timeline.
        self.timeline: list[Json] = []

    @property
    def topic(self) -> str:
        return f"{CHANNEL}.events"

    def start(self) -> None:
        self.kafka.start()
        self.gateways.start([(port, self._node(n, port)) for n, port in enumerate(self.ports)])
        js_spec, py_spec = self._client_specs()
        node = require_tool("node", "Node.js runs the official socket.io-client")
        self.js = LineProcess(
            [node, str(_SCRIPT), json.dumps(js_spec)], self.work / "js.log", "JS clients"
        )
        self.py = LineProcess(
            [sys.executable, "-m", "benchmarks.chaos.pyclients", json.dumps(py_spec)],
            self.work / "py.log",
            "Python clients",
        )
        self.js.expect("ready", _READY_TIMEOUT_S)
        self.py.expect("ready", _READY_TIMEOUT_S)
        self.js.send("start")
        self.js.expect("started", 10)
        self.note("load started")

    def _node(self, index: int, port: int) -> NodeCommand:
        argv = [
            sys.executable, "-m", "socketio_kafka.gateway", "serve",
            "--kafka", f"kafka://{self.kafka.node_bootstrap(index)}",
            "--port", str(port), "--channel", CHANNEL, "--log-level", "info",
            "--kafka-timeout-ms", str(self.plan.kafka_timeout_ms), *unlimited(),
        ]  # fmt: skip
        if self.stack == "cluster":
            argv += ["--replication-factor", "3", "--min-insync-replicas", "2"]
        return NodeCommand(argv)

    def _client_specs(self) -> tuple[Json, Json]:
        """Receivers spread over rooms and nodes (JS and Python alike); one publisher per
        node, the first pinned to node 0 (the one a node cut isolates)."""
        load, rooms = self.plan.load, len(self.plan.load.rooms)
        js = [
            {"room": load.rooms[i % rooms], "node": (i // rooms) % NODES}
            for i in range(load.js_receivers)
        ]
        py = [
            {"room": load.rooms[i % rooms], "node": (i + i // rooms + 1) % NODES}
            for i in range(load.py_receivers)
        ]
        publishers = [{"node": n % NODES, "pinned": n == 0} for n in range(load.publishers)]
        common = {"urls": self.urls}
        js_spec = {
            **common,
            "receivers": js,
            "publishers": publishers,
            "rooms": list(load.rooms),
            "rate": load.rate,
            "ackTimeoutMs": load.ack_timeout_ms,
        }
        return js_spec, {**common, "receivers": py}

    def note(self, what: str, **fields: Any) -> None:
        self.timeline.append({"t": round(time.time(), 3), "what": what, **fields})

    def clients(self) -> list[LineProcess]:
        return [p for p in (self.js, self.py) if p is not None]

    def route_to(self, up: list[int]) -> None:
        """Where reconnections go from now on, as a load balancer's health checks decide."""
        for process in self.clients():
            process.send("nodes", up=[self.urls[n] for n in up])
            process.expect("nodes", 10)

    def reconnected(self) -> float | None:
        """Seconds until every client (publishers included) is connected; None: some never."""
        started = time.monotonic()
        deadline = started + _RECONNECT_TIMEOUT_S
        while time.monotonic() < deadline:
            down = 0
            for process in self.clients():
                process.send("status")
                down += int(process.expect("status", 10)["disconnected"])
            if down == 0:
                return round(time.monotonic() - started, 2)
            time.sleep(0.2)
        return None

    def busiest(self) -> int:
        """The node most receivers are connected to."""
        where: Counter[str] = Counter()
        for process in self.clients():
            process.send("status")
            where.update(process.expect("status", 10)["where"])
        counts = [where[url] for url in self.urls]
        return counts.index(max(counts))

    def mark(self) -> dict[str, int]:
        """Each publisher's last number so far."""
        assert self.js is not None
        self.js.send("mark")
        return {str(k): int(v) for k, v in self.js.expect("mark", 10)["next"].items()}

    def readyz(self, index: int) -> int | None:
        """Node ``index``'s /readyz status; None when it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.urls[index]}/readyz", timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def wait_readyz(self, index: int, status: int, timeout: float) -> float | None:
        """Seconds until node ``index`` answers ``status``; None if it did not in time."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.readyz(index) == status:
                return round(time.monotonic() - started, 2)
            time.sleep(0.25)
        return None

    def finish(self, settle_timeout_s: float = 30.0) -> tuple[list[Json], list[Json], bool]:
        """Stop publishing, await every ack, then each receiver's stream: (publishers,
        receivers, whether every receiver got its room's last acked events in time)."""
        assert self.js is not None
        assert self.py is not None
        self.js.send("stop")
        publishers: list[Json] = self.js.expect(
            "stopped", self.plan.load.ack_timeout_ms / 1000 + 30
        )["publishers"]
        last = {
            room: {
                str(p["index"]): max(p["acked"][room]) for p in publishers if p["acked"].get(room)
            }
            for room in self.plan.load.rooms
        }
        receivers: list[Json] = []
        settled = True
        for process in (self.js, self.py):
            process.send("settle", last=last, timeoutMs=settle_timeout_s * 1000)
        for process in (self.js, self.py):
            result = process.expect("result", settle_timeout_s + 30)
            receivers += result["receivers"]
            settled = settled and bool(result["settled"])
        return publishers, receivers, settled

    def close(self) -> None:
        for process in self.clients():
            process.close()
        self.gateways.stop()
        self.kafka.close()

    def node_logs(self) -> list[Json]:
        """Per node: lines of its log, and those that say it failed (tracebacks, errors)."""
        summary = []
        for port in self.ports:
            lines = (self.work / f"node-{port}.log").read_text(errors="replace").splitlines()
            summary.append(
                {
                    "port": port,
                    "lines": len(lines),
                    "tracebacks": sum(line.startswith("Traceback") for line in lines),
                    "errors": sum(" ERROR " in line or "ERROR:" in line for line in lines),
                }
            )
        return summary
