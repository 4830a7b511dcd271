"""The local Kafka's optional listeners: a relay a proxy can cut, and SASL_SSL.

One broker with both serves the module.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from socketio_kafka.adapter import AsyncKafkaManager, KafkaOptions, PublishError
from socketio_kafka.gateway._process import free_port
from socketio_kafka.gateway.errors import ServiceError
from socketio_kafka.gateway.local_kafka import LocalKafka

from .support.relay import Relay
from .support.sockets import all_closed
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    kafka = LocalKafka(tmp_path_factory.mktemp("listeners"), relay_port=free_port(), secure=True)
    try:
        kafka.start()
        yield kafka
    finally:
        kafka.stop()


async def read_all(bootstrap: str, topic: str, count: int, **security: Any) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **security)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        values: list[bytes] = []
        async with asyncio.timeout(30):
            while len(values) < count:
                batch = await consumer.getmany(partition, timeout_ms=1000)
                values += [bytes(r.value) for r in batch.get(partition, []) if r.value]
    finally:
        await consumer.stop()
    return values


# --- the relay listener ---------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_a_client_through_the_relay_is_cut_with_it(broker: LocalKafka) -> None:
    assert broker.relay_port is not None
    assert broker.relay_target_port is not None
    relay = Relay(broker.relay_port, broker.relay_target_port)
    await relay.open()
    address = f"127.0.0.1:{broker.relay_port}"
    topic = f"relayed-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=address, request_timeout_ms=3000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before")
        # Every broker the client knows of is the relay: nothing bypasses it.
        assert {b.port for b in producer.client.cluster.brokers()} == {broker.relay_port}

        await relay.cut()
        with pytest.raises(KafkaError):
            await producer.send_and_wait(topic, b"during")
        # Only the relay is cut: Kafka itself still serves its plaintext listener.
        assert await read_all(address_of(broker), topic, 1) == [b"before"]

        await relay.open()
        await asyncio.wait_for(producer.send_and_wait(topic, b"after"), 30)
    finally:
        await producer.stop()
        await relay.cut()
    assert await read_all(address_of(broker), topic, 2) == [b"before", b"after"]


def address_of(broker: LocalKafka) -> str:
    status = broker.status()
    assert status is not None
    return status.address


# --- the SASL_SSL listener -----------------------------------------------------------------


def security(broker: LocalKafka, mechanism: str, password: str | None = None) -> dict[str, Any]:
    context: ssl.SSLContext = create_ssl_context(cafile=str(broker.ca_file))
    return {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": broker.sasl_username,
        "sasl_plain_password": password or broker.sasl_password,
        "ssl_context": context,
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
async def test_clients_publish_and_read_over_sasl_ssl(broker: LocalKafka, mechanism: str) -> None:
    address = broker.secure_address
    assert address is not None
    assert address != address_of(broker)
    topic = f"secure-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=address, **security(broker, mechanism))
    await producer.start()
    try:
        await producer.send_and_wait(topic, mechanism.encode())
    finally:
        await producer.stop()
    assert await read_all(address, topic, 1, **security(broker, mechanism)) == [mechanism.encode()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
async def test_a_wrong_password_is_refused(broker: LocalKafka, mechanism: str) -> None:
    assert broker.secure_address is not None
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.secure_address,
        **security(broker, mechanism, password="not-" + broker.sasl_password),
    )
    with pytest.raises(KafkaError):
        await producer.start()
    await producer.stop()
    await all_closed(int(broker.secure_address.rpartition(":")[2]))


@pytest.mark.timeout(60)
def test_a_running_broker_is_reused_only_with_the_listeners_asked_for(
    broker: LocalKafka,
) -> None:
    # The broker runs with both listeners; asking for a relay it lacks is refused, not ignored.
    with pytest.raises(ServiceError, match="relay"):
        LocalKafka(broker.data_dir, relay_port=free_port()).start()
    assert LocalKafka(broker.data_dir, secure=True).start() == address_of(broker)


@pytest.mark.timeout(120)
async def test_a_manager_stopped_while_kafka_is_gone_closes_every_client(
    broker: LocalKafka, caplog: pytest.LogCaptureFixture
) -> None:
    """aiokafka's consumer, stopped while a failed fetch sleeps its retry backoff, raised
    CancelledError out of `stop`, although nothing cancelled it: the manager's other
    consumer and its producer stayed open, their tasks running, and a second `stop` found
    nothing left to close. Its producer's flush, past that, waited for good on batches
    no broker took: a publish under way fails instead, once its time is up."""
    assert broker.relay_port is not None
    assert broker.relay_target_port is not None
    relay = Relay(broker.relay_port, broker.relay_target_port)
    await relay.open()
    before = asyncio.all_tasks()
    manager = AsyncKafkaManager(
        f"kafka://127.0.0.1:{broker.relay_port}",
        channel=f"gone-{uuid.uuid4().hex[:8]}",
        options=KafkaOptions(request_timeout_ms=4000),
    )
    manager.enable_recovery(60)
    try:
        await manager.start()
        await manager.emit("e", 1, room="r")
        await relay.cut()
        publish = asyncio.create_task(manager.emit("e", 2, room="r"))
        await wait_until(lambda: not manager.health().ready, 30, "Kafka seen gone")
        await manager.stop()
        with pytest.raises(PublishError):
            await publish
    finally:
        await relay.cut()
    left = {t.get_coro().__qualname__ for t in asyncio.all_tasks() - before} - {
        asyncio.current_task().get_coro().__qualname__  # type: ignore[union-attr]
    }
    assert left == set()
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
