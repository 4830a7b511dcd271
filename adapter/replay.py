"""Reading a range of the events topic back, for a client that missed it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from . import codec
from .errors import RecordDecodeError

__all__ = ["Bounds", "ReplayBatch", "read_range", "topic_bounds"]

ConsumerFactory = Callable[[], AIOKafkaConsumer]


@dataclass(frozen=True, slots=True)
class Bounds:
    """The oldest offset Kafka still has, and the next one it will write, per partition."""

    beginning: tuple[int, ...]
    end: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ReplayBatch:
    """Consecutive wanted records of one partition, as ``(offset, message)`` in order."""

    partition: int
    records: list[tuple[int, codec.Message]]


@contextlib.asynccontextmanager
async def _consumer(factory: ConsumerFactory) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = factory()
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def topic_bounds(consumer: AIOKafkaConsumer, topic: str, partitions: int) -> Bounds:
    """Asked of a running consumer: one that knows the topic's metadata answers at once."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    beginning, end = await asyncio.gather(
        consumer.beginning_offsets(tps), consumer.end_offsets(tps)
    )
    return Bounds(tuple(beginning[tp] for tp in tps), tuple(end[tp] for tp in tps))


async def read_range(
    factory: ConsumerFactory,
    topic: str,
    start: tuple[int, ...],
    stop: tuple[int, ...],
    batch: int,
    wanted: Callable[[codec.Message], bool],
) -> AsyncIterator[ReplayBatch]:
    """Yield the decodable records in ``[start, stop)`` that ``wanted`` accepts, at most
    ``batch`` records read per step.

    Partition by partition, each in offset order: per-room order holds because a room
    lives on one partition. A batch, not a record, per step: a 100,000-event replay spent
    a tenth of its time passing single records through the generators.
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
            while await consumer.position(tp) < last:
                fetched = await consumer.getmany(tp, timeout_ms=1000, max_records=batch)
                records = _wanted(fetched.get(tp, ()), last, wanted)
                if records:
                    yield ReplayBatch(partition, records)


def _wanted(
    records: Iterable[Any], stop: int, wanted: Callable[[codec.Message], bool]
) -> list[tuple[int, codec.Message]]:
    found = []
    for record in records:
        if record.offset >= stop:
            break
        try:
            message = codec.decode(record.value)
        except RecordDecodeError:
            continue  # counted when the live consumer met it
        if wanted(message):
            found.append((record.offset, message))
    return found
