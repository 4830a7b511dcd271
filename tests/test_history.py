"""The live history: what the live consumer read lately answers replays from memory, whole
from where it was positioned, within its byte budget; replays starting before it read
Kafka for the rest, each record still exactly once and in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from socketio_kafka.adapter import history, routing
from socketio_kafka.adapter.history import LiveHistory

from .support import fakelog

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "SEGMENT_BYTES", 4_000)


def _fed(
    log: list[fakelog.Record], budget: int = 1 << 30, start: int = 0
) -> tuple[LiveHistory, list[int]]:
    """A history fed ``log`` as a live consumer positioned at ``start`` would."""
    positions = [start]
    kept = LiveHistory(budget)
    kept.reset(positions)
    for record in log:
        if record.offset < start:
            continue
        positions[0] = record.offset + 1
        kept.note(0, record, routing.read_route(record.headers))
    return kept, positions


def _ack(offset: int) -> fakelog.Record:
    """A record no replay delivers: an emit that waits for an ack."""
    record = fakelog.emit(offset, "a")
    headers = [(k, v) for k, v in record.headers if k != "sio.ack"] + [("sio.ack", b"1")]
    return fakelog.Record(offset, headers, record.value)


async def test_a_replay_it_holds_reads_nothing_and_decodes_only_its_own() -> None:
    log = fakelog.rooms(90, "abc")
    hub, consumers = fakelog.hub(log)
    hub.history, _ = _fed(log)
    assert await fakelog.offsets(fakelog.open_replay(hub, "b", 10, 90)) == list(range(10, 90, 3))
    assert consumers == []  # no Kafka consumer was ever asked for
    assert hub.stats.replay_records_read == 0
    assert hub.stats.replay_records_decoded == hub.stats.replay_records_reused == 27


async def test_a_replay_larger_than_a_batch_is_served_in_batches_in_order() -> None:
    log = fakelog.rooms(3000, "ab")
    hub, consumers = fakelog.hub(log, batch=100)
    hub.history, _ = _fed(log)
    assert await fakelog.offsets(fakelog.open_replay(hub, "a", 0, 3000)) == list(range(0, 3000, 2))
    assert consumers == []


@pytest.mark.usefixtures("small_segments")
async def test_a_replay_takes_a_batch_at_a_time_across_its_segments() -> None:
    """Each segment was offered a batch of its own: a session took its whole share of the
    history (64,000 records at the defaults) in one step of the event loop."""
    log = fakelog.rooms(3000, "ab")
    hub, _ = fakelog.hub(log, batch=100)
    hub.history, _ = _fed(log)
    async with fakelog.open_replay(hub, "a", 0, 3000) as replay:
        batches = [[offset for _, offset, _ in found] async for found in replay]
    assert [offset for batch in batches for offset in batch] == list(range(0, 3000, 2))
    assert max(map(len, batches)) == 100


async def test_a_replay_from_before_it_reads_kafka_then_only_what_precedes_it() -> None:
    """Positioned at 40 (a node started then): 0-39 come from Kafka, the rest from memory."""
    log = fakelog.rooms(100, "ab")
    hub, consumers = fakelog.hub(log, batch=10)  # 10 records a fetch
    hub.history, _ = _fed(log, start=40)
    assert await fakelog.offsets(fakelog.open_replay(hub, "a", 0, 100)) == list(range(0, 100, 2))
    assert len(consumers) == 1
    assert hub.stats.replay_records_read == 40  # Kafka up to where memory begins


async def test_a_later_replay_from_before_it_takes_the_window_then_memory() -> None:
    """The first replay's pass read 0-44 (its last fetch past where memory begins, 40); a
    replay of the same range after it takes 0-44 from the pass's window and the rest from
    memory: Kafka is not read again (a mass reconnect's late arrivals, each of which made
    a pass of its own at the window's end)."""
    log = fakelog.rooms(100, "ab")
    hub, _ = fakelog.hub(log, batch=15)
    hub.history, _ = _fed(log, start=40)
    expected = list(range(0, 100, 2))
    assert await fakelog.offsets(fakelog.open_replay(hub, "a", 0, 100)) == expected
    read, passes = hub.stats.replay_records_read, hub.stats.replay_passes
    assert (read, passes) == (45, 1)
    assert await fakelog.offsets(fakelog.open_replay(hub, "a", 0, 100)) == expected
    assert (hub.stats.replay_records_read, hub.stats.replay_passes) == (read, passes)


@pytest.mark.usefixtures("small_segments")
async def test_the_budget_drops_the_oldest_segments_and_bounds_its_size() -> None:
    log = fakelog.rooms(2_000, "abcd")
    kept, _ = _fed(log, budget=20_000)
    assert kept.size <= 20_000 + 4_000 + 1_000  # closed ones, and the open one
    assert kept.since(0, 0) is None  # the oldest are gone
    held = kept.since(0, 1_990)
    assert held is not None
    assert held[-1].hi == 2_000
    # What it still holds is whole: every record from where it starts.
    first = kept.held_from(0)
    assert first is not None
    assert 0 < first < 2_000
    windows = kept.since(0, first)
    assert windows is not None
    offsets = [o for window in windows for o in window.offsets]
    assert offsets == list(range(first, 2_000))
    # A replay from there still gets its records in order: from memory, then Kafka before.
    hub, consumers = fakelog.hub(log, batch=10)
    hub.history = kept
    assert await fakelog.offsets(fakelog.open_replay(hub, "c", 0, 2_000)) == list(
        range(2, 2_000, 4)
    )
    assert len(consumers) == 1
    assert first <= hub.stats.replay_records_read < first + 10  # stopped where memory begins


@pytest.mark.usefixtures("small_segments")
async def test_what_replays_decode_counts_against_the_budget_and_goes_first() -> None:
    log = fakelog.rooms(200, "a")
    kept, _ = _fed(log, budget=60_000)
    assert kept.held_from(0) == 0  # all of it, values and offsets
    hub, consumers = fakelog.hub(log)
    hub.history = kept
    for replays in (1, 2):
        assert await fakelog.offsets(fakelog.open_replay(hub, "a", 0, 200)) == list(range(200))
        # Their decoded copies, several times the values' bytes, would not fit: they were
        # dropped, oldest first, and the records kept (Kafka is never read); a replay
        # decodes again what it takes.
        open_segment = kept.since(0, 199)
        assert open_segment is not None
        assert kept.size <= 60_000 + open_segment[-1].size
        assert kept.held_from(0) == 0
        assert consumers == []
        assert 200 * replays - 200 < hub.stats.replay_records_decoded <= 200 * replays


async def test_records_no_replay_delivers_are_not_kept() -> None:
    tombstone = fakelog.emit(3, "a")._replace(value=None)  # routed, but nothing to deliver
    log = [fakelog.emit(0, "a"), _ack(1), fakelog.emit(2, "a"), tombstone]
    kept, _ = _fed(log)
    windows = kept.since(0, 0)
    assert windows is not None
    assert [o for window in windows for o in window.offsets] == [0, 2]


async def test_it_reaches_to_the_live_position_and_starts_afresh_on_reset() -> None:
    log = fakelog.rooms(10, "a")
    kept, positions = _fed(log)
    positions[0] = 15  # records past 9 that no replay delivers (acks, control records)
    windows = kept.since(0, 5)
    assert windows is not None
    assert windows[-1].hi == 15
    fresh = [20]
    kept.reset(fresh)
    assert kept.since(0, 10) is None  # not read since the reset: Kafka's
    assert kept.since(0, 20) == []  # held from there on, nothing yet


async def test_sessions_recovering_at_once_share_its_decodes() -> None:
    log = [fakelog.emit(n, "all") for n in range(50)]
    hub, _ = fakelog.hub(log)
    hub.history, _ = _fed(log)
    replays = [fakelog.open_replay(hub, "all", 0, 50) for _ in range(10)]
    results: list[Any] = await asyncio.gather(*(fakelog.offsets(r) for r in replays))
    assert results == [list(range(50))] * 10
    assert hub.stats.replay_records_decoded == 50


def test_it_covers_a_start_it_holds_up_to_the_live_position() -> None:
    kept, positions = _fed(fakelog.rooms(50, "a"), start=10)
    assert kept.covers([10])
    assert kept.covers([50])  # nothing missed yet
    assert not kept.covers([9])  # before it: Kafka's bounds decide
    assert not kept.covers([51])  # past what it read: Kafka's end decides
    assert not kept.covers([10, 10])  # another partition count
    positions[0] = 60
    assert kept.covers([55])
