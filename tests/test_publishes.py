"""`PublishLedger` in-process: what it answers, and that what it remembers is bounded (the
real-Kafka proof is tests/test_exactly_once.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest

from socketio_kafka.adapter import PublishError
from socketio_kafka.adapter.publishes import PublishLedger, Turn, publisher_of
from socketio_kafka.gateway.errors import InvalidSettings
from socketio_kafka.gateway.settings import Settings, env_settings

PUB = publisher_of("a-pid")


def _headers(pub_id: str, publisher: str = PUB) -> list[tuple[str, bytes | None]]:
    return [("sio.v", b"1"), ("sio.cid", pub_id.encode()), ("sio.pub", publisher.encode())]


class _Kafka:
    """Stands in for the manager: counts produces and catch-ups, fails when told to."""

    def __init__(self) -> None:
        self.produced: list[str] = []
        self.catch_ups: list[Sequence[int] | None] = []
        self.fail = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def catch_up(self, partitions: Sequence[int] | None) -> None:
        self.catch_ups.append(partitions)

    def producer(self, pub_id: str) -> Callable[[], Awaitable[None]]:
        async def produce() -> None:
            await self.gate.wait()
            if self.fail:
                raise PublishError("Kafka did not confirm the record (it may still be written)")
            self.produced.append(pub_id)

        return produce


def _turn(pub_id: str, connection: str = "c1", recovered: bool = False) -> Turn:
    return Turn(PUB, pub_id, 3, connection, recovered)


async def test_a_repeat_is_not_produced_again() -> None:
    kafka = _Kafka()
    ledger = PublishLedger(kafka.catch_up)
    assert await ledger.publish(_turn("a"), kafka.producer("a")) is True
    assert await ledger.publish(_turn("a"), kafka.producer("a")) is False
    kafka.gate.clear()  # both at once: the second waits for the first
    both = asyncio.gather(*(ledger.publish(_turn("b"), kafka.producer("b")) for _ in "xy"))
    await asyncio.sleep(0)
    kafka.gate.set()
    assert sorted(await both) == [False, True]
    assert kafka.produced == ["a", "b"]
    assert kafka.catch_ups == []  # a fresh session has no history elsewhere


async def test_a_failed_publish_is_looked_for_in_kafka_before_it_is_produced_again() -> None:
    kafka = _Kafka()
    ledger = PublishLedger(kafka.catch_up)
    kafka.fail = True
    with pytest.raises(PublishError):
        await ledger.publish(_turn("a"), kafka.producer("a"))
    kafka.fail = False
    ledger.first(3, 7, _headers("a"))  # it was written after all: the consumer read it
    assert await ledger.publish(_turn("a"), kafka.producer("a")) is False
    assert kafka.catch_ups == [[3]]
    kafka.fail = True
    with pytest.raises(PublishError):  # not written this time: produced again
        await ledger.publish(_turn("b"), kafka.producer("b"))
    kafka.fail = False
    assert await ledger.publish(_turn("b"), kafka.producer("b")) is True
    assert kafka.produced == ["b"]


async def test_a_recovered_connection_reads_the_topic_once_and_a_settled_one_is_closed() -> None:
    kafka = _Kafka()
    ledger = PublishLedger(kafka.catch_up)
    ledger.first(3, 1, _headers("old"))  # what the old node wrote
    assert await ledger.publish(_turn("old", "c2", recovered=True), kafka.producer("x")) is False
    assert await ledger.publish(_turn("new", "c2", recovered=True), kafka.producer("new"))
    assert kafka.catch_ups == [None]  # once for the connection
    await ledger.settle(PUB, "c2")
    with pytest.raises(PublishError, match="closed"):
        await ledger.publish(_turn("late", "c2", recovered=True), kafka.producer("late"))
    assert await ledger.publish(_turn("late", "c3", recovered=True), kafka.producer("late"))
    assert kafka.produced == ["new", "late"]


def test_the_first_record_of_a_partition_wins() -> None:
    ledger = PublishLedger(_Kafka().catch_up)
    assert ledger.first(0, 5, _headers("a")) is True
    assert ledger.first(0, 5, _headers("a")) is True  # the same record read again
    assert ledger.first(0, 9, _headers("a")) is False
    assert ledger.repeated(0, 9) is True
    assert ledger.repeated(0, 5) is False
    assert ledger.first(1, 2, _headers("a")) is True  # the same id into another room
    assert ledger.first(0, 10, _headers("a", publisher_of("other"))) is True
    plain = [("sio.v", b"1"), ("sio.cid", b"a")]  # no client-chosen id: never checked
    assert ledger.first(0, 11, plain) is True
    assert ledger.first(0, 12, plain) is True


def test_what_it_remembers_is_bounded() -> None:
    ledger = PublishLedger(_Kafka().catch_up, max_ids=100)
    for offset in range(1000):
        ledger.first(0, offset, _headers(f"id-{offset}"))
    assert ledger.remembered == 100
    assert ledger.counts["evicted"] == 900
    ledger.window_s = 1e-9  # all older than the window now
    ledger.first(0, 1000, _headers("last"))
    assert ledger.remembered == 1


def test_repeats_remembered_are_bounded_too() -> None:
    ledger = PublishLedger(_Kafka().catch_up, max_ids=100)
    for offset in range(1000):  # one publish id, written again and again
        assert ledger.first(0, offset, _headers("a")) is (offset == 0)
    assert ledger.repeated(0, 999) is True
    assert ledger.repeated(0, 1) is False  # forgotten, past the 100 newest


def test_headers_no_node_writes_are_not_remembered() -> None:
    """Another producer's ``sio.pub`` headers: a megabyte of id each was kept 135 s."""
    ledger = PublishLedger(_Kafka().catch_up)
    huge = _headers("x" * 1_000_000)
    assert ledger.first(0, 1, huge) is True
    assert ledger.first(0, 2, huge) is True  # delivered, not taken for a repeat
    assert ledger.first(0, 3, _headers("a", publisher="not-a-digest")) is True
    assert ledger.remembered == 0
    assert ledger.first(0, 4, _headers("a" * 64)) is True
    assert ledger.remembered == 1


def test_the_publish_window_setting() -> None:
    assert Settings().publish_window_s == 135.0  # the recovery window and the Kafka timeout
    assert Settings(recovery_window=60, kafka_timeout_ms=5000).publish_window_s == 65.0
    assert (
        Settings(**env_settings({"SOCKETIO_KAFKA_PUBLISH_WINDOW": "600"})).publish_window_s == 600
    )
    with pytest.raises(ValueError, match="publish_window"):
        Settings(publish_window=0)
    with pytest.raises(InvalidSettings):
        env_settings({"SOCKETIO_KAFKA_PUBLISH_WINDOW": "soon"})
