"""Shared replay cursors, with a fake consumer: one read of a partition serves every
session replaying it, each gets exactly its records in order, and the node-wide bound
holds while sessions do not take what was found for them."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from socketio_kafka.adapter import codec, cursor, routing
from socketio_kafka.adapter.cursor import Replay, SharedReplays
from socketio_kafka.adapter.manager import ManagerStats
from socketio_kafka.adapter.replay import ConsumerPool

from .support.waiting import wait_until

pytestmark = pytest.mark.timeout(30)


class _Record(NamedTuple):
    offset: int
    headers: list[tuple[str, bytes]]
    value: bytes


def _emit(offset: int, room: str, *, headers: bool = True) -> _Record:
    message = codec.emit_message(
        "e", {"n": offset}, namespace="/", room=room, skip_sid=None, callback=None, host_id="h"
    )
    return _Record(offset, routing.headers_for(message) if headers else [], codec.encode(message))


class _Consumer:
    """The few calls a cursor makes of an aiokafka consumer, over one partition's list.
    A fetch waits for a permit when ``permits`` is given: the test moves the cursor."""

    def __init__(self, log: list[_Record], permits: asyncio.Semaphore | None) -> None:
        self.log = log
        self.permits = permits
        self.failure: Exception | None = None
        self._at = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def assign(self, tps: list[TopicPartition]) -> None:
        self._tps = tps

    def assignment(self) -> list[TopicPartition]:
        return self._tps

    def pause(self, *tps: TopicPartition) -> None:
        pass

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._at = offset

    async def position(self, tp: TopicPartition) -> int:
        return self._at

    async def getmany(self, tp: TopicPartition, timeout_ms: int, max_records: int) -> Any:
        if self.permits is not None:
            await self.permits.acquire()
        await asyncio.sleep(0)
        if self.failure is not None:
            raise self.failure
        records = [r for r in self.log if r.offset >= self._at][:max_records]
        if records:
            self._at = records[-1].offset + 1
        return {tp: records}


def _hub(
    log: list[_Record], permits: asyncio.Semaphore | None = None, **kwargs: Any
) -> tuple[SharedReplays, list[_Consumer]]:
    started: list[_Consumer] = []

    def new() -> Any:
        started.append(_Consumer(log, permits))
        return started[-1]

    return SharedReplays(ConsumerPool(new), "t.events", ManagerStats(), **kwargs), started


def _open(hub: SharedReplays, room: str, start: int, stop: int) -> Replay:
    return hub.open((start,), (stop,), routing.Audience.of("/", f"sid-{room}", [room]))


async def _offsets(replay: Replay) -> list[int]:
    async with replay:
        return [offset async for found in replay for _, offset, _ in found]


def _rooms(count: int, rooms: str) -> list[_Record]:
    return [_emit(n, rooms[n % len(rooms)]) for n in range(count)]


async def test_sessions_at_once_share_one_read_and_one_decode() -> None:
    log = [*_rooms(60, "abc"), _emit(60, "a", headers=False)]
    hub, _ = _hub(log)
    a, b = await asyncio.gather(_offsets(_open(hub, "a", 0, 61)), _offsets(_open(hub, "b", 0, 61)))
    assert a == [*range(0, 60, 3), 60]
    assert b == list(range(1, 60, 3))
    stats = hub.stats
    assert (stats.replay_passes, stats.replay_records_read) == (1, 61)
    # Room "c" passed by its headers; the record without headers decoded once for both.
    assert stats.replay_records_decoded == 41
    assert hub.held == 0


async def _one_fetch_in(
    start: int,
) -> tuple[SharedReplays, asyncio.Semaphore, asyncio.Task[list[int]]]:
    """A session of room "a" replaying from ``start`` whose cursor made one fetch of 10,
    and the permits its next fetches wait for."""
    permits = asyncio.Semaphore(0)
    hub, _ = _hub(_rooms(60, "abc"), permits, batch=10)
    first = asyncio.create_task(_offsets(_open(hub, "a", start, 60)))
    permits.release()
    await wait_until(lambda: hub.stats.replay_records_read == 10, 5, "the first fetch")
    return hub, permits, first


async def test_a_later_start_joins_the_pass_and_an_earlier_one_takes_the_window() -> None:
    hub, permits, first = await _one_fetch_in(0)
    joining = asyncio.create_task(_offsets(_open(hub, "b", 30, 60)))  # at or after 10
    behind = asyncio.create_task(_offsets(_open(hub, "c", 0, 60)))  # before 10
    for _ in range(20):
        permits.release()
    # Each gets its records once, in order.
    assert await first == list(range(0, 60, 3))
    assert await joining == list(range(31, 60, 3))
    assert await behind == list(range(2, 60, 3))
    # One pass, the partition read once: the one behind took what had been read from the
    # pass's window, and joined the pass where it was.
    assert (hub.stats.replay_passes, hub.stats.replay_records_read) == (1, 60)
    assert hub.stats.replay_records_reused > 0


async def test_a_start_before_the_window_has_the_pass_read_back() -> None:
    hub, permits, first = await _one_fetch_in(30)
    behind = asyncio.create_task(_offsets(_open(hub, "c", 0, 60)))  # before the window
    for _ in range(20):
        permits.release()
    assert await first == list(range(30, 60, 3))
    assert await behind == list(range(2, 60, 3))
    # One pass: it read back from 0, and what it had read from 30 it read again.
    assert hub.stats.replay_passes == 1
    assert 60 + 10 <= hub.stats.replay_records_read <= 60 + 20


async def test_a_session_after_the_pass_is_served_from_the_window() -> None:
    """A mass reconnect's late arrivals: the range was read for the first ones."""
    log = [*_rooms(60, "abc"), _emit(60, "a", headers=False)]
    hub, _ = _hub(log, batch=10)
    assert await _offsets(_open(hub, "a", 0, 61)) == [*range(0, 60, 3), 60]
    read, decoded = hub.stats.replay_records_read, hub.stats.replay_records_decoded
    # In batches of 10 found records, each once, in order; nothing read or decoded again
    # but room "b"'s records, which nobody had wanted yet.
    assert await _offsets(_open(hub, "a", 5, 61)) == [*range(6, 60, 3), 60]
    assert await _offsets(_open(hub, "b", 0, 61)) == list(range(1, 60, 3))
    assert hub.stats.replay_passes == 1
    assert hub.stats.replay_records_read == read
    assert hub.stats.replay_records_decoded == decoded + 20
    # Past the window's end, the partition is read on from there.
    log.extend(_emit(n, "a") for n in range(61, 70))
    assert await _offsets(_open(hub, "a", 50, 70)) == [51, 54, 57, 60, *range(61, 70)]
    assert hub.stats.replay_records_read == read + 9
    assert hub.held == 0


async def test_windows_stay_within_their_bound_and_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cursor, "WINDOW_BYTES", 2_000)
    monkeypatch.setattr(cursor, "WINDOW_LINGER_S", 0.05)
    hub, _ = _hub(_rooms(300, "ab"), batch=10)
    assert await _offsets(_open(hub, "a", 0, 300)) == list(range(0, 300, 2))
    # Grown one fetch past the bound at most, then no more: the rest is read again.
    assert 2_000 <= hub.window_bytes < 2_000 + 10 * 300
    assert await _offsets(_open(hub, "b", 0, 300)) == list(range(1, 300, 2))
    assert hub.stats.replay_records_read > 300
    await wait_until(lambda: hub.window_bytes == 0, 5, "the windows to expire")
    read = hub.stats.replay_records_read
    assert await _offsets(_open(hub, "a", 0, 300)) == list(range(0, 300, 2))
    assert hub.stats.replay_records_read == read + 300


async def test_the_node_wide_bound_holds_while_sessions_do_not_take() -> None:
    """Slow sessions leave the pass with a batch held, and join again where they stopped:
    nothing lost, nothing twice, nothing out of order."""
    hub, _ = _hub(_rooms(300, "abc"), batch=10, limit=15)
    replays = [_open(hub, room, 0, 300) for room in "abc"]
    for replay in replays:
        await replay.__aenter__()
    for _ in range(100):  # the cursor runs as far as it may, nobody taking
        await asyncio.sleep(0)
        assert hub.held < 15 + 10
    assert hub.held >= 15 or all(r.held >= 10 for r in replays)
    got = await asyncio.gather(*(_offsets(r) for r in replays))
    assert got == [list(range(k, 300, 3)) for k in range(3)]
    assert hub.held == 0


async def test_a_session_that_leaves_frees_what_it_held_and_the_cursor_stops() -> None:
    hub, started = _hub(_rooms(90, "ab"), batch=10)
    replay = _open(hub, "a", 0, 90)
    async with replay:
        first = await anext(replay)
        assert [offset for _, offset, _ in first][:1] == [0]
    assert hub.held == 0
    other = await _offsets(_open(hub, "b", 0, 90))
    assert other == list(range(1, 90, 2))
    assert len(started) == 1  # the consumer went back to the pool, reused


async def test_a_failed_read_fails_every_session_it_served() -> None:
    hub, started = _hub(_rooms(40, "ab"), asyncio.Semaphore(0), batch=10)
    a, b = _open(hub, "a", 0, 40), _open(hub, "b", 0, 40)
    tasks = [asyncio.create_task(_offsets(r)) for r in (a, b)]
    await wait_until(lambda: bool(started), 5, "the cursor's consumer")
    started[0].failure = KafkaConnectionError()
    assert started[0].permits is not None
    started[0].permits.release()
    for task in tasks:
        with pytest.raises(KafkaConnectionError):
            await task
