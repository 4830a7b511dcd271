"""Offsets asked at once share one request, and no caller gets an answer asked before it
asked (with a fake consumer; recoveries on real Kafka use it in test_recovery*.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from socketio_kafka.adapter.watermarks import Watermarks

pytestmark = pytest.mark.timeout(10)

A, B = TopicPartition("t.events", 0), TopicPartition("t.sessions", 1)


class _Consumer:
    """End offsets that grow by one per request; each request waits for a permit."""

    def __init__(self) -> None:
        self.requests: list[list[TopicPartition]] = []
        self.permits = asyncio.Semaphore(0)
        self.failure: Exception | None = None

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.requests.append(tps)
        await self.permits.acquire()
        if self.failure is not None:
            raise self.failure
        return dict.fromkeys(tps, len(self.requests))

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)


def _watermarks(consumer: Any) -> Watermarks:
    return Watermarks(lambda: consumer)


async def _turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_callers_at_once_share_one_request_of_every_partition_asked() -> None:
    consumer = _Consumer()
    marks = _watermarks(consumer)
    calls = [asyncio.create_task(marks.end(tps)) for tps in ([A], [B], [A, B])]
    await _turns()
    consumer.permits.release()
    assert await asyncio.gather(*calls) == [{A: 1}, {B: 1}, {A: 1, B: 1}]
    assert consumer.requests == [[A, B]]


async def test_a_caller_during_a_request_waits_for_the_next_one() -> None:
    """The request under way may have been answered before a record written just now."""
    consumer = _Consumer()
    marks = _watermarks(consumer)
    first = asyncio.create_task(marks.end([A]))
    await _turns()
    later = [asyncio.create_task(marks.end([A])) for _ in range(3)]
    await _turns()
    consumer.permits.release()
    assert await first == {A: 1}
    await _turns()
    assert not any(call.done() for call in later)
    consumer.permits.release()
    assert [await call for call in later] == [{A: 2}] * 3
    assert len(consumer.requests) == 2


async def test_a_busy_node_lets_callers_gather_before_each_request() -> None:
    """Its linger, before the first request and between two: callers that come within it
    share one request (a mass reconnect's recoveries asked back to back otherwise)."""
    consumer = _Consumer()
    consumer.permits = asyncio.Semaphore(2)
    wait = 0.2
    marks = Watermarks(lambda: consumer, lambda: wait)
    first = asyncio.create_task(marks.end([A]))
    await _turns()
    assert consumer.requests == []  # gathering
    more = asyncio.create_task(marks.end([B]))
    assert await first == {A: 1}
    assert await more == {B: 1}
    assert consumer.requests == [[A, B]]
    wait = 0.0  # idle again: asked at once
    assert await marks.end([A]) == {A: 2}


async def test_a_failed_request_fails_its_callers_only_and_the_next_one_asks_again() -> None:
    consumer = _Consumer()
    marks = _watermarks(consumer)
    consumer.failure = KafkaTimeoutError()
    failing = [asyncio.create_task(marks.end([A])) for _ in range(2)]
    await _turns()
    consumer.permits.release()
    for call in failing:
        with pytest.raises(KafkaTimeoutError):
            await call
    consumer.failure = None
    asking = asyncio.create_task(marks.end([A]))
    await _turns()
    consumer.permits.release()
    assert await asking == {A: 2}


async def test_a_cancelled_caller_leaves_the_others_their_answer() -> None:
    consumer = _Consumer()
    marks = _watermarks(consumer)
    gone, staying = (asyncio.create_task(marks.end([A])) for _ in range(2))
    await _turns()
    gone.cancel()
    consumer.permits.release()
    assert await staying == {A: 1}
    assert gone.cancelled()


async def test_without_a_consumer_callers_get_a_connection_error() -> None:
    marks = Watermarks(lambda: None)
    assert not marks.available
    with pytest.raises(KafkaConnectionError):
        await marks.end([A])
    assert await _watermarks(_Consumer()).beginning([A, B]) == {A: 0, B: 0}
