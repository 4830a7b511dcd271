"""Beginning and end offsets, asked of Kafka once for every caller that asks at once.

A recovery asks for offsets three times (the sessions topic's end before judging a claim,
the events topic's bounds before a replay), each a request to the partitions' leaders.
When a node dies, hundreds of its clients recover on each survivor within a second, and
each survivor asked about a thousand times. Here a caller waits for the next request that
starts after it asked (one already under way could miss a record written just before),
and every caller waiting then shares that request, the union of their partitions. A busy
node waits as long as its producer's linger widened before each request, as its records
do, so that more callers share it: a survivor of a node's death asked 2,000-2,900 times
for 2,500 clients with requests back to back (session 27), 64-243 times since.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError

__all__ = ["Watermarks"]

Offsets = dict[TopicPartition, int]
_Ask = Callable[[AIOKafkaConsumer, list[TopicPartition]], Awaitable[Offsets]]


class Watermarks:
    """Offsets asked of the consumer ``consumer()`` returns (None: not connected);
    ``gather()``: seconds to let callers gather before each request (`Pacing.widened_s`)."""

    def __init__(
        self,
        consumer: Callable[[], AIOKafkaConsumer | None],
        gather: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._consumer = consumer
        self._end = _Shared(lambda c, tps: c.end_offsets(tps), consumer, gather)
        self._beginning = _Shared(lambda c, tps: c.beginning_offsets(tps), consumer, gather)

    @property
    def available(self) -> bool:
        return self._consumer() is not None

    async def end(self, tps: Collection[TopicPartition]) -> Offsets:
        """The next offset Kafka will write on each of ``tps``, as of after this call."""
        return await self._end.ask(tps)

    async def beginning(self, tps: Collection[TopicPartition]) -> Offsets:
        """The oldest offset Kafka still holds on each of ``tps``."""
        return await self._beginning.ask(tps)


class _Batch:
    """The callers of one request: what they want, and the answer they share."""

    __slots__ = ("answer", "tps")

    def __init__(self) -> None:
        self.tps: set[TopicPartition] = set()
        self.answer: asyncio.Future[Offsets] = asyncio.get_running_loop().create_future()
        # Retrieved even when every caller was cancelled meanwhile: no warning at exit.
        self.answer.add_done_callback(lambda f: f.cancelled() or f.exception())


class _Shared:
    """One kind of request, one at a time, each shared by the callers that came during
    the one before it."""

    def __init__(
        self,
        ask: _Ask,
        consumer: Callable[[], AIOKafkaConsumer | None],
        gather: Callable[[], float],
    ) -> None:
        self._ask = ask
        self._consumer = consumer
        self._gather = gather
        self._next: _Batch | None = None
        self._asking: asyncio.Task[None] | None = None

    async def ask(self, tps: Collection[TopicPartition]) -> Offsets:
        batch = self._next
        if batch is None:
            batch = self._next = _Batch()
        batch.tps.update(tps)
        if self._asking is None:
            self._asking = asyncio.get_running_loop().create_task(self._run())
        # One caller cancelled (its connection gone) cancels nobody else's answer.
        answer = await asyncio.shield(batch.answer)
        return {tp: answer[tp] for tp in tps}

    async def _run(self) -> None:
        batch: _Batch | None = None
        try:
            while self._next is not None:
                if (wait := self._gather()) > 0:
                    await asyncio.sleep(wait)
                batch, self._next = self._next, None
                consumer = self._consumer()
                if consumer is None:
                    batch.answer.set_exception(KafkaConnectionError("the manager is not connected"))
                    continue
                try:
                    batch.answer.set_result(await self._ask(consumer, sorted(batch.tps)))
                except Exception as exc:  # the callers' to handle, as if each had asked
                    batch.answer.set_exception(exc)
        finally:
            self._asking = None
            for waiting in (batch, self._next):  # stopped with the manager: none waits on
                if waiting is not None and not waiting.answer.done():
                    waiting.answer.cancel()
            self._next = None
