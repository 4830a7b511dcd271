"""A busy node waits longer to batch its Kafka requests; an idle one waits as configured."""

from __future__ import annotations

import asyncio
import time

import pytest

from socketio_kafka.adapter import AsyncKafkaManager, KafkaOptions
from socketio_kafka.adapter.pacing import Pacing

from .support.waiting import wait_until


def _pacing(lingers: list[float]) -> Pacing:
    return Pacing(5, 20, 2, 8, lingers.append, busy_lag_ms=3.0)


def _observe(pacing: Pacing, late_ms: float, per_second: float = 5_000) -> None:
    """One 20 ms sample, with the records read and published in it."""
    pacing.read = pacing.sent = round(per_second * 0.02)
    pacing.observe(late_ms, 0.02)


def test_an_idle_node_waits_as_configured_and_a_busy_one_up_to_the_maxima() -> None:
    lingers: list[float] = []
    pacing = _pacing(lingers)
    for _ in range(50):
        _observe(pacing, 0.9)  # a loop that runs its timers on time (to the millisecond)
    assert (pacing.fetch_interval_s, pacing.linger_ms) == (0.005, 2)
    assert lingers == []  # nothing changed: the producer is not touched
    for _ in range(50):
        _observe(pacing, 30.0)  # timers 30 ms late: a loop with a backlog
    assert pacing.load == 1.0
    assert (pacing.fetch_interval_s, pacing.linger_ms) == (0.02, 8)
    assert lingers[-1] == 8
    for _ in range(100):
        _observe(pacing, 0.0)
    assert (pacing.fetch_interval_s, pacing.linger_ms) == (0.005, 2)
    assert lingers[-1] == 2


def test_a_half_busy_node_waits_a_quarter_of_the_way_and_tells_the_producer_changes() -> None:
    """Long waits pay only on a saturated node: they widen with the square of the load."""
    lingers: list[float] = []
    pacing = _pacing(lingers)
    for _ in range(100):
        _observe(pacing, 2.0)  # halfway from on time to busy
    assert pacing.load == pytest.approx(0.5, rel=0.01)
    assert pacing.fetch_interval_s == pytest.approx(0.00875, rel=0.02)
    assert pacing.linger_ms == pytest.approx(3.5, rel=0.05)
    # Changes under a quarter of a millisecond are not passed on.
    assert len(lingers) < 15
    assert all(b - a >= 0.25 for a, b in zip([2.0, *lingers], lingers, strict=False))


def test_a_busy_node_with_sparse_events_keeps_its_waits() -> None:
    """A flood of connections makes the loop late; a longer wait would only delay the few
    events there are, not gather them."""
    lingers: list[float] = []
    pacing = _pacing(lingers)
    for _ in range(50):
        _observe(pacing, 30.0, per_second=50)  # one record in 20 ms: sparse
    assert pacing.load == 1.0
    assert (pacing.fetch_interval_s, pacing.linger_ms, lingers) == (0.005, 2, [])
    for _ in range(50):
        _observe(pacing, 30.0, per_second=250)  # 5 in the longest fetch wait, 2 in the linger
    assert 0.005 < pacing.fetch_interval_s < 0.02
    assert pacing.linger_ms == 2


def test_a_lightly_busy_node_does_not_wait_less_than_the_gap_between_two_records() -> None:
    """At 1,000 records a second a wait under 1 ms gathers nothing: it only delays each
    record it holds (the benchmark's publishing node, a fifth busy, lingered 0.5 ms)."""
    lingers: list[float] = []
    pacing = _pacing(lingers)
    for _ in range(100):
        _observe(pacing, 1.4, per_second=1_000)  # a fifth of the way to busy
    assert pacing.load == pytest.approx(0.2, rel=0.02)
    assert (pacing.fetch_interval_s, pacing.linger_ms, lingers) == (0.005, 2, [])
    for _ in range(100):
        _observe(pacing, 2.0, per_second=1_000)  # half: 1.5 ms more linger, 3.75 ms more fetch
    assert pacing.linger_ms == pytest.approx(3.5, rel=0.05)
    assert pacing.fetch_interval_s == pytest.approx(0.00875, rel=0.02)


def test_a_node_using_most_of_its_core_waits_longer_though_its_timers_run_on_time() -> None:
    """A node taking thousands of publishes a second runs many short callbacks: its timers
    stay on time while it uses most of the one core a Python process can."""
    lingers: list[float] = []
    pacing = _pacing(lingers)
    for _ in range(50):
        pacing.read = pacing.sent = 100
        pacing.observe(0.2, 0.02, cpu=0.3)  # a third of a core: idle by either signal
    assert (pacing.load, pacing.fetch_interval_s, pacing.linger_ms) == (0.0, 0.005, 2)
    for _ in range(50):
        pacing.read = pacing.sent = 100
        pacing.observe(0.2, 0.02, cpu=0.95)
    assert pacing.load == 1.0
    assert (pacing.fetch_interval_s, pacing.linger_ms) == (0.02, 8)
    for _ in range(100):
        pacing.read = pacing.sent = 100
        pacing.observe(0.2, 0.02, cpu=0.1)
    assert (pacing.load, pacing.fetch_interval_s, pacing.linger_ms) == (0.0, 0.005, 2)


def test_fixed_waits_need_no_sampling() -> None:
    assert not Pacing(5, 5, 2, 2, print).adaptive
    assert Pacing(5, 5, 2, 3, print).adaptive


async def test_a_loop_kept_busy_widens_the_waits_and_they_narrow_once_it_is_idle() -> None:
    """On a real event loop: callbacks that hold it 10 ms each make its timers late."""
    lingers: list[float] = []
    pacing = _pacing(lingers)
    sampling = asyncio.create_task(pacing.run())
    busy = True

    async def hog() -> None:
        while busy:
            pacing.read += 50  # and about 5,000 records a second to read and publish
            pacing.sent += 50
            time.sleep(0.01)  # noqa: ASYNC251 (the point: a handler that holds the loop)
            await asyncio.sleep(0)

    hogs = [asyncio.create_task(hog()) for _ in range(3)]
    try:
        await wait_until(
            lambda: pacing.fetch_interval_s == 0.02 and lingers[-1:] == [8],
            10,
            "a busy loop with records to gather to wait the longest",
        )
        assert pacing.load == 1.0
        busy = False
        await asyncio.gather(*hogs)
        await wait_until(lambda: pacing.fetch_interval_s < 0.006, 10, "the waits to narrow")
        await wait_until(lambda: pacing.linger_ms < 2.5, 10, "the linger to narrow")
    finally:
        busy = False
        sampling.cancel()
        await asyncio.gather(sampling, *hogs, return_exceptions=True)


async def test_a_loop_of_short_busy_callbacks_widens_the_waits() -> None:
    """On a real event loop: callbacks that each compute for half a millisecond keep the
    process near its core's limit while its timers run nearly on time; the CPU says it is
    busy. (Lateness would count only from 1 s here: on a loaded machine it rises too.)"""
    lingers: list[float] = []
    pacing = Pacing(5, 20, 2, 8, lingers.append, busy_lag_ms=1000.0)
    sampling = asyncio.create_task(pacing.run())
    busy = True

    async def spin() -> None:
        while busy:
            pacing.read += 3
            pacing.sent += 3
            until = time.process_time() + 0.0005
            while time.process_time() < until:
                pass
            await asyncio.sleep(0)

    spinning = asyncio.create_task(spin())
    try:
        await wait_until(
            lambda: pacing.fetch_interval_s >= 0.0125 and bool(lingers) and lingers[-1] >= 5,
            30,  # its smoothed CPU share climbs slower when another process wants the core
            "a node near its core's limit, with records to gather, to wait longer",
        )
        assert pacing.cpu > 0.6
        busy = False
        await spinning
        await wait_until(lambda: pacing.load == 0.0, 10, "the load to fall once idle")
    finally:
        busy = False
        sampling.cancel()
        await asyncio.gather(sampling, spinning, return_exceptions=True)


@pytest.mark.kafka
@pytest.mark.timeout(60)
async def test_the_producer_lingers_as_long_as_the_pacing_says(
    kafka_url: str, channel: str
) -> None:
    """aiokafka has no public setter for its linger: the one we use must take effect."""
    manager = AsyncKafkaManager(
        kafka_url, channel=channel, options=KafkaOptions(linger_ms=0, linger_max_ms=1000)
    )
    async with manager:
        assert manager._publisher is not None
        await manager.emit("warm", 0, room="r")

        async def publish_time() -> float:
            began = time.monotonic()
            await manager.emit("e", 1, room="r")
            return time.monotonic() - began

        manager._publisher.set_linger(1000)
        assert await publish_time() >= 0.9
        manager._publisher.set_linger(0)
        assert await publish_time() < 0.9


@pytest.mark.kafka
@pytest.mark.timeout(60)
async def test_the_session_records_a_node_writes_count_towards_its_linger(
    kafka_url: str, channel: str
) -> None:
    """A mass reconnect's claims and session records gather in a busy node's linger as its
    events do (session 27: a survivor's produce requests for 1,000 recovering clients fell
    from about 1,150 to about 250, and the broker's CPU by half)."""
    fixed = KafkaOptions(linger_ms=0, linger_max_ms=0, fetch_interval_max_ms=5.0)
    manager = AsyncKafkaManager(kafka_url, channel=channel, options=fixed)
    async with manager:
        assert not manager.pacing.adaptive  # nothing samples the counts away
        before = manager.pacing.sent
        await manager.emit("e", 1, room="r")
        await manager.store.write({f"pid-{n}": None for n in range(5)})
        # Heartbeats count too: one a second.
        assert manager.pacing.sent - before in (6, 7)


def test_only_what_the_load_adds_to_the_linger_counts_as_widened() -> None:
    """Offset requests wait that much: an idle node with a configured linger asks at once."""
    pacing = _pacing([])
    assert pacing.linger_ms == 2
    assert pacing.widened_s == 0
    for _ in range(50):
        _observe(pacing, 30.0)
    assert pacing.widened_s == pytest.approx(0.006)
