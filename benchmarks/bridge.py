"""Inbound bridges (issue 12): records/s through a bridge into rooms, and the latency it adds.

Gateway nodes share a channel; one official JS client (socket.io-client, in a Node process:
peers/loadgen/bridge.mjs) per user, spread over the nodes, joins room ``user:<id>``. A
``socketio-kafka bridge`` process maps a source topic into those rooms
(``room = "user:{key}"``, the event named by the value's ``kind``). A plain aiokafka
producer, standing in for a company's service, writes JSON records keyed by user id, each
carrying its produce time. Reported, per run:

- ``throughput``: ``--backlog`` records are written to the source topic first, then the
  bridge is started; from its start, and from the first record a client received, to the
  last: ``records_per_s`` (first to last) and ``records_per_s_from_start``, with the
  bridge process's CPU (``bridge_cpu_s``, and per 1,000 records) and the nodes';
- ``latency``: ``--rate`` records/s for ``--seconds`` through the bridge, then the same
  rate to the same clients through the emit path (a write-only `AsyncKafkaManager`, as a
  Python service emits): p50/p90/p99/max ms from just before the produce (or the emit) to
  the client's receipt, and ``added_ms``: the bridge's p50 and p99 over the emit path's.
  The source producer has the emit path's acks and linger, so the difference is the
  bridge's hop (a read_committed fetch, a transaction, and the nodes' read_committed
  fetch waiting for its commit). The two paths take turns, not both at once: a node
  reading read_committed holds back emits behind a bridge's open transaction;
- every record's delivery: ``lost``, ``duplicated``, ``out_of_order`` (clients), per path;
- the machine's load (``os.getloadavg`` before and after, and the busy cores over the run):
  the benchmark shares the machine with whatever else runs.

Without ``--kafka`` it starts a broker of its own (and reads its CPU)::

    python -m benchmarks.bridge
    python -m benchmarks.bridge --kafka 127.0.0.1:19092 --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from socketio_kafka.adapter import AsyncKafkaManager, KafkaOptions
from tests.support.cluster import REPO, GatewayProcess, gateway_cluster

from .contestants import PEERS
from .cpu import cpu_seconds, machine_cpu_seconds
from .services import Brokers, LineProcess, free_port, require_tool

__all__ = ["QUICK", "Sizes", "main", "measure"]

_SCRIPT = PEERS / "loadgen" / "bridge.mjs"
_CONNECTS_AT_ONCE = 50
_CHUNK = 5_000
_WITHIN_S = 300.0
# The source records' kinds, which the bridge maps to event names; "emitted": the emit path's.
_WARM, _BACKLOG, _BRIDGED, _EMITTED = "warm", "backlog", "bridged", "emitted"
_EVENTS = (_WARM, _BACKLOG, _BRIDGED, _EMITTED)


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big a run is: the full form by default."""

    users: int = 100  # one client and one room each
    nodes: int = 3
    partitions: int = 6  # the source topic's
    rate: float = 200.0  # records/s on each path in the latency phase
    seconds: float = 30.0  # each path's time in the latency phase
    backlog: int = 100_000


#: The CI form: seconds, not minutes.
QUICK = Sizes(users=10, nodes=2, partitions=3, rate=50.0, seconds=4.0, backlog=5_000)


def _source(channel: str) -> str:
    return f"{channel}-orders"


def _user(sizes: Sizes, seq: int) -> str:
    return f"u{seq % sizes.users}"


def _value(kind: str, user: str, seq: int) -> dict[str, Any]:
    return {"kind": kind, "user": user, "seq": seq, "t": time.time()}


def _bridges_file(path: Path, channel: str, source: str) -> Path:
    """The bridge, named for the run: a consumer group of its own."""
    path.write_text(
        f'[kafka]\nchannel = "{channel}"\n\n'
        f'[[inbound]]\nname = "{channel}"\ntopics = ["{source}"]\n'
        'room = "user:{key}"\nevent = "{value.kind}"\nstart = "earliest"\n'
    )
    return path


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


def _source_producer(bootstrap: str) -> AIOKafkaProducer:
    """A plain producer with the emit path's acks and linger."""
    options = KafkaOptions()
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=options.acks, linger_ms=options.linger_ms
    )


async def _write(producer: AIOKafkaProducer, source: str, kind: str, sizes: Sizes, n: int) -> None:
    """``n`` records of ``kind`` as fast as the producer takes them, one user after another."""
    pending: list[Any] = []
    for seq in range(n):
        user = _user(sizes, seq)
        value = json.dumps(_value(kind, user, seq)).encode()
        pending.append(await producer.send(source, value, key=user.encode()))
        if len(pending) >= _CHUNK:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def _paced(send: Callable[[int], Awaitable[Any]], sizes: Sizes) -> int:
    """``send(seq)`` at ``rate`` a second for ``seconds``, on a fixed schedule (a late one
    is not made up for by a burst: it goes at once, the next on time)."""
    count = int(sizes.rate * sizes.seconds)
    started = time.monotonic()
    pending: list[Any] = []
    for seq in range(count):
        await asyncio.sleep(max(0.0, started + seq / sizes.rate - time.monotonic()))
        pending.append(await send(seq))
    await asyncio.gather(*pending)
    return count


class _Receivers:
    """The JS clients, driven line by line."""

    def __init__(self, urls: Sequence[str], sizes: Sizes, log: Path) -> None:
        node = require_tool("node", "Node.js runs the official socket.io-client")
        spec = {
            "urls": list(urls),
            "rooms": [f"user:u{n}" for n in range(sizes.users)],
            "atOnce": _CONNECTS_AT_ONCE,
            "events": list(_EVENTS),
        }
        self._process = LineProcess([node, str(_SCRIPT), json.dumps(spec)], log, "JS receivers")

    async def ask(self, kind: str, cmd: str, within_s: float = 60, **fields: Any) -> dict[str, Any]:
        self._process.send(cmd, **fields)
        return await asyncio.to_thread(self._process.expect, kind, within_s)

    async def arrived(self, event: str, total: int, within_s: float = _WITHIN_S) -> dict[str, Any]:
        reply = await self.ask(
            "arrived", "await", within_s + 10, event=event, total=total, timeoutMs=within_s * 1000
        )
        if reply["count"] < total:
            raise TimeoutError(f"{reply['count']} of {total} {event!r} events in {within_s}s")
        return reply

    def close(self) -> None:
        self._process.close()


class _Bridge:
    """One ``socketio-kafka bridge`` process, its output in a log."""

    def __init__(self, config: Path, kafka_url: str, log: Path) -> None:
        self.log = log
        port = free_port()
        self._metrics = f"http://127.0.0.1:{port}/metrics"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "socketio_kafka.gateway", "bridge", str(config)),
                    *("--kafka", kafka_url, "--instance", "bench-1", "--log-level", "warning"),
                    *("--metrics-port", str(port)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    async def transactions(self) -> int:
        """Kafka transactions the bridge committed so far (its /metrics)."""
        async with httpx.AsyncClient() as http:
            text = (await http.get(self._metrics, timeout=10)).text
        return int(
            sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "socketio_kafka_bridge_transactions_total"
            )
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class _Cpu:
    """CPU seconds of the bridge, the nodes and the broker (when its pid is known)."""

    def __init__(
        self, bridge: _Bridge, gateways: Sequence[GatewayProcess], broker: int | None
    ) -> None:
        self._bridge = bridge
        self._nodes = [g.process.pid for g in gateways if g.process is not None]
        self._broker = broker
        self._start = self._now()

    def _now(self) -> tuple[float, float, float | None]:
        broker = cpu_seconds(self._broker) if self._broker is not None else None
        return self._bridge.cpu(), sum(map(cpu_seconds, self._nodes)), broker

    def used(self, records: int) -> dict[str, Any]:
        (bridge, nodes, broker), (bridge0, nodes0, broker0) = self._now(), self._start
        per_1k = 1000 / records
        return {
            "bridge_cpu_s": round(bridge - bridge0, 2),
            "bridge_cpu_s_per_1k": round((bridge - bridge0) * per_1k, 4),
            "nodes_cpu_s": round(nodes - nodes0, 2),
            "broker_cpu_s": (
                None if broker is None or broker0 is None else round(broker - broker0, 2)
            ),
        }


async def measure(bootstrap: str, sizes: Sizes, broker_pid: int | None = None) -> dict[str, Any]:
    """One run on ``sizes.nodes`` gateways and a bridge started here (``bootstrap``: the
    broker's host:port; ``broker_pid``: its process, for its CPU)."""
    channel = f"bridge-{uuid.uuid4().hex[:8]}"
    source = _source(channel)
    load_before = os.getloadavg()
    machine0, wall0 = machine_cpu_seconds(), time.monotonic()
    kafka_url = f"kafka://{bootstrap}"
    flags = ["--connect-rate", "1000000"]  # every client comes from one address
    with tempfile.TemporaryDirectory(prefix="bridge-bench-") as scratch:
        async with gateway_cluster(kafka_url, channel, sizes.nodes, flags) as gateways:
            await _create_topic(bootstrap, source, sizes.partitions)
            receivers = _Receivers([g.url for g in gateways], sizes, Path(scratch) / "js.log")
            bridge: _Bridge | None = None
            try:
                await receivers.ask("opened", "open", 60 + sizes.users / 10)
                producer = _source_producer(bootstrap)
                await producer.start()
                try:
                    await _write(producer, source, _BACKLOG, sizes, sizes.backlog)
                    config = _bridges_file(Path(scratch) / "bridges.toml", channel, source)
                    bridge = _Bridge(config, kafka_url, Path(scratch) / "bridge.log")
                    throughput = await _throughput(receivers, bridge, gateways, broker_pid, sizes)
                    latency = await _latency(
                        receivers, producer, bridge, gateways, broker_pid, sizes, kafka_url, channel
                    )
                finally:
                    await producer.stop()
                delivery = {
                    kind: await _delivery(receivers, kind, sizes, count)
                    for kind, count in (
                        (_BACKLOG, sizes.backlog),
                        (_BRIDGED, latency.pop("bridged_count")),
                        (_EMITTED, latency.pop("emitted_count")),
                    )
                }
            except BaseException:
                if bridge is not None:
                    print(bridge.log.read_text(errors="replace")[-3000:], file=sys.stderr)
                raise
            finally:
                if bridge is not None:
                    bridge.stop()
                receivers.close()
    return {
        "sizes": asdict(sizes),
        "throughput": throughput,
        "latency": latency,
        "delivery": delivery,
        "load": {
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "machine_busy_cores": round(
                (machine_cpu_seconds() - machine0) / (time.monotonic() - wall0), 2
            ),
            "cores": os.cpu_count(),
        },
    }


async def _throughput(
    receivers: _Receivers,
    bridge: _Bridge,
    gateways: Sequence[GatewayProcess],
    broker_pid: int | None,
    sizes: Sizes,
) -> dict[str, Any]:
    """The backlog, already in the source topic, through a bridge started just now."""
    started_at = time.time()
    cpu = _Cpu(bridge, gateways, broker_pid)  # the bridge's from its start: imports included
    first = await receivers.arrived(_BACKLOG, 1, 120)
    draining = _Cpu(bridge, gateways, broker_pid)
    last = await receivers.arrived(_BACKLOG, sizes.backlog)
    whole, drained = cpu.used(sizes.backlog), draining.used(sizes.backlog)
    transactions = await bridge.transactions()
    span_s = (last["lastAt"] - first["firstAt"]) / 1000
    return {
        "records": sizes.backlog,
        "startup_s": round(first["firstAt"] / 1000 - started_at, 3),
        "drain_s": round(span_s, 3),
        "records_per_s": round(sizes.backlog / span_s) if span_s > 0 else None,
        "records_per_s_from_start": round(sizes.backlog / (last["lastAt"] / 1000 - started_at)),
        **{f"drain_{name}": value for name, value in drained.items()},
        "bridge_cpu_s_from_start": whole["bridge_cpu_s"],
        "transactions": transactions,
        "records_per_transaction": round(sizes.backlog / transactions, 1),
    }


async def _latency(
    receivers: _Receivers,
    producer: AIOKafkaProducer,
    bridge: _Bridge,
    gateways: Sequence[GatewayProcess],
    broker_pid: int | None,
    sizes: Sizes,
    kafka_url: str,
    channel: str,
) -> dict[str, Any]:
    """The same rate to the same clients through the bridge, then through the emit path."""
    source = _source(channel)
    manager = AsyncKafkaManager(kafka_url, channel=channel, write_only=True)
    await manager.start()
    try:

        async def emit(kind: str, seq: int) -> asyncio.Task[None]:
            user = _user(sizes, seq)
            data = _value(kind, user, seq)
            return asyncio.create_task(manager.emit(kind, data, room=f"user:{user}"))

        async def bridged(kind: str, seq: int) -> Any:
            user = _user(sizes, seq)
            value = json.dumps(_value(kind, user, seq)).encode()
            return await producer.send(source, value, key=user.encode())

        # Warm-up: a record to each room on each path (producers connected, metadata known).
        for seq in range(sizes.users):
            await asyncio.gather(await bridged(_WARM, seq), await emit(_WARM, seq))
        await receivers.arrived(_WARM, 2 * sizes.users, 60)

        figures: dict[str, Any] = {"rate": sizes.rate, "seconds": sizes.seconds}
        for kind, send in ((_BRIDGED, bridged), (_EMITTED, emit)):
            cpu, transactions = _Cpu(bridge, gateways, broker_pid), await bridge.transactions()
            count = await _paced(partial(send, kind), sizes)
            await receivers.arrived(kind, count, 60 + sizes.seconds)
            reply = await receivers.ask("collected", "collect", event=kind, latencies=True)
            latencies = [ms for c in reply["clients"] for ms in c["latencies"]]
            transactions = await bridge.transactions() - transactions
            figures[kind] = {**_quantiles(latencies), **cpu.used(count)}
            figures[kind]["bridge_transactions"] = transactions
            figures[f"{kind}_count"] = count
    finally:
        await manager.stop()
    bridged_ms, emitted_ms = figures[_BRIDGED], figures[_EMITTED]
    figures["added_ms"] = {q: round(bridged_ms[q] - emitted_ms[q], 2) for q in ("p50_ms", "p99_ms")}
    return figures


def _quantiles(ms: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "p50_ms": round(cuts[49], 2),
        "p90_ms": round(cuts[89], 2),
        "p99_ms": round(cuts[98], 2),
        "max_ms": round(max(ms), 2),
        "samples": len(ms),
    }


async def _delivery(receivers: _Receivers, kind: str, sizes: Sizes, count: int) -> dict[str, int]:
    """Each client's events of ``kind`` against what its room was sent: each once, in order."""
    reply = await receivers.ask("collected", "collect", event=kind, latencies=False)
    lost = duplicated = out_of_order = 0
    for n, client in enumerate(reply["clients"]):
        seqs: list[int] = client["seqs"]
        expected = set(range(n, count, sizes.users))
        lost += len(expected - set(seqs))
        duplicated += len(seqs) - len(set(seqs))
        out_of_order += seqs != sorted(seqs)
        assert set(seqs) <= expected, f"client {n} got another room's {kind} events"
    return {
        "sent": count,
        "received": sum(len(c["seqs"]) for c in reply["clients"]),
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order": out_of_order,
    }


def versions(kafka: str | None = None) -> dict[str, str | None]:
    """What ran: the Python packages, Node and its client, and Kafka when known."""
    node = require_tool("node", "Node.js runs the official socket.io-client")
    client = PEERS / "node_modules" / "socket.io-client" / "package.json"
    return {
        "python": platform.python_version(),
        "aiokafka": version("aiokafka"),
        "python-socketio": version("python-socketio"),
        "node": subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip(),
        "socket.io-client": json.loads(client.read_text())["version"],
        "kafka": kafka,
    }


@contextlib.contextmanager
def _own_broker() -> Iterator[tuple[str, int, str | None]]:
    """A Kafka of this run's own, in a scratch dir: its host:port, pid and version."""
    with tempfile.TemporaryDirectory(prefix="bridge-bench-kafka-") as scratch:
        brokers = Brokers(Path(scratch))
        try:
            address = brokers.url("kafka").removeprefix("kafka://")
            yield address, brokers.pid("kafka"), brokers.version("kafka")
        finally:
            brokers.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    full = Sizes()
    parser.add_argument("--kafka", help="host:port (default: a broker of its own)")
    parser.add_argument("--broker-pid", type=int, help="the --kafka broker's, for its CPU")
    parser.add_argument("--quick", action="store_true", help="the CI form: seconds, not minutes")
    parser.add_argument("--users", type=int, help=f"clients, one room each ({full.users})")
    parser.add_argument("--rate", type=float, help=f"records/s on each path ({full.rate:g})")
    parser.add_argument("--seconds", type=float, help=f"each path's ({full.seconds:g})")
    parser.add_argument("--backlog", type=int, help=f"records ({full.backlog:,})")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    sizes = QUICK if args.quick else full
    given = {k: v for k in ("users", "rate", "seconds", "backlog") if (v := getattr(args, k))}
    sizes = Sizes(**{**asdict(sizes), **given})
    with contextlib.ExitStack() as stack:
        if args.kafka:
            kafka, pid, kafka_version = args.kafka, args.broker_pid, None
        else:
            kafka, pid, kafka_version = stack.enter_context(_own_broker())
        for _ in range(args.runs):
            result = asyncio.run(measure(kafka, sizes, pid))
            print(json.dumps({**result, "versions": versions(kafka_version)}), flush=True)


if __name__ == "__main__":
    main()
