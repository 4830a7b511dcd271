"""Services for the whole test session: one real Kafka, started by the project's launcher."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from .support.cluster import GatewayProcess, gateway_cluster


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``KAFKA_BOOTSTRAP_SERVERS`` if set, else a broker the launcher starts for this session."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    from socketio_kafka.gateway.local_kafka import LocalKafka

    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    address = broker.start()
    try:
        yield address
    finally:
        broker.stop()


@pytest.fixture
def kafka_url(kafka_bootstrap: str) -> str:
    return f"kafka://{kafka_bootstrap}"


@pytest.fixture
def channel() -> str:
    """A fresh channel, hence fresh topics, for every test."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def cluster(kafka_url: str, channel: str) -> AsyncIterator[list[GatewayProcess]]:
    async with gateway_cluster(kafka_url, channel, nodes=3) as gateways:
        yield gateways


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL`` if set, else a redis-server the launcher starts for this session."""
    given = os.environ.get("REDIS_URL")
    if given:
        yield given
        return
    from socketio_kafka.gateway.local_redis import LocalRedis

    server = LocalRedis(tmp_path_factory.mktemp("redis"))
    address = server.start()
    try:
        yield address
    finally:
        server.stop()
