"""Busy-topic recovery and irrelevant traffic (issue 10), on one in-process node.

One client in room ``mine`` drops its transport; ``--others`` events to ``--rooms`` other
rooms are written meanwhile, with ``--own`` of its own spread among them. Reported:

- the node's CPU per 1,000 records none of its sockets wants (the client is away, so every
  record of the gap is one), measured in this process while another process writes them;
- the client's recovery: from its reconnect to its last missed event, all in order;
- then the same node's CPU per 1,000 events it delivers (``--delivered`` more to ``mine``,
  the client back): what a record costs a node that wants it, beside one that does not.

The node runs with a gateway node's collector (`gateway/collector.py`): without it, a full
collection of this process (50 ms here) fell inside some recoveries and not others.

The records are written as an external producer following docs/wire-format.md would,
routing headers included (a node of a release without them ignores them), so the same
run measures any version of the adapter::

    python -m benchmarks.busy_topic --kafka 127.0.0.1:19092 --others 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Any

import socketio
import uvicorn
from aiokafka import AIOKafkaProducer

from socketio_kafka.adapter import (
    AsyncKafkaManager,
    AsyncRecoveringClient,
    KafkaOptions,
    RecoveringAsyncServer,
)
from socketio_kafka.gateway.collector import pace_collector

from .services import wait_until

_CHUNK = 5_000


def _record(
    event: str, room: str, seq: int, payload: str
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    data = [{"seq": seq, "text": payload}]
    value = {"v": 1, "method": "emit", "event": event, "data": data, "room": room}
    headers = [("sio.v", b"1"), ("sio.method", b"emit"), ("sio.ns", b"/")]
    return f"/#{room}".encode(), json.dumps(value).encode(), [*headers, ("sio.room", room.encode())]


async def produce(
    bootstrap: str, topic: str, others: int, own: int, rooms: int, payload: int
) -> None:
    """Write the gap: ``own`` events to ``mine`` spread evenly among ``others`` (none: the
    ``own`` events alone)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        every = max(1, others // own)
        pending: list[Any] = []
        own_seq = 0
        for n in range(others or own):
            records = [_record("other", f"room-{n % rooms}", n, "x" * payload)] if others else []
            if n % every == 0 and own_seq < own:
                records.append(_record("own", "mine", own_seq, "x" * payload))
                own_seq += 1
            for key, value, headers in records:
                pending.append(await producer.send(topic, value, key=key, headers=headers))
            if len(pending) >= _CHUNK:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


#: The node's replay history by default (`adapter/history.py`).
_HISTORY_BYTES = KafkaOptions().replay_history_bytes


async def measure(
    bootstrap: str,
    others: int,
    own: int,
    rooms: int,
    payload: int,
    partitions: int,
    delivered: int = 20_000,
    history_bytes: int = _HISTORY_BYTES,
) -> dict[str, float]:
    channel = f"busy-{uuid.uuid4().hex[:8]}"
    options = KafkaOptions(partitions=partitions, replay_history_bytes=history_bytes)
    manager = AsyncKafkaManager(f"kafka://{bootstrap}", channel=channel, options=options)
    sio = RecoveringAsyncServer(
        client_manager=manager,
        async_mode="asgi",
        connection_state_recovery={"max_disconnection_duration": 600},
    )

    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    sio.on("join", join)
    config = uvicorn.Config(socketio.ASGIApp(sio), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, 15, "uvicorn")
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    await manager.start()
    got: list[Any] = []
    client = AsyncRecoveringClient(reconnection=False)
    client.on("own", lambda data: got.append(data["seq"]))
    try:
        await client.connect(url, transports=["websocket"])
        await client.call("join", "mine")
        sid = client.get_sid("/")
        await client.eio.ws.close()
        await wait_until(lambda: not manager.is_connected(sid, "/"), 15, "the drop")

        irrelevant_cpu = await _consumed_cpu(manager, others, own, rooms, payload)

        started = time.perf_counter()
        # Measured, not bounded: the connection, then every missed event.
        await client.connect(url, transports=["websocket"], wait_timeout=600)
        await wait_until(lambda: len(got) >= own, 600, "the replay")
        recovery = time.perf_counter() - started
        assert client.recovered["/"] is True
        assert got == list(range(own)), "missed events out of order or repeated"

        got.clear()
        delivered_cpu = await _consumed_cpu(manager, 0, delivered, rooms, payload)
        await wait_until(lambda: len(got) >= delivered, 600, "the delivered events")
    finally:
        await client.disconnect()
        await manager.stop()
        server.should_exit = True
        await serving
    per_irrelevant = irrelevant_cpu / (others + own) * 1_000_000
    per_delivered = delivered_cpu / delivered * 1_000_000
    return {
        "recovery_s": recovery,
        "cpu_ms_per_1000_irrelevant": per_irrelevant,
        "cpu_ms_per_1000_delivered": per_delivered,
        "irrelevant_to_delivered": per_irrelevant / per_delivered,
        "replay_records_read": getattr(manager.stats, "replay_records_read", -1),
        "replay_records_decoded": getattr(manager.stats, "replay_records_decoded", -1),
        # Taken from memory (a pass's window, the live history) instead of read.
        "replay_records_reused": getattr(manager.stats, "replay_records_reused", -1),
        "replay_partitions_skipped": getattr(manager.stats, "replay_partitions_skipped", -1),
    }


async def _consumed_cpu(
    manager: AsyncKafkaManager, others: int, own: int, rooms: int, payload: int
) -> float:
    """This process's CPU seconds while another process writes the records and the node
    reads them all."""
    before = manager.stats.records_consumed + manager.stats.records_skipped
    cpu = time.process_time()
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.busy_topic",
        "--produce",
        f"--kafka={manager.bootstrap_servers[0]}",
        f"--topic={manager.events_topic}",
        f"--others={others}",
        f"--own={own}",
        f"--rooms={rooms}",
        f"--payload={payload}",
    )
    assert await writer.wait() == 0
    total = others + own
    await wait_until(
        lambda: manager.stats.records_consumed + manager.stats.records_skipped >= before + total,
        600,
        "the node to read the records",
    )
    return time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--others", type=int, default=200_000)
    parser.add_argument("--own", type=int, default=100)
    parser.add_argument("--rooms", type=int, default=5_000)
    parser.add_argument("--payload", type=int, default=0, help="characters of text per event")
    parser.add_argument("--partitions", type=int, default=6, help="of the events topic")
    parser.add_argument("--delivered", type=int, default=20_000, help="events to the client")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--history-mb",
        type=float,
        default=_HISTORY_BYTES / 2**20,
        help="the node's replay history (default the adapter's; 0: replays read Kafka)",
    )
    parser.add_argument("--produce", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.produce:
        asyncio.run(
            produce(args.kafka, args.topic, args.others, args.own, args.rooms, args.payload)
        )
        return
    pace_collector()
    for _ in range(args.runs):
        figures = asyncio.run(
            measure(
                args.kafka,
                args.others,
                args.own,
                args.rooms,
                args.payload,
                args.partitions,
                args.delivered,
                int(args.history_mb * 2**20),
            )
        )
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
