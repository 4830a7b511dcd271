"""Stopping aiokafka's clients whatever they are doing, the broker gone included.

aiokafka 0.14's ``stop`` of either client can fail to finish with Kafka away; what it
leaves open is closed here, through the internals tests/test_seams.py checks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import ProducerClosed

__all__ = ["stop_consumer", "stop_producer"]


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.stop()``, finished when aiokafka leaves it half done.

    aiokafka cancels a fetch that failed and sleeps its retry backoff (the broker gone),
    then awaits it: the CancelledError comes out of ``stop`` although nothing cancelled
    the caller, and the client's connections and tasks stay open. A cancel of the
    caller's own task still raises.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        internals: Any = consumer
        pending = list(internals._fetcher._pending_tasks)
        for fetch in pending:
            fetch.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await internals._client.close()


async def stop_producer(producer: AIOKafkaProducer, flush_s: float) -> bool:
    """``producer.stop()`` with its flush bounded; whether every batch was flushed.

    With the broker gone, aiokafka's flush waits for batches no broker takes, for good.
    Past ``flush_s`` its sender is cancelled, which fails the batches left, and its
    connections are closed: a stopped producer sends nothing later, out of its turn.
    """
    try:
        async with asyncio.timeout(flush_s):
            await producer.stop()
    except TimeoutError:
        internals: Any = producer
        await internals._sender.close()
        # A cancelled sender fails nothing (aiokafka fails the batches of a sender that
        # raised): the flush and every publish would wait on them for good. A batch sent
        # once and queued again for a retry is out of the pending set its end removes it
        # from (a KeyError logged per batch): put back.
        accumulator = internals._message_accumulator
        for batches in accumulator._batches.values():
            accumulator._pending_batches.update(batches)
        accumulator.fail_all(ProducerClosed())
        await internals.client.close()
        return False
    return True
