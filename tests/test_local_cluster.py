"""The local three-node Kafka cluster: a quorum that survives a SIGKILLed leader.

One cluster serves the module; the tests run in order (the last one stops it).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from socketio_kafka.adapter import AsyncKafkaManager, KafkaOptions
from socketio_kafka.gateway._process import free_port
from socketio_kafka.gateway.cli import main
from socketio_kafka.gateway.errors import ServiceError
from socketio_kafka.gateway.local_cluster import LocalKafkaCluster

from .support.layout import refused_start
from .support.relay import Relay
from .test_local_listeners import read_all
from .test_local_services import processes_with


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    relay_ports = [free_port() for _ in range(3)]
    cluster = LocalKafkaCluster(tmp_path_factory.mktemp("cluster"), relay_ports=relay_ports)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


async def describe(bootstrap: str, topic: str) -> dict[str, Any]:
    """Partition 0 of ``topic`` as the metadata says: leader, replicas, isr."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    [partition] = described["partitions"]
    return dict(partition)


async def wait_for(condition: Any, what: str, timeout: float = 60.0) -> Any:
    """Poll ``condition()`` (a coroutine function) until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} within {timeout:g}s"
        await asyncio.sleep(0.2)


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_three_nodes_answer_at_one_bootstrap_list(
    kafka_cluster: LocalKafkaCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    statuses = kafka_cluster.status()
    assert [s.node_id for s in statuses] == [1, 2, 3]
    assert all(s.up for s in statuses)
    assert len({s.pid for s in statuses}) == 3
    assert len({s.address for s in statuses}) == 3
    bootstrap = ",".join(str(s.address) for s in statuses)
    assert kafka_cluster.bootstrap_servers == bootstrap

    # Another launcher on the same data dir reuses the running nodes.
    again = LocalKafkaCluster(kafka_cluster.data_dir)
    assert again.start() == bootstrap
    assert again.status() == statuses
    for node in kafka_cluster.nodes:
        assert len(processes_with(node.config_path)) == 1

    assert main(["kafka", "status", "--brokers", "3", "--data-dir", str(again.data_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"node {s.node_id}: up, pid {s.pid} at {s.address}" for s in statuses
    ]


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_a_client_through_relays_reaches_every_node_only_through_them(
    kafka_cluster: LocalKafkaCluster,
) -> None:
    relays = []
    for node in kafka_cluster.nodes:
        assert node.relay_port is not None
        assert node.relay_target_port is not None
        relays.append(Relay(node.relay_port, node.relay_target_port))
    for relay in relays:
        await relay.open()
    relayed = ",".join(f"127.0.0.1:{relay.port}" for relay in relays)
    producer = AIOKafkaProducer(bootstrap_servers=relayed, request_timeout_ms=3000)
    try:
        await producer.start()
        await producer.send_and_wait(f"relayed-{uuid.uuid4().hex[:8]}", b"through")
        assert {b.port for b in producer.client.cluster.brokers()} == {r.port for r in relays}
        for relay in relays:
            await relay.cut()
        with pytest.raises(KafkaError):
            await producer.send_and_wait(f"relayed-{uuid.uuid4().hex[:8]}", b"cut")
    finally:
        await producer.stop()
        for relay in relays:
            await relay.cut()


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_the_manager_creates_three_replicas_two_in_sync_and_warns_of_weaker_topics(
    kafka_cluster: LocalKafkaCluster, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = kafka_cluster.bootstrap_servers
    assert bootstrap is not None
    channel = f"rf-{uuid.uuid4().hex[:8]}"
    manager = AsyncKafkaManager(f"kafka://{bootstrap}", channel)
    manager.enable_recovery(60)
    await manager.start()
    await manager.stop()
    for topic in (f"{channel}.events", f"{channel}.sessions"):
        assert await _replication(bootstrap, topic) == (3, "2")

    # A topic made by hand with one replica: the default asks for more, so it warns...
    weak, unwritable = f"weak-{uuid.uuid4().hex[:8]}", f"unwritable-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        one_in_sync = {"min.insync.replicas": "1"}
        await admin.create_topics([NewTopic(f"{weak}.events", 6, 1, topic_configs=one_in_sync)])
        # (the cluster's min.insync.replicas=2 for a topic of one replica: never writable)
        await admin.create_topics([NewTopic(f"{unwritable}.events", 6, 1)])
    finally:
        await admin.close()
    logger = logging.getLogger("test.replication")
    manager = AsyncKafkaManager(f"kafka://{bootstrap}", weak, logger=logger)
    try:
        with caplog.at_level(logging.WARNING, logger.name):
            await manager.start()
    finally:
        await manager.stop()
    assert any(
        f"topic '{weak}.events' has 1 replica(s) and min.insync.replicas=1, weaker than the 3"
        " and 2 this node would create" in r.getMessage()
        for r in caplog.records
    )
    # ...and a node told to require 3 refuses it.
    manager = AsyncKafkaManager(
        f"kafka://{bootstrap}", weak, options=KafkaOptions(replication_factor=3)
    )
    await refused_start(manager, "is configured for")
    manager = AsyncKafkaManager(f"kafka://{bootstrap}", unwritable)
    await refused_start(manager, "Kafka refuses every publish to it")


async def _replication(bootstrap: str, topic: str) -> tuple[int, str]:
    """The fewest replicas of any partition of ``topic`` and its min.insync.replicas."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        [described] = await admin.describe_topics([topic])
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None})
        [configs] = await admin.describe_configs([resource])
    finally:
        await admin.close()
    [[entry]] = [r["config_entries"] for r in configs.to_object()["resources"]]
    return min(len(p["replicas"]) for p in described["partitions"]), entry["config_value"]


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_acked_writes_survive_a_killed_leader(kafka_cluster: LocalKafkaCluster) -> None:
    bootstrap = kafka_cluster.bootstrap_servers
    assert bootstrap is not None
    topic = f"replicated-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        layout = NewTopic(topic, 1, 3, topic_configs={"min.insync.replicas": "2"})
        await admin.create_topics([layout])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for number in range(10):
            await producer.send_and_wait(topic, str(number).encode())
        before = await describe(bootstrap, topic)
        assert sorted(before["isr"]) == [1, 2, 3]
        leader = kafka_cluster.nodes[before["leader"] - 1]

        assert await asyncio.to_thread(leader.kill)
        assert leader.status() is None
        # Acked by the two left once the controller fences the dead leader.
        for number in range(10, 20):
            await asyncio.wait_for(producer.send_and_wait(topic, str(number).encode()), 60)
    finally:
        await producer.stop()
    after = await describe(bootstrap, topic)
    assert after["leader"] != leader.node_id
    assert leader.node_id not in after["isr"]

    values = await read_all(bootstrap, topic, 20)
    assert values == [str(number).encode() for number in range(20)]

    # Back on its own port with its data: it rejoins and catches up into the ISR.
    port = leader.port
    assert await asyncio.to_thread(leader.start) == f"127.0.0.1:{port}"

    async def rejoined() -> bool:
        return leader.node_id in (await describe(bootstrap, topic))["isr"]

    await wait_for(rejoined, f"node {leader.node_id} back in the ISR")
    assert all(s.up for s in kafka_cluster.status())


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_topics_made_while_a_broker_is_down_get_the_clusters_layout(
    kafka_cluster: LocalKafkaCluster,
) -> None:
    """Kafka lists the brokers up; the brokers' defaults (3 replicas, 2 in sync) say what
    the cluster is meant to hold. A channel first used during a broker's restart got 2
    replicas and min.insync.replicas=1 for good, with no word. Kafka places a new topic's
    replicas on the fenced broker too; it catches up when it is back."""
    bootstrap = kafka_cluster.bootstrap_servers
    assert bootstrap is not None
    down = kafka_cluster.nodes[2]
    assert await asyncio.to_thread(down.kill)

    async def brokers_up() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            await admin.start()
            return len((await admin.describe_cluster())["brokers"])
        except KafkaError:  # the client met the killed node before its metadata left it
            return 0
        finally:
            await admin.close()

    async def fenced() -> bool:
        return await brokers_up() == 2

    async def back() -> bool:
        return await brokers_up() == 3

    try:
        await wait_for(fenced, "the controller to fence the killed node")
        channel = f"down-{uuid.uuid4().hex[:8]}"
        manager = AsyncKafkaManager(f"kafka://{bootstrap}", channel)
        manager.enable_recovery(60)
        await manager.start()
        await manager.emit("e", 1, room="r")  # two in sync hold the write
        await manager.stop()
        for topic in (f"{channel}.events", f"{channel}.sessions"):
            assert await _replication(bootstrap, topic) == (3, "2")
    finally:
        assert await asyncio.to_thread(down.start) == f"127.0.0.1:{down.port}"
    await wait_for(back, "the node back")


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_stop_ends_exactly_the_cluster_nodes(kafka_cluster: LocalKafkaCluster) -> None:
    config_paths: list[Path] = [node.config_path for node in kafka_cluster.nodes]
    assert kafka_cluster.stop()
    assert not any(s.up for s in kafka_cluster.status())
    for path in config_paths:
        assert processes_with(path) == []
    assert not kafka_cluster.stop()


def test_a_cluster_of_two_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="at least 3"):
        LocalKafkaCluster(tmp_path, brokers=2)
    assert main(["kafka", "start", "--brokers", "2", "--data-dir", str(tmp_path)]) == 1
    assert "--brokers must be 1, or 3 or more" in capsys.readouterr().err


def test_a_node_of_a_cluster_never_started_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = LocalKafkaCluster(tmp_path)
    assert cluster.bootstrap_servers is None
    assert [s.up for s in cluster.status()] == [False, False, False]
    with pytest.raises(ServiceError, match="holds no cluster"):
        cluster.nodes[0].start()
    assert main(["kafka", "status", "--brokers", "3", "--data-dir", str(tmp_path)]) == 3
    assert "node 1: down (never started)" in capsys.readouterr().out
