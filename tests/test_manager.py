"""AsyncKafkaManager on its own against the real broker: lifecycle and topic layout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import socketio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from socketio_kafka.adapter import AsyncKafkaManager, KafkaOptions, TopicLayoutError

from .support.server import run_server
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(60)]


async def test_start_and_stop_are_safe_twice_and_create_the_topic(
    kafka_bootstrap: str, kafka_url: str, channel: str
) -> None:
    manager = AsyncKafkaManager(kafka_url, channel, options=KafkaOptions(partitions=3))
    await manager.start()
    await manager.start()
    assert manager.ready
    assert manager.positions == [0, 0, 0]
    await manager.stop()
    await manager.stop()
    assert not manager.ready
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        (topic,) = await admin.describe_topics([f"{channel}.events"])
    finally:
        await admin.close()
    assert len(topic["partitions"]) == 3


@pytest.mark.parametrize(
    ("partitions", "configs", "error"),
    [
        (2, {}, "has 2 partitions, this node is configured for 6"),
        (6, {"cleanup.policy": "compact"}, "cleanup.policy='compact'"),
    ],
)
async def test_an_existing_topic_that_would_lose_events_is_refused(
    kafka_bootstrap: str,
    kafka_url: str,
    channel: str,
    partitions: int,
    configs: dict[str, str],
    error: str,
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(f"{channel}.events", partitions, 1, topic_configs=configs)]
        )
    finally:
        await admin.close()
    manager = AsyncKafkaManager(kafka_url, channel)
    with pytest.raises(TopicLayoutError, match=error):
        await manager.start()
    assert not manager.ready
    await manager.stop()


@pytest.mark.parametrize("interval_ms", [0.0, 5.0])
async def test_paced_and_unpaced_fetching_deliver_every_event_in_order(
    kafka_url: str, channel: str, interval_ms: float
) -> None:
    """``fetch_interval_ms`` pauses the partitions between fetches: nothing may stay paused."""
    options = KafkaOptions(fetch_interval_ms=interval_ms)
    manager = AsyncKafkaManager(kafka_url, channel, options=options)
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)
    got: list[Any] = []
    client = socketio.AsyncClient()
    client.on("n", got.append)
    async with run_server(socketio.ASGIApp(sio)) as url:
        await manager.start()
        await client.connect(url, transports=["websocket"])
        try:
            async with AsyncKafkaManager(kafka_url, channel, write_only=True) as writer:
                for seq in range(100):
                    await writer.emit("n", seq)
                await wait_until(lambda: len(got) >= 100, 30, "100 events")
                # Idle past fetch_max_wait_ms (500): the next event lands in a long poll.
                await asyncio.sleep(1.5)
                await writer.emit("n", "after a quiet spell")
                await wait_until(lambda: len(got) == 101, 30, "the last event")
            assert got == [*range(100), "after a quiet spell"]
        finally:
            await client.disconnect()
            await manager.stop()
