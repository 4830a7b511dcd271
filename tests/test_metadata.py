"""Forced metadata updates are paced: without a broker, no busy loop of failed updates."""

from __future__ import annotations

import asyncio
import contextlib
import inspect

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.producer.sender import Sender

from socketio_kafka.adapter.metadata import pace_metadata_updates


class _BrokerGone:
    """As aiokafka's client with no broker to ask: every forced update fails at once."""

    def __init__(self) -> None:
        self.attempts = 0

    async def close(self) -> None:
        """As aiokafka's client closes."""

    def force_metadata_update(self) -> asyncio.Future[bool]:
        self.attempts += 1
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        done.set_result(False)
        return done


async def _sender_loop(client: _BrokerGone, seconds: float) -> None:
    """What aiokafka's sender does while a partition has no leader: ask again, at once."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.wait([client.force_metadata_update()])


async def test_paced_a_failing_update_waits_the_backoff() -> None:
    client = _BrokerGone()
    pace_metadata_updates(client, 0.1)
    await _sender_loop(client, 0.35)
    assert 3 <= client.attempts <= 5


async def test_callers_share_the_update_waiting_its_turn_or_in_flight() -> None:
    """aiokafka's ``partitions_for`` asks twice in a row (as it adds the topic, then for
    it): the second ask shares the first's update instead of waiting out the backoff (a
    node's producer took 0.2 s to start, 0.1 s a topic)."""
    client = _BrokerGone()
    pace_metadata_updates(client, 10.0)
    asks = [client.force_metadata_update(), client.force_metadata_update()]
    assert await asyncio.wait_for(asyncio.gather(*asks), 1) == [False, False]
    assert client.attempts == 1
    client = _BrokerGone()
    pace_metadata_updates(client, 0.05)
    assert await client.force_metadata_update() is False  # the first goes at once
    results = await asyncio.gather(*(client.force_metadata_update() for _ in range(20)))
    assert results == [False] * 20  # each answered, by one update after the backoff
    assert client.attempts == 2


async def test_a_caller_that_gives_up_leaves_the_shared_update_to_the_others() -> None:
    """The broker watch's probe gives up on its update after 2 s; aiokafka's sender, waiting
    on the same update, got the cancel and ended for good: nothing was sent again."""
    client = _BrokerGone()
    answer = asyncio.get_running_loop().create_future()
    client.force_metadata_update = lambda: answer  # type: ignore[method-assign]
    pace_metadata_updates(client, 0.0)
    sender = client.force_metadata_update()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(client.force_metadata_update(), 0.01)  # the probe
    answer.set_result(True)
    assert await asyncio.wait_for(sender, 1) is True
    await client.close()


async def test_a_closed_client_leaves_no_update_waiting_its_turn() -> None:
    client = _BrokerGone()
    pace_metadata_updates(client, 10.0)
    assert await client.force_metadata_update() is False
    waiting = client.force_metadata_update()  # its turn in 10 s
    await client.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert client.attempts == 1


async def test_aiokafka_seams_the_pacing_relies_on() -> None:
    """The clients are where we replace ``force_metadata_update``, and the sender's
    unknown-leader branch still asks through it with no pause of its own."""
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    try:
        assert isinstance(producer.client, AIOKafkaClient)
        assert isinstance(consumer._client, AIOKafkaClient)
        source = inspect.getsource(Sender._sender_routine)
        assert "fut = self.client.force_metadata_update()" in source
    finally:
        await producer.stop()
        await consumer.stop()
