"""Many clients stop reading at once: what does their node keep?

One real gateway node (``socketio-kafka serve``) at a time, ``--clients`` raw WebSocket
clients each in a room of its own (a small receive window, joined through the gateway
protocol, then never reading: a network that stalls for all of them), and a write-only
`AsyncKafkaManager` publishing ``--events`` events of 10 KB at ``--rate`` per second,
round-robin over their rooms. Each client stays under its own bound (16 MiB), so only the
node's budget on what all its sockets keep (`--max-node-queued-bytes`) stops the node
from keeping everything; the run measures the node's RSS with the budget at its default
and with it lifted, in one run. The nodes keep no history of the latest records
(``--replay-history-mb 0``: bounded on its own, 32 MiB by default), so that what grows is
what the stalled clients cost.

    python -m benchmarks.stalled [--clients 40] [--events 60000] [--rate 2000]
    python -m benchmarks.stalled --quick  # 8 clients, 8,000 events, an 8 MiB budget

Without ``--kafka`` the run starts a private `LocalKafka` in a scratch directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from socketio_kafka.adapter import AsyncKafkaManager, KafkaOptions, OutboxLimits
from socketio_kafka.gateway.local_kafka import LocalKafka

from .services import BenchmarkError, Cluster, NodeCommand, free_port, metric
from .slow_consumer import RssSampler

__all__ = ["main", "run"]

Json = dict[str, Any]

PAD = "x" * 10_000
_RCVBUF = 4096
_TICK_S = 0.01
#: Time for the node to take the last events in after the publisher's acks.
_SETTLE_S = 5.0
_PUBLISHER_OPTIONS = KafkaOptions(max_batch_size=512 * 1024, linger_ms=5)
#: The node's RSS may grow past its budget by a quarter (what Python keeps around what it
#: counts) and its own working memory: Kafka fetches of up to 1 MB a partition (6), and the
#: records decoded from them. 8 MiB was short on a loaded machine, where the node lags and
#: its fetches come full: the quick form grew 18.6 MiB with 6.9 kept (CI, session 51),
#: 12.3-13.5 on a quiet one; without the budget it grows 59.
_RSS_BAR = 1.25
_OWN_MB = 16.0
_LIFTED = 10**12


async def _stalled_client(port: int, room: str) -> ClientConnection:
    """Connected, in ``room``, and reading nothing more."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)  # before connect
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    ws = await connect(
        f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", sock=sock, max_queue=1
    )
    await asyncio.wait_for(ws.recv(), 10)  # Engine.IO's open
    await ws.send("40")
    await asyncio.wait_for(ws.recv(), 10)  # the CONNECT reply
    await ws.send("421" + json.dumps(["join", {"room": room}]))
    if not str(await asyncio.wait_for(ws.recv(), 10)).startswith("431"):
        raise BenchmarkError(f"join of {room} refused")
    return ws


async def _publish(manager: AsyncKafkaManager, rooms: list[str], events: int, rate: int) -> None:
    """``events`` emits round-robin over ``rooms`` at ``rate``/s, one batch per tick."""
    started, sent = time.monotonic(), 0
    while sent < events:
        owed = min(events, int((time.monotonic() - started) * rate)) - sent
        await asyncio.gather(
            *(
                manager.emit(
                    "ev", {"seq": sent + k, "pad": PAD}, room=rooms[(sent + k) % len(rooms)]
                )
                for k in range(owed)
            )
        )
        sent += owed
        await asyncio.sleep(_TICK_S)


async def _phase(
    kafka_url: str, work: Path, clients: int, events: int, rate: int, budget: int
) -> Json:
    port, channel = free_port(), f"stalled-{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, "-m", "socketio_kafka.gateway", "serve", "--kafka", kafka_url,
            "--port", str(port), "--channel", channel, "--log-level", "warning",
            "--connect-rate", "1000000", "--max-node-queued-bytes", str(budget),
            "--replay-history-mb", "0"]  # fmt: skip
    (logs := work / channel).mkdir()
    cluster = Cluster(logs)
    cluster.start([(port, NodeCommand(argv))])
    try:
        rooms = [f"room-{n}" for n in range(clients)]
        stalled = [await _stalled_client(port, room) for room in rooms]
        rss = RssSampler(cluster.pids[0])
        base = rss.reset()
        sampling = asyncio.create_task(rss.run())
        manager = AsyncKafkaManager(
            kafka_url, channel=channel, write_only=True, options=_PUBLISHER_OPTIONS
        )
        try:
            async with manager:
                await _publish(manager, rooms, events, rate)
            await asyncio.sleep(_SETTLE_S)
        finally:
            sampling.cancel()
            for ws in stalled:
                ws.transport.abort()
        url = cluster.urls[0]
        kept = metric(url, "socketio_kafka_kept_bytes")
        cut = metric(url, "socketio_kafka_slow_consumers_cut_total")
        for_budget = metric(url, "socketio_kafka_over_node_budget_total")
    finally:
        cluster.stop()
    return {
        "budget_mb": round(budget / 2**20, 1) if budget < _LIFTED else None,
        "rss_mb": {"before": round(base, 1), "peak": round(rss.peak, 1)},
        "rss_growth_mb": round(rss.peak - base, 1),
        "kept_mb_at_end": round(kept / 2**20, 1),
        "cut": int(cut),
        "cut_for_the_budget": int(for_budget),
    }


async def run(
    kafka_url: str, work: Path, clients: int, events: int, rate: int, budget: int
) -> Json:
    bounded = await _phase(kafka_url, work, clients, events, rate, budget)
    lifted = await _phase(kafka_url, work, clients, events, rate, _LIFTED)
    sent_mb = events * len(PAD) / 2**20
    budget_mb = budget / 2**20
    return {
        "clients": clients,
        "events": events,
        "rate": rate,
        "sent_mb": round(sent_mb, 1),
        "bounded": bounded,
        "lifted": lifted,
        "bars": {
            # With the budget lifted the node keeps what its clients did not read (each
            # under its own bound); with it, the budget and the node's own buffers.
            "lifted_keeps_more_than_the_budget": lifted["rss_growth_mb"] > budget_mb,
            "bounded_within_the_budget": bounded["rss_growth_mb"] < _RSS_BAR * budget_mb + _OWN_MB,
            "bounded_cut_for_the_budget": bounded["cut_for_the_budget"] > 0,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stalled", description=__doc__)
    parser.add_argument("--clients", type=int, default=None, help="default 40 (8 with --quick)")
    parser.add_argument("--events", type=int, default=None, help="default 60000 (8000)")
    parser.add_argument("--rate", type=int, default=None, help="per second (default 2000)")
    parser.add_argument("--kafka", help="kafka://host:port; default: a private LocalKafka")
    parser.add_argument("--quick", action="store_true", help="a smoke test with an 8 MiB budget")
    args = parser.parse_args(argv)
    clients = args.clients or (8 if args.quick else 40)
    events = args.events or (8000 if args.quick else 60_000)
    rate = args.rate or 2000
    budget = 8 * 2**20 if args.quick else OutboxLimits().node_max_bytes
    with tempfile.TemporaryDirectory(prefix="stalled-") as scratch:
        work = Path(scratch)
        kafka = None if args.kafka else LocalKafka(work / "kafka")
        try:
            url = args.kafka or f"kafka://{kafka.start()}"  # type: ignore[union-attr]
            summary = asyncio.run(run(url, work, clients, events, rate, budget))
        finally:
            if kafka is not None:
                kafka.stop()
    print(json.dumps(summary, indent=1), flush=True)
    return 0 if all(summary["bars"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
