"""A busy room's events leave a node in few produce requests, in batches the topic accepts.

aiokafka keeps one produce request in flight per broker with one batch a partition in it,
and a room's events share a partition: what gathers while a request is out goes in the
next one, up to ``max_batch_size``. Real Kafka; the requests are counted as aiokafka makes
them (a spy on its request handler, which fails loudly if aiokafka renames it).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.producer.sender import SendProduceReqHandler

from socketio_kafka.adapter import AsyncKafkaManager, KafkaOptions

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]

_BURST = 1000
_TEXT = "x" * 300  # a record of about 500 bytes, 500 KB in all
#: Longer than handing the burst over takes, even on a slow host (about 0.1-0.2 s here).
_LINGER_MS = 1000


@pytest.fixture
def event_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The record count of every events-topic batch aiokafka puts in a produce request."""
    counts: list[int] = []
    create = SendProduceReqHandler.create_request

    def spy(handler: Any) -> Any:
        batches = handler._batches.items()
        counts.extend(batch.record_count for tp, batch in batches if tp.topic.endswith(".events"))
        return create(handler)

    monkeypatch.setattr(SendProduceReqHandler, "create_request", spy)
    return counts


async def _burst(manager: AsyncKafkaManager) -> None:
    await asyncio.gather(
        *(manager.emit("e", {"n": n, "text": _TEXT}, room="busy") for n in range(_BURST))
    )


async def test_a_busy_rooms_burst_goes_out_in_a_few_requests(
    kafka_url: str, channel: str, event_batches: list[int]
) -> None:
    """With aiokafka's 16 KiB a batch, 500 KB to one room took at least 31 round trips
    (session 28: a room stalled near 5,500 events/s, 85% of its requests full).

    The linger is pinned long, so only a batch's capacity splits the burst: at the default
    linger of an idle node (0), the split follows how fast the host hands records over
    against a round trip (3-4 requests on a quiet machine, 10 once in CI, 36-72 on a slow,
    busy one): a measure of speed, which `benchmarks/` takes, not a test.
    """
    options = KafkaOptions(linger_ms=_LINGER_MS, linger_max_ms=_LINGER_MS)
    async with AsyncKafkaManager(kafka_url, channel=channel, options=options) as manager:
        await _burst(manager)
    assert sum(event_batches) == _BURST
    assert max(event_batches) * 500 > 2 * 16 * 1024, event_batches
    assert len(event_batches) <= 3, event_batches


async def test_batches_stay_within_what_the_topic_accepts(
    kafka_url: str, channel: str, event_batches: list[int]
) -> None:
    """The topic is made to take records up to ``max_record_bytes``: a batch larger than that
    would be refused whole, and every publish in it with it."""
    options = KafkaOptions(max_record_bytes=20_000)
    async with AsyncKafkaManager(kafka_url, channel=channel, options=options) as manager:
        await _burst(manager)  # raises if any publish is refused
    assert sum(event_batches) == _BURST
    assert max(event_batches) * 500 <= 20_000 + 5_000
