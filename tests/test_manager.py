"""AsyncKafkaManager on its own against the real broker: lifecycle and topic layout."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from socketio_kafka.adapter import AsyncKafkaManager, KafkaOptions, TopicLayoutError

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
