"""``python -m benchmarks.floor``: Kafka's own publish-to-fetch latency, without Socket.IO.

The floor under our gateway's latency on this machine: one aiokafka producer publishing
small records at a fixed rate to a topic laid out as the events topic (6 partitions, keyed),
three aiokafka consumers in their own processes (as three nodes would be) reading every
partition; latency is a record's arrival minus its send time (one machine clock). Each
client setting runs on the same broker, started here and stopped at the end, and the
broker's CPU is read from /proc. No pacing, no fan-out, no WebSocket: what remains of our
latency above these figures is ours.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.queues import Queue
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from socketio_kafka.gateway.local_kafka import LocalKafka

from .cpu import Usage, sample
from .loadgen import Json
from .warmup import until_settled
from .workloads import FULL

__all__ = ["SETTINGS", "Setting", "floor_table", "main", "measure", "record_by_record"]

_PARTITIONS = 6
_CONSUMERS = 3
_PAYLOAD = b"x" * 150  # about the size of one benchmark event's record
_END = b"end"
_WARM_UP_PASS_S = 4.0


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    linger_ms: int
    fetch_min_bytes: int
    fetch_max_wait_ms: int


SETTINGS = (
    Setting("aiokafka defaults: record by record", 0, 1, 500),
    Setting("2 ms linger, long-poll fetch (ours until session 16, without pacing)", 2, 1, 500),
    Setting("1 ms linger, fetch waits 5 ms for 4 KiB (session 1)", 1, 4096, 5),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__)
    parser.add_argument("--rate", type=int, default=1000, help="records/s (default 1000)")
    parser.add_argument("--seconds", type=float, default=8.0, help="per setting (default 8)")
    args = parser.parse_args(argv)
    print(floor_table(measure(args.rate, args.seconds)))
    return 0


def measure(rate: int, seconds: float, warm_up_passes: int = FULL.warm_up_passes) -> list[Json]:
    """One row per `SETTINGS` entry, on a broker of its own (started and stopped here),
    once passes of the first setting (up to ``warm_up_passes``) find its CPU settled."""
    with tempfile.TemporaryDirectory(prefix="socketio-kafka-floor-") as scratch:
        kafka = LocalKafka(Path(scratch) / "kafka")
        bootstrap = kafka.start()
        try:
            status = kafka.status()
            assert status is not None
            pid = status.pid

            def warm_up() -> float:
                row = _run(bootstrap, SETTINGS[0], rate, min(seconds, _WARM_UP_PASS_S), pid)
                return float(row["broker_cores"])

            until_settled(warm_up, warm_up_passes)
            return [_run(bootstrap, s, rate, seconds, pid) for s in SETTINGS]
        finally:
            kafka.stop()


def record_by_record(bootstrap: str, broker: int, rate: int, seconds: float) -> Json:
    """One row of the first setting (aiokafka's defaults) on a running broker: the floor a
    paired run (`benchmarks/paired.py`) measures beside our nodes on their broker."""
    return _run(bootstrap, SETTINGS[0], rate, seconds, broker)


def floor_table(rows: Sequence[Json]) -> str:
    lines = [
        "| client setting | records/s | p50 ms | p99 ms | broker cores | consumers' cores |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['setting']} | {r['rate']:,} | {r['p50_ms']} | {r['p99_ms']} "
        f"| {r['broker_cores']} | {r['consumer_cores']} |"
        for r in rows
    ]
    return "\n".join(lines)


def _run(bootstrap: str, setting: Setting, rate: int, seconds: float, broker: int) -> Json:
    topic = f"floor-{uuid.uuid4().hex[:8]}"
    asyncio.run(_create(bootstrap, topic))
    context = multiprocessing.get_context("spawn")
    results: Queue[list[float] | str] = context.Queue()
    consumers = [
        context.Process(target=_consume, args=(bootstrap, topic, setting, results))
        for _ in range(_CONSUMERS)
    ]
    for consumer in consumers:
        consumer.start()
    for _ in consumers:
        results.get(timeout=60)  # each says "ready" once positioned
    pids = [c.pid for c in consumers if c.pid is not None]
    before = sample({"broker": [broker], "consumers": pids})
    asyncio.run(_produce(bootstrap, topic, setting, rate, seconds))
    latencies = sorted(x for _ in consumers for x in _as_list(results.get(timeout=60)))
    usage = Usage.between(before, sample({"broker": [broker], "consumers": pids}))
    for consumer in consumers:
        consumer.join(30)
    return {
        "setting": setting.name,
        "rate": rate,
        "sent": int(rate * seconds) * _CONSUMERS,
        "received": len(latencies),
        "p50_ms": round(latencies[len(latencies) // 2], 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 2),
        "broker_cores": round(usage.share("broker"), 2),
        "consumer_cores": round(usage.share("consumers"), 2),
    }


def _as_list(value: list[float] | str) -> list[float]:
    assert isinstance(value, list), value
    return value


async def _create(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, _PARTITIONS, 1)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, setting: Setting, rate: int, seconds: float) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=setting.linger_ms, acks="all",
        enable_idempotence=True,
    )  # fmt: skip
    await producer.start()
    try:
        started = time.monotonic()
        for seq in range(int(rate * seconds)):
            delay = started + seq / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            value = f"{time.time():.6f}|".encode() + _PAYLOAD
            await producer.send(topic, value, key=str(seq % 50).encode())
        for partition in range(_PARTITIONS):
            await producer.send_and_wait(topic, _END, partition=partition)
    finally:
        await producer.stop()


def _consume(
    bootstrap: str, topic: str, setting: Setting, results: Queue[list[float] | str]
) -> None:
    async def run() -> list[float]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="latest", fetch_min_bytes=setting.fetch_min_bytes,
            fetch_max_wait_ms=setting.fetch_max_wait_ms,
        )  # fmt: skip
        await consumer.start()
        try:
            await consumer.seek_to_end()
            results.put("ready")
            latencies: list[float] = []
            ended: set[int] = set()
            while len(ended) < _PARTITIONS:
                batches = await consumer.getmany(timeout_ms=1000)
                now = time.time()
                for tp, records in batches.items():
                    for record in records:
                        if record.value == _END:
                            ended.add(tp.partition)
                        elif record.value is not None:
                            sent = float(record.value.partition(b"|")[0])
                            latencies.append((now - sent) * 1000)
            return latencies
        finally:
            await consumer.stop()

    results.put(asyncio.run(run()))


if __name__ == "__main__":
    sys.exit(main())
