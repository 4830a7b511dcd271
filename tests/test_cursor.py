"""Shared replay cursors, with a fake consumer: one read of a partition serves every
session replaying it, each gets exactly its records in order, and the node-wide bound
holds while sessions do not take what was found for them."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError

from socketio_kafka.adapter import BrokerUnavailable, cursor, routing
from socketio_kafka.adapter.cursor import SharedReplays

from .support import fakelog
from .support.waiting import wait_until

pytestmark = pytest.mark.timeout(30)


async def test_sessions_at_once_share_one_read_and_one_decode() -> None:
    log = [*fakelog.rooms(60, "abc"), fakelog.emit(60, "a", headers=False)]
    hub, _ = fakelog.hub(log)
    a, b = await asyncio.gather(
        fakelog.offsets(fakelog.open_replay(hub, "a", 0, 61)),
        fakelog.offsets(fakelog.open_replay(hub, "b", 0, 61)),
    )
    assert a == [*range(0, 60, 3), 60]
    assert b == list(range(1, 60, 3))
    stats = hub.stats
    assert (stats.replay_passes, stats.replay_records_read) == (1, 61)
    # Room "c" passed by its headers; the record without headers decoded once for both.
    assert stats.replay_records_decoded == 41
    assert hub.held == 0


async def test_broadcasts_and_emits_to_several_rooms_reach_each_member_once() -> None:
    targets: list[str | list[str] | None] = ["a", None, ["b", "a"], ["b", "c"], "b", ["a", "a"]]
    hub, _ = fakelog.hub([fakelog.emit(n, room) for n, room in enumerate(targets)])
    a, b, c = await asyncio.gather(
        *(fakelog.offsets(fakelog.open_replay(hub, room, 0, 6)) for room in "abc")
    )
    assert (a, b, c) == ([0, 1, 2, 5], [1, 2, 3, 4], [1, 3])


async def _one_fetch_in(
    start: int,
) -> tuple[SharedReplays, asyncio.Semaphore, asyncio.Task[list[int]]]:
    """A session of room "a" replaying from ``start`` whose cursor made one fetch of 10,
    and the permits its next fetches wait for."""
    permits = asyncio.Semaphore(0)
    hub, _ = fakelog.hub(fakelog.rooms(60, "abc"), permits, batch=10)
    first = asyncio.create_task(fakelog.offsets(fakelog.open_replay(hub, "a", start, 60)))
    permits.release()
    await wait_until(lambda: hub.stats.replay_records_read == 10, 5, "the first fetch")
    return hub, permits, first


async def test_a_later_start_joins_the_pass_and_an_earlier_one_takes_the_window() -> None:
    hub, permits, first = await _one_fetch_in(0)
    joining = asyncio.create_task(
        fakelog.offsets(fakelog.open_replay(hub, "b", 30, 60))
    )  # at or after 10
    behind = asyncio.create_task(fakelog.offsets(fakelog.open_replay(hub, "c", 0, 60)))  # before 10
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
    behind = asyncio.create_task(
        fakelog.offsets(fakelog.open_replay(hub, "c", 0, 60))
    )  # before the window
    for _ in range(20):
        permits.release()
    assert await first == list(range(30, 60, 3))
    assert await behind == list(range(2, 60, 3))
    # One pass: it read back from 0, and what it had read from 30 it read again.
    assert hub.stats.replay_passes == 1
    assert 60 + 10 <= hub.stats.replay_records_read <= 60 + 20


async def test_a_session_after_the_pass_is_served_from_the_window() -> None:
    """A mass reconnect's late arrivals: the range was read for the first ones."""
    log = [*fakelog.rooms(60, "abc"), fakelog.emit(60, "a", headers=False)]
    hub, _ = fakelog.hub(log, batch=10)
    assert await fakelog.offsets(fakelog.open_replay(hub, "a", 0, 61)) == [*range(0, 60, 3), 60]
    read, decoded = hub.stats.replay_records_read, hub.stats.replay_records_decoded
    # In batches of 10 found records, each once, in order; nothing read or decoded again
    # but room "b"'s records, which nobody had wanted yet.
    assert await fakelog.offsets(fakelog.open_replay(hub, "a", 5, 61)) == [*range(6, 60, 3), 60]
    assert await fakelog.offsets(fakelog.open_replay(hub, "b", 0, 61)) == list(range(1, 60, 3))
    assert hub.stats.replay_passes == 1
    assert hub.stats.replay_records_read == read
    assert hub.stats.replay_records_decoded == decoded + 20
    # Past the window's end, the partition is read on from there.
    log.extend(fakelog.emit(n, "a") for n in range(61, 70))
    assert await fakelog.offsets(fakelog.open_replay(hub, "a", 50, 70)) == [
        51,
        54,
        57,
        60,
        *range(61, 70),
    ]
    assert hub.stats.replay_records_read == read + 9
    assert hub.held == 0


async def test_windows_stay_within_their_bound_and_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cursor, "WINDOW_BYTES", 2_000)
    monkeypatch.setattr(cursor, "WINDOW_LINGER_S", 0.5)  # outlasts a collector's pause
    hub, _ = fakelog.hub(fakelog.rooms(300, "ab"), batch=10)
    assert await fakelog.offsets(fakelog.open_replay(hub, "a", 0, 300)) == list(range(0, 300, 2))
    # Grown one fetch past the bound at most, then no more: the rest is read again. A
    # record costs its value, its entry and its decoded copy (about 1,150 B here).
    assert 2_000 <= hub.window_bytes < 2_000 + 10 * 1_300
    assert await fakelog.offsets(fakelog.open_replay(hub, "b", 0, 300)) == list(range(1, 300, 2))
    assert hub.stats.replay_records_read > 300
    await wait_until(lambda: hub.window_bytes == 0, 5, "the windows to expire")
    read = hub.stats.replay_records_read
    assert await fakelog.offsets(fakelog.open_replay(hub, "a", 0, 300)) == list(range(0, 300, 2))
    assert hub.stats.replay_records_read == read + 300


async def test_what_sessions_decode_from_a_window_stays_within_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pass's window stopped growing at the bound; the copies other rooms' sessions
    decoded from it afterwards did not (6 times the bound in a helper's run)."""
    monkeypatch.setattr(cursor, "WINDOW_BYTES", 100_000)
    hub, _ = fakelog.hub(fakelog.rooms(3000, "abcdefghij"), batch=500)
    assert await fakelog.offsets(fakelog.open_replay(hub, "a", 0, 3000)) == list(range(0, 3000, 10))
    hi = hub._windows[0].hi
    for n, room in enumerate("bcdefghij", start=1):
        served = await fakelog.offsets(fakelog.open_replay(hub, room, 0, hi))
        assert served == list(range(n, hi, 10))
        # One session's decoded copies past the bound at most: its room's 50 or so records
        # in the window, about 1,150 B each.
        assert hub.window_bytes < 100_000 + 100_000


async def test_the_node_wide_bound_holds_while_sessions_do_not_take() -> None:
    """Slow sessions leave the pass with a batch held, and join again where they stopped:
    nothing lost, nothing twice, nothing out of order."""
    hub, _ = fakelog.hub(fakelog.rooms(300, "abc"), batch=10, limit=15)
    replays = [fakelog.open_replay(hub, room, 0, 300) for room in "abc"]
    for replay in replays:
        await replay.__aenter__()
    for _ in range(100):  # the cursor runs as far as it may, nobody taking
        await asyncio.sleep(0)
        assert hub.held < 15 + 10
    assert hub.held >= 15 or all(r.held >= 10 for r in replays)
    got = await asyncio.gather(*(fakelog.offsets(r) for r in replays))
    assert got == [list(range(k, 300, 3)) for k in range(3)]
    assert hub.held == 0


async def test_the_node_wide_bound_counts_bytes_when_records_are_large() -> None:
    """10 KB records: the byte bound pauses the cursor long before the count bound would."""
    log = fakelog.rooms(300, "abc", pad=10_000)
    size = len(log[0].value or b"")
    hub, _ = fakelog.hub(log, batch=10, limit_bytes=5 * size)
    replays = [fakelog.open_replay(hub, room, 0, 300) for room in "abc"]
    for replay in replays:
        await replay.__aenter__()
    for _ in range(100):  # the cursor runs as far as it may, nobody taking
        await asyncio.sleep(0)
        assert hub.held_bytes < 5 * size + 10 * size  # the bound, and one fetch past it
    assert hub.held < 15
    got = await asyncio.gather(*(fakelog.offsets(r) for r in replays))
    assert got == [list(range(k, 300, 3)) for k in range(3)]
    assert hub.held == hub.held_bytes == 0


async def test_a_session_takes_large_records_a_few_bytes_at_a_time() -> None:
    """A session's batch ends at its bytes too: from a window of what an earlier replay
    read, and as the cursor parks a session that holds that much."""
    log = fakelog.rooms(90, "abc", pad=10_000)
    size = len(log[0].value or b"")
    hub, _ = fakelog.hub(log, batch=100, batch_bytes=3 * size)
    assert await fakelog.offsets(fakelog.open_replay(hub, "a", 0, 90)) == list(range(0, 90, 3))
    read = hub.stats.replay_records_read
    replay = fakelog.open_replay(hub, "a", 0, 90)  # served from the window the first left
    async with replay:
        batches = [[offset for _, offset, _ in found] async for found in replay]
    assert [len(batch) for batch in batches] == [3] * 10
    assert [offset for batch in batches for offset in batch] == list(range(0, 90, 3))
    assert hub.stats.replay_records_read == read
    # Read by a cursor, nobody taking: each parked once it holds that much.
    hub, _ = fakelog.hub(log, batch=10, batch_bytes=3 * size)
    replays = [fakelog.open_replay(hub, room, 0, 90) for room in "abc"]
    for replay in replays:
        await replay.__aenter__()
    for _ in range(100):
        await asyncio.sleep(0)
    assert all(3 <= replay.held < 3 + 10 for replay in replays)  # a fetch's share past it
    got = await asyncio.gather(*(fakelog.offsets(r) for r in replays))
    assert got == [list(range(k, 90, 3)) for k in range(3)]
    assert hub.held == hub.held_bytes == 0


async def test_a_session_that_leaves_frees_what_it_held_and_the_cursor_stops() -> None:
    hub, started = fakelog.hub(fakelog.rooms(90, "ab"), batch=10)
    replay = fakelog.open_replay(hub, "a", 0, 90)
    async with replay:
        first = await anext(replay)
        assert [offset for _, offset, _ in first][:1] == [0]
    assert hub.held == 0
    other = await fakelog.offsets(fakelog.open_replay(hub, "b", 0, 90))
    assert other == list(range(1, 90, 2))
    assert len(started) == 1  # the consumer went back to the pool, reused


async def test_a_failed_read_fails_every_session_it_served() -> None:
    hub, started = fakelog.hub(fakelog.rooms(40, "ab"), asyncio.Semaphore(0), batch=10)
    a, b = fakelog.open_replay(hub, "a", 0, 40), fakelog.open_replay(hub, "b", 0, 40)
    tasks = [asyncio.create_task(fakelog.offsets(r)) for r in (a, b)]
    await wait_until(lambda: bool(started), 5, "the cursor's consumer")
    started[0].failure = KafkaConnectionError()
    assert started[0].permits is not None
    started[0].permits.release()
    for task in tasks:
        with pytest.raises(KafkaConnectionError):
            await task


async def test_a_session_closed_as_the_node_stops_its_replays_is_left_holding_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stopping the cursors one after another (each stops a consumer: network I/O), the
    node once forgot them all first: a session closed meanwhile could not leave the ones
    still running, which went on filling its buffer against the node's bound for good."""
    stopping, stopped = asyncio.Event(), asyncio.Event()

    async def slow_stop(self: fakelog.FakeConsumer) -> None:
        stopping.set()
        await stopped.wait()

    monkeypatch.setattr(fakelog.FakeConsumer, "stop", slow_stop)
    hub, _ = fakelog.hub(fakelog.rooms(50_000, "ab"), batch=10, limit=1000)
    replay = hub.open((0, 0), (50_000, 50_000), routing.Audience.of("/", "sid-a", ["a"]))
    async with replay:
        assert await anext(replay)  # both partitions' cursors under way
        closing = asyncio.create_task(hub.close())
        await asyncio.wait_for(stopping.wait(), 5)
    for _ in range(20):  # the other cursor's turns, were it still running
        await asyncio.sleep(0)
    stopped.set()
    await closing
    assert (replay.held, hub.held) == (0, 0)


async def test_a_session_parked_when_the_node_stops_its_replays_fails_and_reads_no_more() -> None:
    """A slow session (parked, in no cursor) was not failed when the node stopped its
    replays: taking its batch, it joined again, started a cursor and a consumer after the
    manager had stopped, and read on; the consumer then stayed in the pool, started."""
    hub, started = fakelog.hub(fakelog.rooms(300, "ab"), batch=10, limit=15)
    async with fakelog.open_replay(hub, "a", 0, 300) as replay:
        assert await anext(replay)
        await wait_until(lambda: bool(replay._parked), 5, "the session parked")
        consumers = len(started)
        await hub.close()
        with pytest.raises(BrokerUnavailable):
            async for _ in replay:
                pass
    assert len(started) == consumers
    assert not hub._cursors
    hub.reopen()  # a manager started again replays again
    assert await fakelog.offsets(fakelog.open_replay(hub, "b", 0, 10)) == [1, 3, 5, 7, 9]
