"""AsyncKafkaManager on its own against the real broker: lifecycle and topic layout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import socketio
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import NodeNotReadyError

from socketio_kafka.adapter import (
    AsyncKafkaManager,
    BrokerUnavailable,
    KafkaOptions,
    PublishError,
    TopicLayoutError,
    codec,
)
from socketio_kafka.adapter import manager as manager_module
from socketio_kafka.adapter import topics as topics_module
from socketio_kafka.adapter.publisher import Publisher
from socketio_kafka.adapter.sessions import EPOCH_KEY

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


async def test_a_start_whose_epoch_write_timed_out_tries_again(
    kafka_url: str, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kafka not confirming the epoch in time (a broker slow to elect a leader) failed
    the start for good: a lazily started manager never tried again, and every publish
    waited out its timeout and failed. It is retried like an unreachable broker now."""
    timed_out: list[str] = []
    send_many = Publisher.send_many

    async def slow_epoch(self: Publisher, topic: str, records: Any) -> None:
        if not timed_out and any(key == EPOCH_KEY for key, _ in records):
            timed_out.append(topic)
            raise PublishError("Kafka did not confirm the record within 15.0s")
        await send_many(self, topic, records)

    monkeypatch.setattr(Publisher, "send_many", slow_epoch)
    manager = AsyncKafkaManager(kafka_url, channel)
    manager.enable_recovery(120)
    try:
        await manager.emit("e", {"x": 1}, room="r")  # starts the manager, lazily
        assert timed_out == [f"{channel}.sessions"]
        assert manager.ready
        assert manager.epoch
        assert manager.stats.connect_failures == 1
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


async def test_a_lazy_start_refused_is_tried_again_once_the_cause_is_mended(
    kafka_bootstrap: str, kafka_url: str, channel: str
) -> None:
    """A node that started lazily against a topic of too few partitions stayed down after
    an operator added them: its failed start was never tried again, every publish waited
    out its timeout, and health said only "not connected". A publish fails at once with
    the cause, health names it, and the next publish tries again."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{channel}.events", 2, 1)])
        manager = AsyncKafkaManager(kafka_url, channel, options=KafkaOptions(partitions=3))
        try:
            with pytest.raises(BrokerUnavailable, match=r"failed to start: .* has 2 partitions"):
                await manager.emit("e", {"x": 1}, room="r")
            (reason,) = manager.health().reasons
            assert reason.startswith("start failed (topic ")
            assert "has 2 partitions" in reason
            await admin.create_partitions({f"{channel}.events": NewPartitions(3)})
            await manager.emit("e", {"x": 2}, room="r")
            assert manager.health().ready
        finally:
            await manager.stop()
    finally:
        await admin.close()


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


async def test_an_in_sync_count_new_topics_cannot_hold_is_refused_before_one_is_made(
    kafka_bootstrap: str, kafka_url: str, channel: str
) -> None:
    """2 in sync, the factor left to the 1 broker there is: the topic made refused every
    publish, and stayed when the setting was mended."""
    options = KafkaOptions(min_insync_replicas=2)
    manager = AsyncKafkaManager(kafka_url, channel, options=options)
    await refused_start(manager, "min_insync_replicas=2 needs as many replicas")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert f"{channel}.events" not in await admin.list_topics()
    finally:
        await admin.close()


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


async def test_an_emit_then_a_disconnect_or_a_leave_here_reaches_the_socket_first(
    kafka_url: str, channel: str
) -> None:
    """ "Tell the client why, then kick it": python-socketio's managers deliver an emit here
    before they return, and a disconnect, a leave or a room's close then comes after it.
    This one delivers what it reads back from Kafka, and the disconnect, leave or close
    acted at once: the emit it had just written reached nobody. Local room changes and
    disconnects now wait for this node's emits written before them."""
    manager = AsyncKafkaManager(kafka_url, channel, options=KafkaOptions(partitions=3))
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)

    @sio.on("join")
    async def join(sid: str, room: str) -> None:
        await sio.enter_room(sid, room)

    @sio.on("leave-me")
    async def leave_me(sid: str, room: str) -> None:
        await sio.emit("last", room, room=room)
        await sio.leave_room(sid, room)

    @sio.on("close-it")
    async def close_it(sid: str, room: str) -> None:
        await sio.emit("last", room, room=room)
        await sio.close_room(room)

    @sio.on("kick-me")
    async def kick_me(sid: str) -> None:
        await sio.emit("bye", "kicked", to=sid)
        await sio.disconnect(sid)

    got: list[Any] = []
    client = socketio.AsyncClient(reconnection=False)
    for event in ("last", "bye"):
        client.on(event, lambda data, event=event: got.append((event, data)))
    async with run_server(socketio.ASGIApp(sio)) as url:
        await manager.start()
        try:
            await client.connect(url, transports=["websocket"])
            for room in ("left", "closed"):
                await client.call("join", room)
            await client.call("leave-me", "left")
            await client.call("close-it", "closed")
            await client.emit("kick-me")
            await wait_until(lambda: not client.connected, 15, "the kick")
            assert got == [("last", "left"), ("last", "closed"), ("bye", "kicked")]
        finally:
            await client.disconnect()
            await manager.stop()


async def test_a_transactions_marker_is_read_past(
    kafka_bootstrap: str, kafka_url: str, channel: str
) -> None:
    """Bridges write the events topic in transactions, each ended by a marker no consumer
    is handed. The live position stayed on it, one short of Kafka's end and of where a
    node started later stood: a session made there could not be recovered here (the claim
    waits for this node to read as far as the client) until another record came."""
    options = KafkaOptions(partitions=1, request_timeout_ms=3000)
    manager = AsyncKafkaManager(kafka_url, channel, options=options)
    await manager.start()
    try:
        message = codec.emit_message(
            "bridged", 1, namespace="/", room="r", skip_sid=None, callback=None, host_id="b"
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, transactional_id=f"{channel}-bridge"
        )
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send_and_wait(f"{channel}.events", codec.encode(message))
        finally:
            await producer.stop()
        # The record at 0, its commit marker at 1: Kafka's end is 2.
        assert await manager.delivered_to([2])
        assert manager.positions == [2]
    finally:
        await manager.stop()


async def test_a_client_on_another_node_answers_with_bytes_and_unanswered_asks_are_forgotten(
    kafka_url: str, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ack answered with bytes by a client of another node failed to encode there
    (logged) and the asker timed out; and every ask of a client on another node that was
    never answered (it left, or timed out) was kept by the asker for good."""
    monkeypatch.setattr(manager_module, "REMOTE_ACK_S", 1.0)
    options = KafkaOptions(partitions=3)
    here, there = (AsyncKafkaManager(kafka_url, channel, options=options) for _ in range(2))
    sio_here = socketio.AsyncServer(async_mode="asgi", client_manager=here)
    asker = socketio.AsyncServer(async_mode="asgi", client_manager=there)
    never = asyncio.Event()

    async def silent() -> None:
        await never.wait()

    client = socketio.AsyncClient(reconnection=False)
    client.on("binary", lambda: (b"\x00pong", {"raw": b"\x01"}))
    client.on("silent", silent)
    async with run_server(socketio.ASGIApp(sio_here)) as url:
        await here.start()
        await there.start()
        try:
            await client.connect(url, transports=["websocket"])
            sid = client.get_sid("/")
            assert await asker.call("binary", to=sid, timeout=10) == (b"\x00pong", {"raw": b"\x01"})
            with pytest.raises(socketio.exceptions.TimeoutError):
                await asker.call("silent", to=sid, timeout=0.5)
            assert sid in there.callbacks
            await wait_until(lambda: sid not in there.callbacks, 10, "the unanswered ask forgotten")
        finally:
            never.set()
            await client.disconnect()
            await here.stop()
            await there.stop()


async def test_a_manager_without_recovery_leaves_the_sessions_topic_to_a_recovering_one(
    kafka_url: str, channel: str
) -> None:
    """A write-only manager (or a node without recovery) asked Kafka about the sessions
    topic, which a broker that creates topics on demand then made with its own defaults
    (cleanup.policy=delete): no recovering node could start on that channel after."""
    async with AsyncKafkaManager(kafka_url, channel, write_only=True) as writer:
        await writer.emit("e", 1, room="r")
    recovering = AsyncKafkaManager(kafka_url, channel)
    recovering.enable_recovery(120)
    await recovering.start()
    try:
        assert recovering.ready
    finally:
        await recovering.stop()


async def test_a_start_that_meets_a_broker_not_ready_tries_again(
    kafka_url: str, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that stalls or restarts as a node starts answers NodeNotReadyError or
    RequestTimedOutError: the start let it out and the node stayed unready for good,
    its health saying "not connected to Kafka yet". It is retried as an unreachable one."""
    refused: list[str] = []
    ensure = AsyncKafkaManager._ensure_topics

    async def not_ready_once(self: AsyncKafkaManager) -> None:
        if not refused:
            refused.append("once")
            raise NodeNotReadyError("node 1 not ready")
        await ensure(self)

    monkeypatch.setattr(AsyncKafkaManager, "_ensure_topics", not_ready_once)
    manager = AsyncKafkaManager(kafka_url, channel)
    try:
        await manager.start()
        assert manager.health().ready
        assert manager.stats.connect_failures == 1
    finally:
        await manager.stop()


@pytest.mark.parametrize("late", ["_partitions", "_described_configs"])
async def test_a_new_topic_whose_metadata_is_late_is_waited_for_again(
    kafka_url: str, channel: str, monkeypatch: pytest.MonkeyPatch, late: str
) -> None:
    """A broker just started may be slow to show a topic it made: past the wait the start
    raised TopicLayoutError ("never showed up"), a layout to fix, and the node stopped for
    good. It is Kafka not ready yet, and retried."""
    real = getattr(topics_module, late)
    misses = 0

    async def late_once(admin: AIOKafkaAdminClient, name: str) -> Any:
        nonlocal misses
        if misses >= 3:
            return await real(admin, name)
        misses += 1
        return ([], []) if late == "_partitions" else None

    monkeypatch.setattr(topics_module, "_VISIBLE_TIMEOUT_S", 0.1)
    monkeypatch.setattr(topics_module, late, late_once)
    manager = AsyncKafkaManager(kafka_url, channel)
    try:
        await manager.start()
        assert manager.health().ready
        assert manager.stats.connect_failures >= 1
    finally:
        await manager.stop()


async def test_a_start_that_fails_says_why_in_its_health(kafka_url: str, channel: str) -> None:
    options = KafkaOptions(partitions=2)
    async with AsyncKafkaManager(kafka_url, channel, options=options):
        pass  # the topic, made with 2 partitions
    manager = AsyncKafkaManager(kafka_url, channel)  # configured for 6
    with pytest.raises(TopicLayoutError):
        await manager.start()
    (reason,) = manager.health().reasons
    assert reason.startswith("start failed (topic"), reason


async def test_a_room_closed_by_an_ack_callback_the_consume_loop_runs_does_not_stall_it(
    kafka_url: str, channel: str
) -> None:
    """An answer from a client on another node runs the asker's callback in the asker's
    consume loop: a callback that emitted, then closed a room, waited for the loop to
    deliver the emit, which waited for the callback (up to a request's timeout, every
    delivery of the node stalled meanwhile)."""
    options = KafkaOptions(partitions=3, request_timeout_ms=60_000)
    here, there = (AsyncKafkaManager(kafka_url, channel, options=options) for _ in range(2))
    sio_here = socketio.AsyncServer(async_mode="asgi", client_manager=here)
    asker = socketio.AsyncServer(async_mode="asgi", client_manager=there)
    closed = asyncio.Event()

    async def answered(*_: Any) -> None:
        await asker.emit("last", 1, room="done")
        await asker.close_room("done")
        closed.set()

    client = socketio.AsyncClient(reconnection=False)
    client.on("ask", lambda: "yes")
    async with run_server(socketio.ASGIApp(sio_here)) as url:
        await here.start()
        await there.start()
        try:
            await client.connect(url, transports=["websocket"])
            await asker.emit("ask", to=client.get_sid("/"), callback=answered)
            await wait_until(closed.is_set, 10, "the callback's close_room")
        finally:
            await client.disconnect()
            await here.stop()
            await there.stop()
