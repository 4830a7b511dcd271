"""Mass recovery (issue 10): the clients of a SIGKILLed node reconnect to the survivors.

Three gateway processes share a channel. ``--clients`` recovering clients (the official JS
client; python-socketio's `AsyncRecoveringClient` with ``--client python``) connect to
node 0, each joining a room of its own, and three more clients like them; node 0 is
SIGKILLed; while they are away an external producer writes ``--others`` events to
``--rooms`` other rooms with ``--own`` events to each client's room spread among them
(routing headers included, as docs/wire-format.md describes). Then two of the three
recover, one on each survivor (``warm_up``: a claim waits until its node looks dead, its
heartbeats stopped, which a small gap does not outlast); then the third, "lone", by itself
(one client's replay of the range); then every other client at once, alternately to the
two survivors. Reported, per run:

- ``p50_p90_recovered_s`` and ``last_recovered_s``: from the reconnect command to each
  client holding all it missed (``within_3s``: the issue's goal for the last one);
- ``lost`` and ``duplicated``: missed events not received, or received twice, over all
  clients (``out_of_order``: clients whose events came out of order; ``not_recovered``:
  clients the node gave a fresh session);
- CPU seconds from the reconnect command to the last client done (each reconnect waits
  for the survivors to be idle first): the survivors' and the broker's (from /proc; the
  broker only when its pid is known), and ``cpu_ratio``: the cluster's (survivors and
  broker) for the whole mass recovery over its CPU for the lone client's replay (goal:
  under 3);
- the survivors' replay counters (records read, decoded; cursor passes where the adapter
  has them);
- ``recovery_to_open_cpu``: the mass recovery's cluster CPU over what the same clients
  cost node 0 (and the broker) when they first connected and joined their rooms: a
  recovery's floor is a connect's cost.

With ``--resident N`` each survivor already holds N idle official clients, each in two
rooms (its own and one of 50), connected before node 0 dies, as survivors in production
would: a recovery's cost should not grow with what a survivor holds.

It runs any version of the adapter installed in the running interpreter (the gateways are
started with it), so a venv of an older commit measures "before". Without ``--kafka`` it
starts a broker of its own, whose CPU it then reads::

    python -m benchmarks.mass_recovery --clients 500
    python -m benchmarks.mass_recovery --kafka 127.0.0.1:19092 --client python --clients 200
    python -m benchmarks.mass_recovery --resident 2000
    python -m benchmarks.mass_recovery --history-mb 0  # replays read Kafka
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal, Protocol

import socketio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from socketio_kafka.adapter import AsyncRecoveringClient
from socketio_kafka.adapter.sessions import decode_session
from socketio_kafka.gateway.local_kafka import LocalKafka
from tests.support.cluster import GatewayProcess, gateway_cluster
from tests.support.control import CONTROL

from .contestants import PEERS
from .cpu import cpu_seconds
from .memory import idle_clients
from .services import LineProcess, require_tool, wait_until

__all__ = ["Sizes", "main", "measure", "sessions_saved"]

ClientKind = Literal["js", "python"]

_CHUNK = 5_000
_CONNECTS_AT_ONCE = 50
_CONNECT_TRIES = 10
#: The JS client's default: a claim the node closed for a retry is not noticed sooner.
_CONNECT_TIMEOUT_S = 20
_RECOVER_WITHIN_S = 120
_LONE = "lone"
_WARM_UP = ("warm-up-0", "warm-up-1")
_IDLE_WINDOW_S = 0.5
_IDLE_CPU_S = 0.03
_IDLE_WITHIN_S = 60.0
_SCRIPT = PEERS / "loadgen" / "mass-recovery.mjs"
_RESIDENT_SHARED_ROOMS = 50


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big a run is: the issue's figures by default."""

    clients: int = 500
    own: int = 20  # events to each client's room in the gap
    others: int = 50_000  # events to other rooms in the gap
    rooms: int = 5_000  # other rooms
    client: ClientKind = "js"
    # Idle official clients each survivor already holds, each in 2 rooms (its own and one
    # of 50), as a production node would: what a recovery costs must not grow with them.
    resident: int = 0
    # The survivors' replay history (MiB; None: the gateway's default). 0 makes every
    # replay read Kafka, as on survivors whose history no longer holds the gap (a gap
    # longer than it, or survivors restarted since it began: a rolling deploy).
    history_mb: float | None = None


def _record(room: str, event: str, seq: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    value = {"v": 1, "method": "emit", "event": event, "data": [{"seq": seq}], "room": room}
    headers = [("sio.v", b"1"), ("sio.method", b"emit"), ("sio.ns", b"/")]
    return f"/#{room}".encode(), json.dumps(value).encode(), [*headers, ("sio.room", room.encode())]


async def _produce(bootstrap: str, topic: str, own_rooms: list[str], sizes: Sizes) -> int:
    """The gap: ``own`` events to each own room, spread evenly among the others."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        every = max(1, sizes.others // sizes.own)
        pending: list[Any] = []
        written = 0
        for n in range(sizes.others):
            records = [_record(f"other-{n % sizes.rooms}", "other", n)]
            if n % every == 0 and (seq := n // every) < sizes.own:
                records += [_record(room, "own", seq) for room in own_rooms]
            for key, value, headers in records:
                pending.append(await producer.send(topic, value, key=key, headers=headers))
            written += len(records)
            if len(pending) >= _CHUNK:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return written
    finally:
        await producer.stop()


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one client got back: its own events in arrival order, and when it had them all
    (seconds from the reconnect command; None: never)."""

    room: str
    own: list[int]
    connect_s: float | None  # the CONNECT reply (a recovery's replay follows it, since session 29)
    done_s: float | None
    recovered: bool
    retries: int
    others: int


class _Fleet(Protocol):
    """The clients, whichever library they use: socket n is in ``rooms[n]``."""

    async def open(self, url: str) -> list[str]: ...  # each one's sid
    async def drops(self) -> None: ...
    async def reconnect(
        self, clients: Sequence[int], urls: Sequence[str], own: int
    ) -> list[_Outcome]: ...
    async def close(self) -> None: ...


class _JsFleet:
    """Official socket.io-client sockets in a Node process (peers/loadgen/mass-recovery.mjs)."""

    def __init__(self, rooms: Sequence[str], log: Path) -> None:
        self._rooms = list(rooms)
        self._log = log
        self._process: LineProcess | None = None

    async def _ask(self, kind: str, within_s: float, cmd: str, **fields: Any) -> dict[str, Any]:
        assert self._process is not None
        self._process.send(cmd, **fields)
        return await asyncio.to_thread(self._process.expect, kind, within_s)

    async def open(self, url: str) -> list[str]:
        node = require_tool("node", "Node.js runs the official socket.io-client")
        spec = {
            "url": url,
            "rooms": self._rooms,
            "atOnce": _CONNECTS_AT_ONCE,
            "connectTimeoutMs": _CONNECT_TIMEOUT_S * 1000,
        }
        argv = [node, str(_SCRIPT), json.dumps(spec)]
        self._process = LineProcess(argv, self._log, "JS clients")
        opened = await self._ask("opened", 60 + len(self._rooms) / 2, "open")
        return list(opened["sids"])

    async def drops(self) -> None:
        dropped = await self._ask("dropped", 40, "drops", timeoutMs=30_000)
        if dropped["connected"]:
            raise TimeoutError(f"{dropped['connected']} clients still connected to a dead node")

    async def reconnect(
        self, clients: Sequence[int], urls: Sequence[str], own: int
    ) -> list[_Outcome]:
        timeout_ms = _RECOVER_WITHIN_S * 1000
        reply = await self._ask(
            "reconnected", _RECOVER_WITHIN_S + 30, "reconnect",
            clients=list(clients), urls=list(urls), own=own, timeoutMs=timeout_ms,
        )  # fmt: skip
        return [
            _Outcome(
                room=c["room"],
                own=c["own"],
                connect_s=c["connectMs"] / 1000 if c.get("connectMs") is not None else None,
                done_s=c["doneMs"] / 1000 if c.get("doneMs") is not None else None,
                recovered=c["recovered"],
                retries=c["retries"],
                others=c["others"],
            )
            for c in reply["clients"]
        ]

    async def close(self) -> None:
        if self._process is not None:
            self._process.close()


class _PyClient:
    def __init__(self, room: str) -> None:
        self.room = room
        self.client = AsyncRecoveringClient(reconnection=False)
        self.own: list[int] = []
        self.other = 0
        self.done_at: float | None = None
        self.connected_at: float | None = None
        self.retries = 0
        self.client.on("own", self._own)
        self.client.on("other", self._other)

    async def _own(self, data: dict[str, Any]) -> None:
        self.own.append(data["seq"])

    async def _other(self, data: Any) -> None:
        self.other += 1

    async def connect(self, url: str) -> None:
        for _ in range(_CONNECT_TRIES - 1):
            try:
                await self.client.connect(
                    url, transports=["websocket"], wait_timeout=_CONNECT_TIMEOUT_S
                )
            except socketio.exceptions.ConnectionError:
                self.retries += 1  # as a client with reconnection on would, a moment later
                await asyncio.sleep(0.5)
            else:
                return
        await self.client.connect(url, transports=["websocket"], wait_timeout=_CONNECT_TIMEOUT_S)

    async def recover(self, url: str, own: int, started: float) -> None:
        self.own, self.other, self.retries, self.done_at = [], 0, 0, None
        await self.connect(url)
        self.connected_at = time.perf_counter() - started
        try:
            await wait_until(lambda: len(set(self.own)) >= own, _RECOVER_WITHIN_S, self.room)
        except TimeoutError:
            return  # counted as lost
        self.done_at = time.perf_counter() - started

    def outcome(self) -> _Outcome:
        recovered = self.client.recovered.get("/") is True
        return _Outcome(
            self.room,
            self.own,
            self.connected_at,
            self.done_at,
            recovered,
            self.retries,
            self.other,
        )


class _PyFleet:
    """python-socketio clients (`AsyncRecoveringClient`) in this process."""

    def __init__(self, rooms: Sequence[str]) -> None:
        self._clients = [_PyClient(room) for room in rooms]

    async def open(self, url: str) -> list[str]:
        clients = self._clients
        for at in range(0, len(clients), _CONNECTS_AT_ONCE):
            chunk = clients[at : at + _CONNECTS_AT_ONCE]
            await asyncio.gather(*(c.connect(url) for c in chunk))
            await asyncio.gather(*(c.client.call("join", {"room": c.room}) for c in chunk))
        return [str(c.client.get_sid("/")) for c in clients]

    async def drops(self) -> None:
        await wait_until(lambda: not any(c.client.connected for c in self._clients), 30, "drops")

    async def reconnect(
        self, clients: Sequence[int], urls: Sequence[str], own: int
    ) -> list[_Outcome]:
        picked = [self._clients[n] for n in clients]
        started = time.perf_counter()
        await asyncio.gather(
            *(c.recover(urls[k % len(urls)], own, started) for k, c in enumerate(picked))
        )
        return [c.outcome() for c in picked]

    async def close(self) -> None:
        await asyncio.gather(
            *(c.client.disconnect() for c in self._clients if c.client.connected),
            return_exceptions=True,
        )


async def sessions_saved(bootstrap: str, channel: str, rooms: dict[str, str]) -> None:
    """Wait until the sessions topic holds each sid's session in its room (``rooms``: sid
    to room, emptied as found): a node killed before it wrote a session leaves nothing to
    recover."""
    consumer = AIOKafkaConsumer(
        f"{channel}.sessions", bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async for record in consumer:
            if record.value and not record.key.startswith(b"__"):
                session = decode_session(record.value)
                if rooms.get(session.sid) in session.rooms:
                    del rooms[session.sid]
                    if not rooms:
                        return
    finally:
        await consumer.stop()


async def _stats(controls: list[socketio.AsyncClient]) -> list[dict[str, Any]]:
    replies = await asyncio.gather(
        *(c.call("stats", {}, namespace=CONTROL, timeout=60) for c in controls)
    )
    return list(replies)


class _Cpu:
    """CPU seconds of the survivors and the broker (when its pid is known) since `start`."""

    def __init__(self, survivors: Sequence[GatewayProcess], broker_pid: int | None) -> None:
        self._pids = [g.process.pid for g in survivors if g.process is not None]
        self._broker = broker_pid
        self._start = self._now()

    def _now(self) -> tuple[list[float], float | None]:
        broker = cpu_seconds(self._broker) if self._broker is not None else None
        return [cpu_seconds(pid) for pid in self._pids], broker

    def used(self) -> dict[str, Any]:
        (nodes, broker), (nodes0, broker0) = self._now(), self._start
        survivors = [round(b - a, 2) for a, b in zip(nodes0, nodes, strict=True)]
        broker_s = None if broker is None or broker0 is None else round(broker - broker0, 2)
        return {
            "survivors_cpu_s": survivors,
            "broker_cpu_s": broker_s,
            "cluster_cpu_s": round(sum(survivors) + (broker_s or 0.0), 2),
        }


def _rooms(sizes: Sizes) -> list[str]:
    """Each client's room: client n's, then the lone one's and the warm-up ones'."""
    return [*(f"own-{n}" for n in range(sizes.clients)), _LONE, *_WARM_UP]


async def _await_idle(survivors: Sequence[GatewayProcess]) -> float:
    """Wait until the survivors are done with the gap and the node's death (under
    _IDLE_CPU_S in a window of _IDLE_WINDOW_S), so a recovery's CPU is its own; how long
    that took (-1.0: never within _IDLE_WITHIN_S, and the figures include the rest)."""
    started = time.monotonic()
    while time.monotonic() - started < _IDLE_WITHIN_S:
        cpu = _Cpu(survivors, None)
        await asyncio.sleep(_IDLE_WINDOW_S)
        if cpu.used()["cluster_cpu_s"] < _IDLE_CPU_S:
            return round(time.monotonic() - started, 1)
    return -1.0


async def measure(bootstrap: str, sizes: Sizes, broker_pid: int | None = None) -> dict[str, Any]:
    """One mass recovery on a cluster of three gateways started here (``bootstrap``: the
    broker's host:port; ``broker_pid``: its process, for its CPU)."""
    channel = f"mass-{uuid.uuid4().hex[:8]}"
    # Every client here comes from one address: a per-address limit would pace them. The
    # sessions outlive a slow gap (a busy machine writes 50,000 records in a minute).
    flags = ["--recovery-window", "900"]
    if find_spec("socketio_kafka.gateway.limits"):
        flags += ["--connect-rate", "1000000", "--max-connections", str(sizes.resident + 10_000)]
    if sizes.history_mb is not None:
        flags += ["--replay-history-mb", f"{sizes.history_mb:g}"]
    rooms = _rooms(sizes)
    with tempfile.TemporaryDirectory(prefix="mass-recovery-") as scratch:
        fleet: _Fleet = (
            _JsFleet(rooms, Path(scratch) / "clients.log")
            if sizes.client == "js"
            else _PyFleet(rooms)
        )
        async with gateway_cluster(bootstrap, channel, 3, flags) as gateways:
            controls: list[socketio.AsyncClient] = []
            residents: list[LineProcess] = []
            try:
                for n, gateway in enumerate(gateways[1:]):
                    if sizes.resident:
                        residents.append(
                            await asyncio.to_thread(
                                idle_clients,
                                gateway.url,
                                sizes.resident,
                                _RESIDENT_SHARED_ROOMS,
                                Path(scratch) / f"residents-{n}.log",
                                f"resident-{n}-",
                            )
                        )
                    control = socketio.AsyncClient()
                    await control.connect(
                        gateway.url, namespaces=[CONTROL], transports=["websocket"]
                    )
                    controls.append(control)
                return await _run(bootstrap, channel, sizes, broker_pid, fleet, gateways, controls)
            finally:
                await fleet.close()
                for held in residents:
                    held.close()
                await asyncio.gather(*(c.disconnect() for c in controls), return_exceptions=True)


async def _run(
    bootstrap: str,
    channel: str,
    sizes: Sizes,
    broker_pid: int | None,
    fleet: _Fleet,
    gateways: list[GatewayProcess],
    controls: list[socketio.AsyncClient],
) -> dict[str, Any]:
    rooms = _rooms(sizes)
    cpu = _Cpu(gateways[:1], broker_pid)
    sids = await fleet.open(gateways[0].url)
    async with asyncio.timeout(120):
        await sessions_saved(bootstrap, channel, dict(zip(sids, rooms, strict=True)))
    opened = cpu.used()
    gateways[0].stop(signal.SIGKILL)
    await fleet.drops()

    before = await _stats(controls)
    written = await _produce(bootstrap, f"{channel}.events", rooms, sizes)
    await _wait_consumed(controls, before, written)
    survivors = gateways[1:]
    urls = [g.url for g in survivors]

    warm_up = await fleet.reconnect([sizes.clients + 1, sizes.clients + 2], urls, sizes.own)
    idle_s = [await _await_idle(survivors)]
    cpu = _Cpu(survivors, broker_pid)
    [lone] = await fleet.reconnect([sizes.clients], urls[:1], sizes.own)
    alone = cpu.used()

    idle_s.append(await _await_idle(survivors))
    before = await _stats(controls)
    cpu = _Cpu(survivors, broker_pid)
    outcomes = await fleet.reconnect(range(sizes.clients), urls, sizes.own)
    used = cpu.used()
    after = await _stats(controls)

    def delta(name: str) -> int:
        return sum(a.get(name, -1) - b.get(name, -1) for a, b in zip(after, before, strict=True))

    done = [o.done_s for o in outcomes if o.done_s is not None]
    last = max(done) if len(done) == len(outcomes) else None
    return {
        "client": sizes.client,
        "clients": sizes.clients,
        "own": sizes.own,
        "others": sizes.others,
        "rooms": sizes.rooms,
        "resident": sizes.resident,
        "history_mb": sizes.history_mb,
        "p50_p90_recovered_s": _quantiles(done),
        "last_recovered_s": round(last, 3) if last is not None else None,
        "p50_p90_connected_s": _quantiles([o.connect_s for o in outcomes if o.connect_s]),
        # The CONNECT reply comes before the replay (docs/decisions.md, session 29).
        "connected_before_recovered": sum(
            o.connect_s is not None and o.done_s is not None and o.connect_s < o.done_s
            for o in outcomes
        ),
        "within_3s": last is not None and last <= 3.0,
        "recovered_all": len(done),
        **_losses(outcomes, sizes.own),
        "connect_retries": sum(o.retries for o in outcomes),
        "others_received": sum(o.others for o in outcomes),
        **used,
        "lone": {
            "recovery_s": round(lone.done_s, 3) if lone.done_s is not None else None,
            "connect_s": round(lone.connect_s, 3) if lone.connect_s is not None else None,
            **_losses([lone], sizes.own),
            "connect_retries": lone.retries,
            **alone,
        },
        "warm_up": {
            "recovery_s": [round(o.done_s, 3) if o.done_s is not None else None for o in warm_up],
            **_losses(warm_up, sizes.own),
        },
        "cpu_ratio": (
            round(used["cluster_cpu_s"] / alone["cluster_cpu_s"], 1)
            if alone["cluster_cpu_s"]
            else None
        ),
        # What the same clients cost connecting and joining their rooms afresh, on node 0.
        "opened_cluster_cpu_s": opened["cluster_cpu_s"],
        "recovery_to_open_cpu": (
            round(used["cluster_cpu_s"] / opened["cluster_cpu_s"], 2)
            if opened["cluster_cpu_s"]
            else None
        ),
        "replay_records_read": delta("replay_records_read"),
        "replay_records_decoded": delta("replay_records_decoded"),
        "replay_passes": delta("replay_passes") if "replay_passes" in after[0] else None,
        "replay_records_reused": (
            delta("replay_records_reused") if "replay_records_reused" in after[0] else None
        ),
        "survivors_warnings": _warnings(survivors),
        "idle_wait_s": idle_s,
    }


def _losses(outcomes: Sequence[_Outcome], own: int) -> dict[str, int]:
    expected = set(range(own))
    return {
        "lost": sum(len(expected - set(o.own)) for o in outcomes),
        "duplicated": sum(len(o.own) - len(set(o.own)) for o in outcomes),
        "out_of_order": sum(1 for o in outcomes if o.own != sorted(o.own)),
        "not_recovered": sum(1 for o in outcomes if not o.recovered),
    }


def _quantiles(values: list[float]) -> list[float] | None:
    if not values:
        return None
    cuts = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
    return [round(cuts[4], 3), round(cuts[8], 3)]


def _warnings(gateways: Sequence[GatewayProcess]) -> dict[str, int]:
    """The survivors' warnings and errors, by message (without times and ids)."""
    seen: dict[str, int] = {}
    for gateway in gateways:
        assert gateway.log_path is not None
        for line in gateway.log_path.read_text(errors="replace").splitlines():
            if " WARNING " in line or " ERROR " in line:
                message = re.sub(r"sid \S+", "sid *", " ".join(line.split()[2:]))[:120]
                seen[message] = seen.get(message, 0) + 1
    return seen


async def _wait_consumed(
    controls: list[socketio.AsyncClient], before: list[dict[str, Any]], written: int
) -> None:
    deadline = time.monotonic() + 600
    while True:
        now = await _stats(controls)
        if all(
            n["records_consumed"] + n["records_skipped"]
            >= b["records_consumed"] + b["records_skipped"] + written
            for n, b in zip(now, before, strict=True)
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the survivors did not read the gap")
        await asyncio.sleep(0.2)


@contextlib.contextmanager
def own_broker() -> Iterator[tuple[str, int]]:
    """A Kafka of this run's own, in a scratch dir: its address and pid."""
    with tempfile.TemporaryDirectory(prefix="mass-recovery-kafka-") as scratch:
        kafka = LocalKafka(Path(scratch))
        address = kafka.start()
        try:
            status = kafka.status()
            assert status is not None
            yield address, status.pid
        finally:
            kafka.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    issue = Sizes()
    parser.add_argument("--kafka", help="host:port (default: a broker of its own)")
    parser.add_argument("--broker-pid", type=int, help="the --kafka broker's, for its CPU")
    parser.add_argument("--client", choices=["js", "python"], default="js")
    parser.add_argument("--clients", type=int, default=issue.clients)
    parser.add_argument("--own", type=int, default=issue.own, help="events to each client's room")
    parser.add_argument("--others", type=int, default=issue.others, help="events to other rooms")
    parser.add_argument("--rooms", type=int, default=issue.rooms, help="other rooms")
    parser.add_argument(
        "--resident", type=int, default=0, help="idle clients each survivor holds already"
    )
    parser.add_argument(
        "--history-mb",
        type=float,
        help="the survivors' replay history (default: the gateway's; 0: replays read Kafka)",
    )
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    sizes = Sizes(
        args.clients, args.own, args.others, args.rooms, args.client, args.resident, args.history_mb
    )
    with contextlib.ExitStack() as stack:
        kafka, pid = (
            (args.kafka, args.broker_pid) if args.kafka else stack.enter_context(own_broker())
        )
        for _ in range(args.runs):
            print(json.dumps(asyncio.run(measure(kafka, sizes, pid))), flush=True)


if __name__ == "__main__":
    main()
