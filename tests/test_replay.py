"""Reading ranges of the events topic back (the replay, through the node's shared
cursors), against the real broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete

from socketio_kafka.adapter import AsyncKafkaManager, KafkaOptions, ReplayGap, codec
from socketio_kafka.adapter.cursor import SharedReplays
from socketio_kafka.adapter.manager import ManagerStats
from socketio_kafka.adapter.replay import ConsumerPool, topic_bounds
from socketio_kafka.adapter.routing import Audience
from socketio_kafka.adapter.watermarks import Watermarks

from .support.unparsable import write_unparsable
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(60)]


def _emit(room: str, seq: int) -> bytes:
    message = codec.emit_message(
        "e", {"seq": seq}, namespace="/", room=room, skip_sid=None, callback=None, host_id="h"
    )
    return codec.encode(message)


@pytest.fixture
async def topic(kafka_bootstrap: str, channel: str) -> str:
    """Two partitions: room "a" (and one poison record) on 0, room "b" on 1."""
    name = f"{channel}.events"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for seq in range(10):
            await producer.send_and_wait(name, _emit("a", seq), partition=0)
            await producer.send_and_wait(name, _emit("b", seq), partition=1)
        await producer.send_and_wait(name, b"not json", partition=0)
        await producer.send_and_wait(name, _emit("a", 10), partition=0)
    finally:
        await producer.stop()
    return name


#: A session in both rooms (its keys fall on both partitions).
_IN_A_AND_B = Audience.of("/", "sid", ["a", "b"])


class _Counted(ConsumerPool):
    def __init__(self, kafka_bootstrap: str) -> None:
        self.started: list[AIOKafkaConsumer] = []
        super().__init__(lambda: self._new(kafka_bootstrap), keep=2)

    def _new(self, kafka_bootstrap: str) -> AIOKafkaConsumer:
        self.started.append(AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap))
        return self.started[-1]


async def _read(
    pool: ConsumerPool,
    topic: str,
    start: tuple[int, ...],
    stop: tuple[int, ...],
    audience: Audience = _IN_A_AND_B,
) -> list[tuple[int, int, Any]]:
    replays = SharedReplays(pool, topic, ManagerStats(), batch=4)
    async with replays.open(start, stop, audience) as replay:
        return [
            (partition, offset, message)
            async for found in replay
            for partition, offset, message in found
        ]


async def _seqs(
    pool: ConsumerPool, topic: str, start: tuple[int, ...], stop: tuple[int, ...]
) -> list[tuple[int, int, int]]:
    """Partition by partition: partitions are read at once, each in offset order."""
    got = [
        (p, offset, m["data"][0]["seq"]) for p, offset, m in await _read(pool, topic, start, stop)
    ]
    for partition in (0, 1):
        assert [r for r in got if r[0] == partition] == sorted(r for r in got if r[0] == partition)
    return sorted(got)


async def test_ranges_read_back_in_order_skipping_poison_by_one_reused_consumer(
    kafka_bootstrap: str, topic: str
) -> None:
    pool = _Counted(kafka_bootstrap)
    try:
        await pool.fill(topic)
        # Partition 1 from offset 7, partition 0 from 8: the poison record at 10 is skipped.
        got = await _seqs(pool, topic, (8, 7), (12, 10))
        assert got == [(0, 8, 8), (0, 9, 9), (0, 11, 10), (1, 7, 7), (1, 8, 8), (1, 9, 9)]
        # Again, elsewhere, on the consumers the last replay left paused in the pool.
        assert await _seqs(pool, topic, (0, 9), (2, 10)) == [(0, 0, 0), (0, 1, 1), (1, 9, 9)]
        assert len(pool.started) == 2  # one per partition read at once
        async with pool.consumer() as consumer:
            bounds = await topic_bounds(Watermarks(lambda: consumer), topic, 2)
        assert (bounds.beginning, bounds.end) == ((0, 0), (12, 10))
    finally:
        await pool.close()  # stops the kept consumer (pytest-timeout if it hung)


async def test_an_empty_range_needs_no_consumer(kafka_bootstrap: str, topic: str) -> None:
    pool = _Counted(kafka_bootstrap)
    assert await _seqs(pool, topic, (5, 5), (5, 5)) == []
    assert pool.started == []


async def test_a_record_aiokafka_cannot_parse_is_read_past(
    kafka_bootstrap: str, topic: str
) -> None:
    """Its fetch is refused at every try, with the records parsed before it: without
    stepping past it, the replay (and the client's every retry) failed."""
    await write_unparsable(kafka_bootstrap, topic, "/#r")
    pool = ConsumerPool(lambda: AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap), keep=1)
    try:
        async with pool.consumer() as consumer:
            bounds = await topic_bounds(Watermarks(lambda: consumer), topic, 2)
        audience = Audience.of("/", "sid", ["r"])  # not in "a" nor "b"
        got = [
            (message["event"], message["data"])
            for _, _, message in await _read(pool, topic, bounds.beginning, bounds.end, audience)
        ]
        assert got == [("good", [0]), ("good", [1])]
    finally:
        await pool.close()


async def test_a_range_retention_deleted_while_judged_fails_only_its_replay(
    kafka_bootstrap: str, kafka_url: str, channel: str
) -> None:
    """A claim judged whole against Kafka's bounds, then retention deletes the start of its
    range before the replay reads it: the replay read on from the oldest offset left, and
    the client was told "recovered" without what was deleted. It fails now (the client is
    closed, claims again and is told the range is gone); a replay sharing the read whose
    range Kafka still holds gets all of it."""
    manager = AsyncKafkaManager(
        kafka_url, channel, options=KafkaOptions(partitions=1, replay_history_bytes=0)
    )
    await manager.start()
    try:
        for seq in range(6):
            await manager.emit("e", {"seq": seq}, room="a")
        await wait_until(lambda: manager.positions == [6], 10, "six emits read live")
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_records({TopicPartition(f"{channel}.events", 0): RecordsToDelete(3)})
        finally:
            await admin.close()

        async def offsets_from(start: int) -> list[int]:
            async with manager.replay((start,), (6,), Audience.of("/", "sid", ["a"])) as replay:
                return [offset async for found in replay for _, offset, _ in found]

        gapped, whole = await asyncio.gather(
            offsets_from(0), offsets_from(3), return_exceptions=True
        )
        assert isinstance(gapped, ReplayGap), gapped
        assert whole == [3, 4, 5]
    finally:
        await manager.stop()
