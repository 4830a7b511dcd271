"""Reading the events topic back, for clients that missed part of it: the consumers
replays read with (shared between replays by `adapter/cursor.py`), and the topic's bounds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from .stopping import stop_consumer
from .watermarks import Watermarks

__all__ = ["Bounds", "ConsumerPool", "topic_bounds"]

ConsumerFactory = Callable[[], AIOKafkaConsumer]


@dataclass(frozen=True, slots=True)
class Bounds:
    """The oldest offset Kafka still has, and the next one it will write, per partition."""

    beginning: tuple[int, ...]
    end: tuple[int, ...]


class ConsumerPool:
    """Started replay consumers, kept between replays.

    A new consumer spends milliseconds connecting and learning the topic's metadata
    before its first fetch: most of a recovery of a few events.
    """

    def __init__(self, factory: ConsumerFactory, keep: int = 2) -> None:
        self._factory = factory
        self._keep = keep
        self._idle: list[AIOKafkaConsumer] = []
        self._closes = 0  # a consumer lent out before a close is not kept after it

    @contextlib.asynccontextmanager
    async def consumer(self) -> AsyncIterator[AIOKafkaConsumer]:
        """A started consumer; back in the pool, paused, if the block ends well."""
        closes = self._closes
        if self._idle:
            consumer = self._idle.pop()
        else:
            consumer = self._factory()
            try:
                await consumer.start()
            except BaseException:  # cancelled, say: a consumer half started is stopped
                await stop_consumer(consumer)
                raise
        try:
            yield consumer
        except BaseException:
            await stop_consumer(consumer)
            raise
        # No fetching while idle. (Not unsubscribe(): aiokafka's stop() then hangs.)
        consumer.pause(*consumer.assignment())
        if closes == self._closes and len(self._idle) < self._keep:
            self._idle.append(consumer)
        else:
            await stop_consumer(consumer)

    async def fill(self, topic: str) -> None:
        """Start one consumer that knows ``topic`` now, for the first replay."""
        async with self.consumer() as consumer:
            await consumer.end_offsets([TopicPartition(topic, 0)])  # asks for its metadata

    async def close(self) -> None:
        self._closes += 1
        idle, self._idle = self._idle, []
        for consumer in idle:
            await stop_consumer(consumer)


async def topic_bounds(watermarks: Watermarks, topic: str, partitions: int) -> Bounds:
    """Asked of a running consumer: one that knows the topic's metadata answers at once."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    beginning, end = await asyncio.gather(watermarks.beginning(tps), watermarks.end(tps))
    return Bounds(tuple(beginning[tp] for tp in tps), tuple(end[tp] for tp in tps))
