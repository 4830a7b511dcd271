"""The slow-consumer run of issue 8: what does a client that stops reading cost its node?

One real gateway node (``socketio-kafka serve``, default limits), a python-socketio reader (in
its own process) timing each event, and a write-only `AsyncKafkaManager` publishing ``--events``
events (~200 B of padding, a send timestamp and a seq) at ``--rate`` per second to a room.
Two phases, each with its own room: a baseline, then the same load with a raw TCP client
in the room that upgrades to a WebSocket, completes the Socket.IO handshake with recovery
(learning its ``pid``), joins through the gateway protocol, and then never reads (a small
receive buffer). The node's RSS is sampled every 200 ms from /proc.

After the stalled phase the raw client resumes: it reads what is left in its socket up to
the node's close, takes the offset of the last event it parsed, and claims its session with
`AsyncRecoveringClient` from that offset. Every seq sent to its room must then have come
once, in the order the reader saw them, from its socket or the replay.

    python -m benchmarks.slow_consumer [--events 200000] [--rate 5000] [--kafka kafka://...]
    python -m benchmarks.slow_consumer --quick  # 40,000 events, the node cutting at 5,000

Without ``--kafka`` the run starts a private `LocalKafka` in a scratch directory.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import socketio

from socketio_kafka.adapter import AsyncKafkaManager, AsyncRecoveringClient, KafkaOptions
from socketio_kafka.gateway.local_kafka import LocalKafka

from .services import BenchmarkError, Cluster, NodeCommand, free_port, metric, wait_until

__all__ = ["main", "run"]

Json = dict[str, Any]

PAD = "x" * 200
_TICK_S = 0.01  # the publisher gathers one batch of emits per tick
_RSS_EVERY_S = 0.2
_RCVBUF = 4096
_QUIET_S = 3.0
#: --quick's 40,000 events are below the node's default limit of 50,000 packets: the quick
#: form lowers it, so that it exercises a cut and its recovery.
_QUICK_LIMIT = 5000
#: The load generator's producer, not the node's: one room is one partition, and 16 KB
#: batches (about 50 events), one in flight, fall behind 5,000/s on a busy machine.
_PUBLISHER_OPTIONS = KafkaOptions(max_batch_size=512 * 1024, linger_ms=5)
#: The issue's bars.
_RSS_BAR_MB = 50.0
_P99_BAR = 2.0


# -- the node's memory ---------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise BenchmarkError(f"no VmRSS for pid {pid}")


@dataclass
class RssSampler:
    """The node's RSS every 200 ms while running; ``peak`` since the last `reset`."""

    pid: int
    peak: float = 0.0
    samples: list[float] = field(default_factory=list)

    def reset(self) -> float:
        now = _rss_mb(self.pid)
        self.peak, self.samples = now, [now]
        return now

    async def run(self) -> None:
        while True:
            now = _rss_mb(self.pid)
            self.samples.append(now)
            self.peak = max(self.peak, now)
            await asyncio.sleep(_RSS_EVERY_S)


# -- the reading client --------------------------------------------------------------------


class Reader:
    """A python-socketio client in a room, timing every event from its send timestamp."""

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.latencies: dict[str, list[float]] = {}
        self.seqs: dict[str, list[int]] = {}
        self.client.on("ev", self._event)

    async def _event(self, data: Json, *offset: str) -> None:
        self.latencies.setdefault(data["room"], []).append(time.time() - data["t"])
        self.seqs.setdefault(data["room"], []).append(data["seq"])

    async def join(self, room: str) -> None:
        reply = await self.client.call("join", {"room": room}, timeout=10)
        if reply != {"ok": True}:
            raise BenchmarkError(f"join refused: {reply}")

    async def wait_count(self, room: str, count: int) -> None:
        await wait_until(lambda: len(self.latencies.get(room, ())) >= count, 120, "the reader")


def _reader_process(url: str, conn: Connection) -> None:
    """The reader in its own process, so that the publisher's CPU is not in its latencies.

    Commands on ``conn``: ``("join", room)``, ``("wait", room, count)`` (answered with the
    room's latencies and seqs), ``("stop",)``.
    """

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        reader = Reader()
        await reader.client.connect(url, transports=["websocket"])
        conn.send("ready")
        while (command := await loop.run_in_executor(None, conn.recv))[0] != "stop":
            room = command[1]
            if command[0] == "join":
                await reader.join(room)
                conn.send("joined")
            else:
                await reader.wait_count(room, command[2])
                conn.send((reader.latencies[room], reader.seqs[room]))
        await reader.client.disconnect()

    asyncio.run(serve())


class ReaderProcess:
    """The parent's end of `_reader_process`."""

    def __init__(self, url: str) -> None:
        self._conn, child = multiprocessing.get_context("spawn").Pipe()
        self._process = multiprocessing.get_context("spawn").Process(
            target=_reader_process, args=(url, child), daemon=True
        )
        self._process.start()

    async def ask(self, *command: Any) -> Any:
        if command:
            self._conn.send(command)
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self._conn.poll, 150):
            raise BenchmarkError(f"the reader did not answer {command}")
        return self._conn.recv()

    def close(self) -> None:
        if self._process.is_alive():
            self._conn.send(("stop",))
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


def _percentiles(latencies: list[float]) -> Json:
    ms = sorted(x * 1000 for x in latencies)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50": round(q[49], 2), "p99": round(q[98], 2), "max": round(ms[-1], 2)}


# -- the publisher -------------------------------------------------------------------------


@dataclass
class Progress:
    """How far the publisher is, for the cut watch."""

    started: float = 0.0
    sent: int = 0


async def publish(
    manager: AsyncKafkaManager, room: str, events: int, rate: int, progress: Progress
) -> None:
    """``events`` emits to ``room`` at ``rate``/s: one gathered batch per tick, on a fixed
    schedule (a late tick sends what it owes), acks awaited at the end only."""
    per_tick = rate * _TICK_S
    pending: list[asyncio.Task[Any]] = []
    started, sent = time.monotonic(), 0
    progress.started = started
    while sent < events:
        owed = min(events, int((time.monotonic() - started) / _TICK_S * per_tick) + 1) - sent
        batch = [
            manager.emit("ev", {"seq": seq, "room": room, "t": time.time(), "pad": PAD}, room=room)
            for seq in range(sent, sent + max(owed, 0))
        ]
        if batch:
            pending.append(asyncio.ensure_future(asyncio.gather(*batch)))
            sent = progress.sent = sent + len(batch)
        await asyncio.sleep(_TICK_S)
    await asyncio.gather(*pending)


# -- the stalled raw client ----------------------------------------------------------------


def _frame(text: str) -> bytes:
    """One masked text frame, as a client must send it."""
    data, mask = text.encode(), os.urandom(4)
    size = len(data)
    head = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0xFE]) + size.to_bytes(2)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class RawClient:
    """A hand-made WebSocket + Engine.IO + Socket.IO client that can stop reading."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)  # before connect
        self.sock.setblocking(False)
        self.buffer = b""
        self.pid = ""
        self.closed = False  # a close frame or the end of the stream
        self.closed_by_client = False

    async def _recv(self) -> bool:
        chunk = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        self.buffer += chunk
        return bool(chunk)

    def _frames(self) -> list[str]:
        """Take the complete server frames off the buffer (text payloads; close noted)."""
        texts: list[str] = []
        while len(self.buffer) >= 2:
            opcode, size, at = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
            if size == 126:
                size, at = int.from_bytes(self.buffer[2:4]), 4
            elif size == 127:
                size, at = int.from_bytes(self.buffer[2:10]), 10
            if len(self.buffer) < at + size:
                break
            payload, self.buffer = self.buffer[at : at + size], self.buffer[at + size :]
            if opcode == 0x1:
                texts.append(payload.decode())
            elif opcode == 0x8:
                self.closed = True
        return texts

    async def _next_text(self) -> str:
        async with asyncio.timeout(10):
            while True:
                texts = self._frames()
                if texts:
                    if len(texts) > 1:
                        raise BenchmarkError(f"raw client: unexpected frames {texts}")
                    return texts[0]
                if not await self._recv():
                    raise BenchmarkError("raw client: connection closed in the handshake")

    async def connect(self, url: str, room: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.sock, (host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(self.sock, request.encode())
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in self.buffer:
                await self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise BenchmarkError(f"raw client: upgrade refused: {head!r}")
        opened = await self._next_text()
        if not opened.startswith("0{"):
            raise BenchmarkError(f"raw client: no Engine.IO open: {opened}")
        await loop.sock_sendall(self.sock, _frame("40"))
        connected = await self._next_text()
        if not connected.startswith("40{"):
            raise BenchmarkError(f"raw client: no CONNECT reply: {connected}")
        self.pid = json.loads(connected[2:])["pid"]  # recovery must be on
        await loop.sock_sendall(self.sock, _frame("420" + json.dumps(["join", {"room": room}])))
        ack = await self._next_text()
        if ack != '430[{"ok":true}]':
            raise BenchmarkError(f"raw client: join not acked: {ack}")

    async def resume(self) -> list[list[Any]]:
        """Read up to the node's close frame or the end of the stream; the event packets'
        arguments, in order.

        A node that did not cut the client would keep the stream open until its ping
        timeout: once nothing came for `_QUIET_S`, the client closes it itself (noted).
        """
        texts: list[str] = []
        try:
            while not self.closed and await asyncio.wait_for(self._recv(), _QUIET_S):
                texts.extend(self._frames())
        except TimeoutError:
            self.closed_by_client = True
        self.sock.close()
        events = []
        for text in [*texts, *self._frames()]:
            if text.startswith("42["):
                name, *args = json.loads(text[2:])
                if name == "ev":
                    events.append(args)
        return events


# -- the run -------------------------------------------------------------------------------


_CUT = "socketio_kafka_slow_consumers_cut_total"


async def _watch_cut(url: str, progress: Progress, rss: RssSampler, seen: Json) -> None:
    """When the node's cut counter first moves: seconds into publishing, events sent, RSS."""
    loop = asyncio.get_running_loop()
    before = await loop.run_in_executor(None, metric, url, _CUT)
    while await loop.run_in_executor(None, metric, url, _CUT) == before:  # noqa: ASYNC110  (a remote counter: nothing to wait on)
        await asyncio.sleep(_RSS_EVERY_S)
    seen["cut_at_s"] = round(time.monotonic() - progress.started, 2)
    seen["sent_before_cut"] = progress.sent
    seen["rss_mb_at_cut"] = round(rss.samples[-1], 1)


async def _phase(
    name: str, url: str, rss: RssSampler, reader: ReaderProcess, manager: AsyncKafkaManager,
    events: int, rate: int, raw: RawClient | None,
) -> Json:  # fmt: skip
    room = f"{name}-{uuid.uuid4().hex[:6]}"
    await reader.ask("join", room)
    if raw is not None:
        await raw.connect(url, room)
    await asyncio.sleep(1)  # let the handshakes' allocations settle before the baseline
    baseline = rss.reset()
    progress = Progress()
    seen: Json = {}
    watch = asyncio.create_task(_watch_cut(url, progress, rss, seen))
    try:
        await publish(manager, room, events, rate, progress)
        published = time.monotonic() - progress.started
        latencies, seqs = await reader.ask("wait", room, events)
    finally:
        watch.cancel()
    return {
        **seen,
        "room": room,
        "seqs": seqs,
        "publish_s": round(published, 1),
        "rate_achieved": round(events / published),
        "reader_events": len(latencies),
        "reader_ms": _percentiles(latencies),
        "rss_mb": {
            "baseline": round(baseline, 1),
            "peak": round(rss.peak, 1),
            "growth": round(rss.peak - baseline, 1),
        },
    }


async def _recover(url: str, raw: RawClient, room: str, manager: AsyncKafkaManager,
                   delivered: list[int], rss: RssSampler) -> Json:  # fmt: skip
    """Resume the stalled client and check it against ``delivered``, the reader's seqs."""
    events = len(delivered)
    before_read = rss.reset()
    got = await raw.resume()
    before = [args[0]["seq"] for args in got]
    if not got:
        raise BenchmarkError("the stalled client read no event before it was cut")
    offset = got[-1][-1]
    client = AsyncRecoveringClient(reconnection=False)
    replayed: list[int] = []
    client.on("ev", lambda data: replayed.append(data["seq"]))
    client.pids["/"], client.offsets["/"] = raw.pid, offset
    started = time.monotonic()
    await client.connect(url, transports=["websocket"], wait_timeout=120)
    recovered = client.recovered.get("/", False)
    connected_s = time.monotonic() - started
    # A marker after everything: once it arrives, nothing more of the flood can.
    await manager.emit("ev", {"seq": events, "room": room, "t": time.time(), "pad": ""}, room=room)
    await wait_until(lambda: events in replayed, 120, "the marker after the replay")
    replay_s = time.monotonic() - started
    await client.disconnect()
    stream = before + [s for s in replayed if s != events]
    counts: dict[int, int] = {}
    for seq in stream:
        counts[seq] = counts.get(seq, 0) + 1
    return {
        "read_before_cut": len(before),
        "cut_after_seq": before[-1],
        "recovered_session": recovered,
        "replayed": len(replayed) - 1,
        "replay_connect_s": round(connected_s, 2),
        "replay_total_s": round(replay_s, 2),
        "lost": sum(1 for seq in range(events) if seq not in counts),
        "duplicated": sum(n - 1 for n in counts.values() if n > 1),
        "same_order_as_reader": stream == delivered,
        "reader_in_seq_order": delivered == sorted(delivered),
        "exactly_once_in_order": stream == delivered and sorted(stream) == list(range(events)),
        "closed_by_the_node": raw.closed or not raw.closed_by_client,
        "rss_mb_replay_peak_growth": round(rss.peak - before_read, 1),
    }


async def run(
    kafka_url: str, events: int, rate: int, work: Path, node_args: list[str] | None = None
) -> Json:
    channel = f"slow-{uuid.uuid4().hex[:8]}"
    port = free_port()
    argv = [sys.executable, "-m", "socketio_kafka.gateway", "serve", "--kafka", kafka_url,
            "--port", str(port), "--channel", channel, "--log-level", "info",
            *(node_args or [])]  # fmt: skip
    cluster = Cluster(work)
    cluster.start([(port, NodeCommand(argv))])
    url = cluster.urls[0]
    rss = RssSampler(cluster.pids[0])
    try:
        async with AsyncExitStack() as stack:
            manager = AsyncKafkaManager(
                kafka_url, channel=channel, write_only=True, options=_PUBLISHER_OPTIONS
            )
            await stack.enter_async_context(manager)
            reader = ReaderProcess(url)
            stack.callback(reader.close)
            await reader.ask()  # ready
            sampling = asyncio.create_task(rss.run())
            try:
                baseline = await _phase("baseline", url, rss, reader, manager, events, rate, None)
                del baseline["seqs"]
                raw = RawClient()
                stalled = await _phase("stalled", url, rss, reader, manager, events, rate, raw)
                cut = metric(url, _CUT)
                room = stalled["room"]
                recovery = await _recover(url, raw, room, manager, stalled.pop("seqs"), rss)
            finally:
                sampling.cancel()
    finally:
        cluster.stop()
    ratio = stalled["reader_ms"]["p99"] / baseline["reader_ms"]["p99"]
    return {
        "events": events,
        "rate": rate,
        "node_args": node_args or [],
        "baseline": baseline,
        "stalled": stalled,
        "p99_ratio": round(ratio, 2),
        "slow_consumers_cut": cut,
        "recovery": recovery,
        "bars": {
            "rss_growth_under_50mb": stalled["rss_mb"]["growth"] < _RSS_BAR_MB,
            "p99_within_2x": ratio <= _P99_BAR,
            "every_event_once": recovery["exactly_once_in_order"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.slow_consumer", description=__doc__)
    parser.add_argument("--events", type=int, default=None, help="per phase (default 200000)")
    parser.add_argument("--rate", type=int, default=5000, help="events per second")
    parser.add_argument("--kafka", help="kafka://host:port; default: a private LocalKafka")
    parser.add_argument("--quick", action="store_true", help="40,000 events: a smoke test")
    parser.add_argument(
        "--max-queued-packets",
        type=int,
        help="the node's limit (default: its own, 50,000; 5,000 with --quick)",
    )
    args = parser.parse_args(argv)
    limit = args.max_queued_packets or (_QUICK_LIMIT if args.quick else None)
    node_args = ["--max-queued-packets", str(limit)] if limit else []
    events = args.events or (40_000 if args.quick else 200_000)
    with tempfile.TemporaryDirectory(prefix="slow-consumer-") as scratch:
        work = Path(scratch)
        kafka = None if args.kafka else LocalKafka(work / "kafka")
        try:
            url = args.kafka or f"kafka://{kafka.start()}"  # type: ignore[union-attr]
            summary = asyncio.run(run(url, events, args.rate, work, node_args))
        finally:
            if kafka is not None:
                kafka.stop()
    print(json.dumps(summary, indent=1), flush=True)
    return 0 if all(summary["bars"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
