"""Reading a range of the events topic back, for a client that missed it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from . import codec
from .errors import RecordDecodeError

__all__ = ["Bounds", "ReplayRecord", "read_range", "topic_bounds"]

ConsumerFactory = Callable[[], AIOKafkaConsumer]


@dataclass(frozen=True, slots=True)
class Bounds:
    """The oldest offset Kafka still has, and the next one it will write, per partition."""

    beginning: tuple[int, ...]
    end: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    partition: int
    offset: int
    message: codec.Message


@contextlib.asynccontextmanager
async def _consumer(factory: ConsumerFactory) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = factory()
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def topic_bounds(factory: ConsumerFactory, topic: str, partitions: int) -> Bounds:
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    async with _consumer(factory) as consumer:
        beginning = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
    return Bounds(tuple(beginning[tp] for tp in tps), tuple(end[tp] for tp in tps))


async def read_range(
    factory: ConsumerFactory,
    topic: str,
    start: tuple[int, ...],
    stop: tuple[int, ...],
    batch: int,
    wanted: Callable[[codec.Message], bool],
) -> AsyncIterator[ReplayRecord]:
    """Yield the decodable records in ``[start, stop)`` that ``wanted`` accepts.

    Partition by partition, each in offset order: per-room order holds because a room
    lives on one partition.
    """
    ranges = [(p, first, last) for p, (first, last) in enumerate(zip(start, stop, strict=True))]
    ranges = [(p, first, last) for p, first, last in ranges if first < last]
    if not ranges:
        return  # and no consumer: aiokafka's stop() hangs on one never assigned
    async with _consumer(factory) as consumer:
        for partition, first, last in ranges:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, first)
            async for record in _records(consumer, tp, last, batch):
                try:
                    message = codec.decode(record.value)
                except RecordDecodeError:
                    continue  # counted when the live consumer met it
                if wanted(message):
                    yield ReplayRecord(partition, record.offset, message)


async def _records(
    consumer: AIOKafkaConsumer, tp: TopicPartition, stop: int, batch: int
) -> AsyncIterator[Any]:
    while await consumer.position(tp) < stop:
        batches = await consumer.getmany(tp, timeout_ms=1000, max_records=batch)
        for record in batches.get(tp, []):
            if record.offset >= stop:
                return
            yield record
