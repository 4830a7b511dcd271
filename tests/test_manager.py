"""AsyncKafkaManager on its own against the real broker: lifecycle and topic layout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import socketio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from socketio_kafka.adapter import AsyncKafkaManager, BrokerUnavailable, KafkaOptions

from .support.layout import refused_start
from .support.server import run_server
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(60)]


async def test_start_and_stop_are_safe_twice_and_create_the_topic(
    kafka_bootstrap: str, kafka_url: str, channel: str
) -> None:
    manager = AsyncKafkaManager(kafka_url, channel, options=KafkaOptions(partitions=3))
    await manager.start()
    try:
        await manager.start()
        assert manager.ready
        assert manager.positions == [0, 0, 0]
    finally:
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


async def test_a_publish_as_the_manager_stops_does_not_start_it_again(
    kafka_url: str, channel: str
) -> None:
    """A publish that found the manager not ready started it in the background; one made
    as it stopped (an app's handler still running) started it again after `stop`
    returned: Kafka clients, heartbeat and all, running on. It is refused now, and only
    `start` starts a stopped manager."""
    manager = AsyncKafkaManager(kafka_url, channel)
    await manager.start()
    late = asyncio.create_task(manager.emit("e", {"x": 1}, room="r"))
    await manager.stop()
    [outcome] = await asyncio.gather(late, return_exceptions=True)
    assert isinstance(outcome, BrokerUnavailable), outcome
    assert (manager.ready, manager._start_task) == (False, None)
    assert not await manager.wait_ready()
    await manager.start()  # a manager stopped starts again when told to
    try:
        await manager.emit("e", {"x": 2}, room="r")
    finally:
        await manager.stop()


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
    await refused_start(AsyncKafkaManager(kafka_url, channel), error)


async def _topic_layout(bootstrap: str, topic: str) -> tuple[int, str]:
    """Replicas of partition 0 and the topic's min.insync.replicas, as the broker says."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None})
        (configs,) = await admin.describe_configs([resource])
    finally:
        await admin.close()
    [[entry]] = [r["config_entries"] for r in configs.to_object()["resources"]]
    return len(described["partitions"][0]["replicas"]), entry["config_value"]


async def test_new_topics_get_the_replication_the_cluster_can_hold(
    kafka_bootstrap: str, kafka_url: str, channel: str
) -> None:
    """One broker: one replica, one in sync, set on the topic (not left to broker defaults)."""
    manager = AsyncKafkaManager(kafka_url, channel)
    manager.enable_recovery(60)
    await manager.start()
    await manager.stop()
    for topic in (f"{channel}.events", f"{channel}.sessions"):
        assert await _topic_layout(kafka_bootstrap, topic) == (1, "1")


async def test_a_replication_the_cluster_cannot_hold_is_one_clear_error(
    kafka_url: str, channel: str
) -> None:
    manager = AsyncKafkaManager(kafka_url, channel, options=KafkaOptions(replication_factor=3))
    await refused_start(manager, r"with 3 replicas: the cluster has 1 broker\(s\)")


@pytest.mark.parametrize(
    "options",
    [KafkaOptions(replication_factor=2), KafkaOptions(min_insync_replicas=2)],
    ids=["replicas", "min-insync"],
)
async def test_an_existing_topic_weaker_than_required_is_refused(
    kafka_bootstrap: str, kafka_url: str, channel: str, options: KafkaOptions
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{channel}.events", 6, 1)])
    finally:
        await admin.close()
    manager = AsyncKafkaManager(kafka_url, channel, options=options)
    await refused_start(manager, r"has 1 replica\(s\) and min.insync.replicas=1")


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
