"""Services for the whole test session: one real Kafka (and one Redis).

Each is, in this order: the one the environment names; a container, where a Docker engine
answers (testcontainers); or a local one the project's launcher starts.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .support import containers
from .support.cluster import GatewayProcess, gateway_cluster
from .support.jsclient import JsClient

#: Every channel handed to a test this session: its topics' names begin with it.
_CHANNELS: list[str] = []

if TYPE_CHECKING:
    from socketio_kafka.gateway.local_kafka import LocalKafka
    from socketio_kafka.gateway.local_redis import LocalRedis


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``KAFKA_BOOTSTRAP_SERVERS`` if set, else a broker started for this session."""
    from socketio_kafka.gateway.local_kafka import LocalKafka

    yield from _given_or_started(
        "KAFKA_BOOTSTRAP_SERVERS", containers.kafka, LocalKafka, tmp_path_factory
    )
    if given := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        # A broker of the developer's: its topics of this session go. Left, a few runs of
        # the suite (7,000 partitions each) ran a local broker's 512 MiB heap out.
        asyncio.run(_delete_topics(given, tuple(_CHANNELS)))


async def _delete_topics(bootstrap: str, channels: tuple[str, ...]) -> None:
    """Delete the topics whose names begin with one of ``channels``."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(channels)]
        for first in range(0, len(names), 100):  # in requests of 100
            await admin.delete_topics(names[first : first + 100])
    finally:
        await admin.close()


@pytest.fixture
def kafka_url(kafka_bootstrap: str) -> str:
    return f"kafka://{kafka_bootstrap}"


@pytest.fixture
def channel() -> str:
    """A fresh channel, hence fresh topics, for every test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    _CHANNELS.append(name)
    return name


@pytest.fixture
async def cluster(kafka_url: str, channel: str) -> AsyncIterator[list[GatewayProcess]]:
    async with gateway_cluster(kafka_url, channel, nodes=3) as gateways:
        yield gateways


@pytest.fixture
async def js() -> AsyncIterator[JsClient]:
    """The official socket.io JS client, in a Node process of its own."""
    client = await JsClient().start()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL`` if set, else a redis-server started for this session."""
    from socketio_kafka.gateway.local_redis import LocalRedis

    yield from _given_or_started("REDIS_URL", containers.redis, LocalRedis, tmp_path_factory)


def _given_or_started(
    variable: str,
    container: Callable[[], AbstractContextManager[str]],
    service: Callable[[Path], LocalKafka | LocalRedis],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The address in ``variable`` if set, else a service started (and stopped) here."""
    given = os.environ.get(variable)
    if given:
        yield given
        return
    if containers.docker_engine_answers():
        with container() as address:
            yield address
        return
    started = service(tmp_path_factory.mktemp(variable.lower()))
    address = started.start()
    try:
        yield address
    finally:
        started.stop()
