"""The flood run of issue 11: do a node's limits hold, and are its other clients served?

One real gateway node (``socketio-kafka serve``, its limits given explicitly), and the other
clients: official socket.io-client receivers in a room and a publisher publishing into it
through the gateway protocol at ``--rate`` per second (a Node process,
``peers/loadgen/flood.mjs``), timing each event from its publish to each receiver, with a
newcomer connecting once a second. Two phases of ``--seconds`` each: a quiet one, then the
same with two hostile clients in a process of their own (its CPU is reported: on one machine
it is taken from the node), each from its own loopback address (the node keys its
per-address limit on the peer; the other clients are 127.0.0.1):

- from 127.0.0.2, ``--concurrency`` loops opening raw WebSocket connections to the Engine.IO
  handshake as fast as they can, closing (RST) what gets through;
- from 127.0.0.3, one Socket.IO socket writing ``publish`` events (each with an ack id, into
  a room no one is in) as fast as its TCP connection takes them, reading the acks on the side;
  when the time is up it counts acks for 2 s more and resets the connection.

Bars: ``limits_hold`` (what each flooder got through is within its token bucket: burst, twice
the rate, plus the rate per second of its window), ``limits_engaged`` (both were refused, and
the node counted it; the event flooder told so in acks, or cut), ``node_up`` (alive, /readyz
200, its Socket.IO sockets back to the other clients': the event flooder's went),
``others_served`` (every event reached every other client, none dropped, every newcomer got
in), ``other_p99_within_2x`` (their p99 under the flood within 2x of the quiet phase's).

    python -m benchmarks.flood [--seconds 20] [--kafka host:port]
    python -m benchmarks.flood --quick  # 4 s phases, --event-rate 25 --rate 10: a smoke test
    python -m benchmarks.flood --only events  # one flooder alone: what it costs the others

``--kafka`` defaults to ``KAFKA_BOOTSTRAP_SERVERS``; without either, a private `LocalKafka`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import importlib.metadata
import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from socketio_kafka.gateway.limits import Limits
from socketio_kafka.gateway.local_kafka import LocalKafka

from .contestants import PEERS
from .services import (
    BenchmarkError,
    Cluster,
    LineProcess,
    NodeCommand,
    free_port,
    require_tool,
    wait_until,
)

__all__ = ["Upgrade", "frame", "main", "read_frame", "run", "upgrade"]

Json = dict[str, Any]

_SCRIPT = PEERS / "loadgen" / "flood.mjs"
_CONNECT_FROM = "127.0.0.2"
_EMIT_FROM = "127.0.0.3"
_HANDSHAKE_TIMEOUT_S = 10.0
_SETTLE_S = 30.0
#: How long the event flooder, done writing, still counts acks before it resets.
_ACK_GRACE_S = 2.0
_RSS_EVERY_S = 0.2
_BATCH = 100  # publish frames written per drain
#: A node starved of CPU by a busy machine read as few as 100 events/s from the flooding
#: socket, and its default limit of 1,000 never refused: --quick lowers it, so that it does,
#: and the other clients' rate below it (the limit is every socket's).
_QUICK_EVENT_RATE = 25.0
_QUICK_RATE = 10
#: The issue's bar.
_P99_BAR = 2.0
_REFUSALS = "socketio_kafka_limit_refusals_total"
_PUBLISHES = 'socketio_kafka_events_in_total{event="publish"}'


# -- a raw WebSocket, enough for the Engine.IO handshake and text frames ---------------------


def frame(text: str, opcode: int = 0x1) -> bytes:
    """One client frame; the mask is zeros (any key is valid), so the payload is as is."""
    data = text.encode()
    return frame_header(len(data), opcode) + data


def frame_header(size: int, opcode: int = 0x1) -> bytes:
    """The header of a client frame (final, masked with zeros) of ``size`` bytes, which
    need not follow."""
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 2**16:
        length = b"\xfe" + size.to_bytes(2)
    else:
        length = b"\xff" + size.to_bytes(8)
    return bytes([0x80 | opcode]) + length + b"\0\0\0\0"


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame (never masked): its opcode and payload."""
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2))
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(size)


@dataclass
class Upgrade:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int
    body: bytes


async def upgrade(host: str, port: int, source: str) -> Upgrade:
    """A new TCP connection from ``source`` asking for the Engine.IO WebSocket handshake.

    SO_LINGER 0: its close is a reset, as a flooder's would be, and leaves no TIME_WAIT
    to run the source ports out.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    sock.setblocking(False)
    try:
        sock.bind((source, 0))
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    try:
        writer.write(
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        body = b""
        if status != 101:
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    body = await reader.readexactly(int(line.split(b":")[1]))
    except BaseException:  # reset by the node, say: nothing to hand back
        _close(writer)
        raise
    return Upgrade(reader, writer, status, body)


def _close(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()


# -- the connection flooder ----------------------------------------------------------------


@dataclass
class ConnectFlood:
    """What the connection flooder saw, client-side."""

    attempts: int = 0
    accepted: int = 0
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    started: float = 0.0
    ended: float = 0.0

    def summary(self, rate: float) -> Json:
        window = self.ended - self.started
        bound = 2 * rate + rate * window  # the bucket's burst, then its rate
        return {
            "from": _CONNECT_FROM,
            "attempts": self.attempts,
            "attempts_per_s": round(self.attempts / window),
            "accepted": self.accepted,
            "accepted_per_s": round(self.accepted / window, 1),
            "accepted_bound": int(bound),
            "refused": dict(self.refused),
            "failed": dict(self.failed),
            "window_s": round(window, 2),
        }

    def held(self, summary: Json) -> bool:
        return bool(self.accepted <= summary["accepted_bound"])

    def engaged(self, counted: dict[str, int]) -> bool:
        """Refused, and the node counted at least what the flooder was told."""
        return 0 < self.refused.total() <= counted["connect_rate"]


async def _attempt(host: str, port: int, tally: ConnectFlood) -> None:
    tally.attempts += 1
    try:
        async with asyncio.timeout(_HANDSHAKE_TIMEOUT_S):
            try:
                up = await upgrade(host, port, _CONNECT_FROM)
            except (ConnectionResetError, asyncio.IncompleteReadError):
                tally.refused["reset at accept"] += 1  # the node's answer to a flooder
                return
            try:
                if up.status == 101:
                    _, payload = await read_frame(up.reader)
                    if payload.startswith(b"0{"):
                        tally.accepted += 1
                    else:
                        tally.failed[f"no open packet: {payload[:40]!r}"] += 1
                else:
                    message = json.loads(up.body).get("message") if up.body else None
                    tally.refused[f"HTTP {up.status} {message or ''}".strip()] += 1
            finally:
                _close(up.writer)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        tally.failed[type(exc).__name__] += 1


async def flood_connections(host: str, port: int, seconds: float, concurrency: int) -> ConnectFlood:
    """``concurrency`` loops, each opening one connection after another for ``seconds``."""
    tally = ConnectFlood(started=time.monotonic())
    end = tally.started + seconds

    async def loop() -> None:
        while time.monotonic() < end:
            await _attempt(host, port, tally)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    tally.ended = time.monotonic()  # every attempt answered: the node admitted within
    return tally


# -- the event flooder ---------------------------------------------------------------------


@dataclass
class EventFlood:
    """What the event flooder saw, client-side."""

    sent: int = 0
    accepted: int = 0
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    closed_by_node: bool = False
    started: float = 0.0
    stopped: float = 0.0
    ended: float = 0.0

    @property
    def answered(self) -> int:
        return self.accepted + self.refused.total()

    def summary(self, rate: float) -> Json:
        window = self.ended - self.started
        bound = 2 * rate + rate * window
        return {
            "from": _EMIT_FROM,
            "sent": self.sent,
            "sent_per_s": round(self.sent / (self.stopped - self.started)),
            "accepted": self.accepted,
            "accepted_per_s": round(self.accepted / window, 1),
            "accepted_bound": int(bound),
            "refused": dict(self.refused),
            "unanswered_at_reset": self.sent - self.answered,
            "closed_by_node": self.closed_by_node,
            "window_s": round(window, 2),
        }

    def held(self, summary: Json) -> bool:
        return bool(self.accepted <= summary["accepted_bound"])

    def engaged(self, counted: dict[str, int]) -> bool:
        """Refused, and the node counted at least what the flooder was told. A flooder cut
        for going far past its limit (`GuardedServer._cut`) may have been told nothing: its
        refusals are dropped with the connection's queue, or reach its kernel and go with
        the reset before it reads them (a flooder writing 100,000 frames a second reads
        late)."""
        told, counted_here = self.refused.total(), counted["event_rate"]
        return (told > 0 or self.closed_by_node) and counted_here > 0 and told <= counted_here


async def _read_acks(up: Upgrade, tally: EventFlood) -> None:
    """Count the acks as they come; answer the node's pings."""
    try:
        while True:
            opcode, payload = await read_frame(up.reader)
            if opcode == 0x8:
                break
            if payload == b"2":
                up.writer.write(frame("3"))
            elif payload.startswith(b"43"):
                reply = json.loads(payload[payload.index(b"[") :])[0]
                if reply.get("ok"):
                    tally.accepted += 1
                else:
                    tally.refused[str(reply.get("error"))] += 1
                if tally.stopped and tally.answered >= tally.sent:
                    return  # every ack in
    except (OSError, asyncio.IncompleteReadError):
        pass
    tally.closed_by_node = True


async def flood_events(host: str, port: int, seconds: float) -> EventFlood:
    """One socket writing ``publish`` events for ``seconds`` as fast as the node reads them,
    then counting acks for `_ACK_GRACE_S` more and resetting the connection."""
    up = await upgrade(host, port, _EMIT_FROM)
    if up.status != 101:
        raise BenchmarkError(f"the event flooder was refused: {up.status} {up.body!r}")
    tally = EventFlood()
    try:
        async with asyncio.timeout(_HANDSHAKE_TIMEOUT_S):
            _, opened = await read_frame(up.reader)
            up.writer.write(frame("40"))
            _, connected = await read_frame(up.reader)
        if not (opened.startswith(b"0{") and connected.startswith(b"40{")):
            raise BenchmarkError(f"event flooder handshake: {opened!r} {connected!r}")
        reading = asyncio.create_task(_read_acks(up, tally))
        room = f"flood-{uuid.uuid4().hex[:6]}"
        tally.started = time.monotonic()
        end = tally.started + seconds
        while time.monotonic() < end and not reading.done():
            first = tally.sent
            up.writer.write(
                b"".join(
                    frame(f'42{n}["publish",{{"room":"{room}","event":"ev","data":{n}}}]')
                    for n in range(first, first + _BATCH)
                )
            )
            tally.sent += _BATCH
            try:
                await asyncio.wait_for(up.writer.drain(), max(0.0, end - time.monotonic()))
            except TimeoutError:  # the node reads no more: time is up
                pass
            except ConnectionError:  # the node reset the connection (its reader saw it too)
                break
        tally.stopped = time.monotonic()
        # What the node holds unread beyond the grace goes with the reset, as it would
        # when a real flooder left.
        if tally.answered < tally.sent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reading), _ACK_GRACE_S)
        reading.cancel()
        tally.ended = time.monotonic()  # every ack counted came within
    finally:
        _close(up.writer)
    return tally


# -- the flooders' process -----------------------------------------------------------------


@dataclass
class Floods:
    """What the flooders saw (None: not run), and the CPU their process took."""

    connects: ConnectFlood | None
    events: EventFlood | None
    cpu_s: float


@dataclass(frozen=True)
class Kinds:
    """Which flooders run: ``connections`` loops opening connections (0: none), and the
    event flooder or not."""

    connections: int
    events: bool


def _flooders(port: int, seconds: float, kinds: Kinds, nice: int, conn: Connection) -> None:
    """The flooders in one process of their own, started on ``conn``'s first message: the
    harness measures what their CPU takes from a node sharing the machine."""
    os.nice(nice)

    async def connections() -> ConnectFlood | None:
        if not kinds.connections:
            return None
        return await flood_connections("127.0.0.1", port, seconds, kinds.connections)

    async def events() -> EventFlood | None:
        return await flood_events("127.0.0.1", port, seconds) if kinds.events else None

    async def flood() -> Floods:
        return Floods(*await asyncio.gather(connections(), events()), cpu_s=0.0)

    conn.recv()
    try:
        floods = asyncio.run(flood())
        floods.cpu_s = time.process_time()
        conn.send(floods)
    except Exception:
        conn.send(traceback.format_exc())


class FloodProcess:
    """The parent's end of `_flooders`."""

    def __init__(self, port: int, seconds: float, kinds: Kinds, nice: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._seconds = seconds
        self._process = context.Process(
            target=_flooders, args=(port, seconds, kinds, nice, child), daemon=True
        )
        self._process.start()

    async def run(self) -> Floods:
        self._conn.send("go")
        loop = asyncio.get_running_loop()
        within = self._seconds + _HANDSHAKE_TIMEOUT_S + _ACK_GRACE_S + 30
        if not await loop.run_in_executor(None, self._conn.poll, within):
            raise BenchmarkError("the flooders did not finish")
        result = self._conn.recv()
        if not isinstance(result, Floods):
            raise BenchmarkError(f"the flooders failed:\n{result}")
        return result

    def close(self) -> None:
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


# -- the node ------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise BenchmarkError(f"no VmRSS for pid {pid}")


def _cpu_s(pid: int) -> float:
    """The process's user + system CPU seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (every core, every process)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def _counters(url: str) -> dict[str, float]:
    """The node's refusals by limit, and the publish events it read (``publish``)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith(_REFUSALS + "{") or line.startswith(_PUBLISHES + " "):
            label = line.split('"')[1] if "{" in line.split(" ")[0] else "publish"
            found[label] = float(line.rsplit(" ", 1)[1])
    return found


def _connected(url: str) -> int:
    """The node's own count of connected sockets (its /metrics)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(r'^socketio_kafka_connected_sockets\{namespace="/"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def _ready(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class _Others(LineProcess):
    """The Node process holding the other clients."""

    def __init__(self, url: str, receivers: int, rate: int, log: Path) -> None:
        node = require_tool("node", "Node.js runs the official socket.io-client")
        spec = {"url": url, "receivers": receivers, "rate": rate, "room": "others"}
        super().__init__([node, str(_SCRIPT), json.dumps(spec)], log, "other clients")


@dataclass
class _Gauges:
    """The node's RSS and CPU and the machine's over one phase."""

    pid: int
    peak_rss: float = 0.0

    async def sample(self) -> None:
        while True:
            self.peak_rss = max(self.peak_rss, _rss_mb(self.pid))
            await asyncio.sleep(_RSS_EVERY_S)

    async def phase(self, work: Any) -> tuple[Any, Json]:
        """Run ``work``; its result and what the node and the machine spent meanwhile."""
        self.peak_rss = rss = _rss_mb(self.pid)
        cpu, busy, started = _cpu_s(self.pid), _machine_busy_s(), time.monotonic()
        sampling = asyncio.create_task(self.sample())
        try:
            result = await work
        finally:
            sampling.cancel()
        elapsed = time.monotonic() - started
        node = (_cpu_s(self.pid) - cpu) / elapsed
        machine = (_machine_busy_s() - busy) / elapsed
        return result, {
            "rss_mb_before": rss,
            "rss_mb_peak": self.peak_rss,
            "node_cpu_cores": round(node, 2),
            "machine_busy_cores": round(machine, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        }


async def _measure(others: _Others, seconds: float) -> Json:
    others.send("measure", seconds=seconds)
    loop = asyncio.get_running_loop()
    measured: Json = await loop.run_in_executor(
        None, others.expect, "measured", seconds + 2 * _SETTLE_S + 30
    )
    del measured["type"]
    return measured


def _served(phase: Json) -> bool:
    """Every other client stayed connected and got every event; every newcomer got in."""
    return bool(
        phase["receivers_connected"] == phase["receivers"]
        and phase["receiver_disconnects"] == 0
        and phase["publisher_connected"]
        and not phase["ack_errors"]
        and phase["acked"] == phase["sent"]
        and phase["delivered_min"] == phase["sent"]
        and phase["newcomers"]["ok"] >= 1
        and not phase["newcomers"]["refused"]
    )


async def run(
    kafka: str, seconds: float, work: Path, *, receivers: int, rate: int, kinds: Kinds,
    connect_rate: float, event_rate: float, flooder_nice: int = 0,
) -> Json:  # fmt: skip
    port = free_port()
    argv = [sys.executable, "-m", "socketio_kafka.gateway", "serve", "--kafka", f"kafka://{kafka}",
            "--port", str(port), "--channel", f"flood-{uuid.uuid4().hex[:8]}",
            "--log-level", "warning", "--connect-rate", str(connect_rate),
            "--event-rate", str(event_rate)]  # fmt: skip
    cluster = Cluster(work)
    with contextlib.ExitStack() as stack:
        stack.callback(cluster.stop)
        cluster.start([(port, NodeCommand(argv))])
        url, pid = cluster.urls[0], cluster.pids[0]
        gauges = _Gauges(pid)
        others = _Others(url, receivers, rate, work / "others.log")
        stack.callback(others.close)
        others.send("open")
        others.expect("opened", 60)
        flooders = FloodProcess(port, seconds, kinds, flooder_nice)
        stack.callback(flooders.close)
        quiet, quiet_node = await gauges.phase(_measure(others, seconds))
        before = _counters(url)
        flood = asyncio.gather(flooders.run(), _measure(others, seconds))
        (floods, flooded), flood_node = await gauges.phase(flood)
        connects, events = floods.connects, floods.events
        after = _counters(url)
        alive, ready = cluster.alive(0), _ready(url)
        # Every connection the flooders got through is closed: the node lets go of them.
        sockets = receivers + 1
        try:
            await wait_until(lambda: _connected(url) == sockets, _SETTLE_S, "closed sockets")
        except TimeoutError:
            sockets = _connected(url)
        rss_after = _rss_mb(pid)
        others.send("close")
        others.expect("closed", 30)
    log = (work / f"node-{port}.log").read_text(errors="replace")
    for phase in (quiet, flooded):
        phase["receivers"] = receivers
    counted = {limit: int(after[limit] - before.get(limit, 0)) for limit in after}
    read = counted.pop("publish") - flooded["sent"]  # the other clients' publishes too
    connect_summary = connects.summary(connect_rate) if connects else None
    event_summary = events.summary(event_rate) if events else None
    pairs = ((connects, connect_summary), (events, event_summary))
    ran = [(flooder, summary) for flooder, summary in pairs if flooder]
    p99s = [phase["latency_ms"].get("p99_ms") for phase in (quiet, flooded)]
    ratio = p99s[1] / p99s[0] if None not in p99s else float("inf")  # none delivered
    return {
        "seconds": seconds,
        "limits": {"connect_rate": connect_rate, "event_rate": event_rate},
        "others": {"receivers": receivers, "rate": rate, "from": "127.0.0.1"},
        "connection_flood": connect_summary,
        "event_flood": event_summary,
        "refusals_counted_by_the_node": counted,
        "flood_events_read_by_the_node": read,
        "quiet": {**quiet, "node": quiet_node},
        "flood": {**flooded, "node": flood_node},
        "flooders_process": {
            "nice": flooder_nice,
            "cpu_cores": round(floods.cpu_s / flooded["seconds"], 2),
        },
        "others_p50_ms": [phase["latency_ms"].get("p50_ms") for phase in (quiet, flooded)],
        "others_p99_ms": p99s,
        "p99_ratio": round(ratio, 2),
        "node_at_end": {
            "alive": alive,
            "readyz": ready,
            "rss_mb": rss_after,
            "sockets": sockets,
            "sockets_expected": receivers + 1,
            "log_tracebacks": log.count("Traceback"),
            "log_refusal_lines": log.count("refused "),
        },
        "versions": _versions(),
        "bars": {
            "limits_hold": all(f.held(summary) for f, summary in ran),
            "limits_engaged": all(f.engaged(counted) for f, _ in ran),
            "node_up": alive and ready == 200 and sockets == receivers + 1,
            "others_served": _served(quiet) and _served(flooded),
            "other_p99_within_2x": ratio <= _P99_BAR,
        },
    }


def _versions() -> Json:
    packages = ("python-socketio", "python-engineio", "uvicorn", "aiokafka")
    found = {name: importlib.metadata.version(name) for name in packages}
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    client = json.loads((PEERS / "node_modules/socket.io-client/package.json").read_text())
    return {
        "python": sys.version.split()[0],
        **found,
        "node": node.stdout.strip(),
        "socket.io-client": client["version"],
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flood", description=__doc__)
    parser.add_argument("--seconds", type=float, default=None, help="per phase (default 20)")
    parser.add_argument("--quick", action="store_true", help="4 s phases: a smoke test")
    parser.add_argument(
        "--kafka",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        help="host:port (default: $KAFKA_BOOTSTRAP_SERVERS, else a private LocalKafka)",
    )
    parser.add_argument("--receivers", type=int, default=10, help="other clients in the room")
    parser.add_argument(
        "--rate",
        type=int,
        help=f"their events per second (default 100; {_QUICK_RATE} with --quick)",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="connection attempts at once")
    parser.add_argument(
        "--only",
        choices=("connections", "events"),
        help="one flooder alone: what each costs the others",
    )
    parser.add_argument(
        "--connect-rate", type=float, default=Limits().connect_rate, help="the node's limit"
    )
    parser.add_argument(
        "--flooder-nice",
        type=int,
        default=0,
        help="the flooders' process niceness (a flooder on another machine takes no CPU here)",
    )
    parser.add_argument(
        "--event-rate",
        type=float,
        help=f"the node's limit (default: its own, {Limits().event_rate:g};"
        f" {_QUICK_EVENT_RATE:g} with --quick)",
    )
    args = parser.parse_args(argv)
    seconds = args.seconds or (4.0 if args.quick else 20.0)
    with tempfile.TemporaryDirectory(prefix="flood-") as scratch:
        work = Path(scratch)
        local = None if args.kafka else LocalKafka(work / "kafka")
        try:
            kafka = args.kafka.removeprefix("kafka://") if args.kafka else local.start()  # type: ignore[union-attr]
            summary = asyncio.run(
                run(kafka, seconds, work, receivers=args.receivers,
                    rate=args.rate or (_QUICK_RATE if args.quick else 100),
                    kinds=Kinds(0 if args.only == "events" else args.concurrency,
                                args.only != "connections"),
                    connect_rate=args.connect_rate,
                    event_rate=args.event_rate
                    or (_QUICK_EVENT_RATE if args.quick else Limits().event_rate),
                    flooder_nice=args.flooder_nice)
            )  # fmt: skip
        finally:
            if local is not None:
                local.stop()
    print(json.dumps(summary, indent=1), flush=True)
    return 0 if all(summary["bars"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
