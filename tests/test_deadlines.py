"""Publishes bounded on one shared timer (`adapter/deadlines.py`) keep asyncio.timeout's
contract: a block that outlives its bound raises TimeoutError, one that ends in time is
never cancelled later, any other cancellation passes through, and nothing is kept for a
bound once it is left."""

from __future__ import annotations

import asyncio

import pytest

from socketio_kafka.adapter.deadlines import TICK_S, Deadlines

from .support.waiting import wait_until

pytestmark = [pytest.mark.timeout(30)]


async def test_a_block_that_outlives_its_bound_raises_timeout_error_about_then() -> None:
    deadlines = Deadlines(0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with deadlines.bound():
            await asyncio.sleep(10)
    took = loop.time() - started
    assert 0.2 <= took < 0.2 + TICK_S + 0.2, took
    assert len(deadlines) == 0


async def test_a_block_that_ends_in_time_is_not_cancelled_after_it() -> None:
    deadlines = Deadlines(0.1)
    async with deadlines.bound():
        await asyncio.sleep(0.01)
    assert len(deadlines) == 0
    await asyncio.sleep(0.1 + 2 * TICK_S)  # past its deadline: not interrupted
    assert not deadlines.armed  # nothing left to expire: the timer is not re-armed


async def test_another_cancellation_passes_through_as_cancelled_error() -> None:
    deadlines = Deadlines(5)
    entered = asyncio.Event()

    async def bounded() -> None:
        async with deadlines.bound():
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(bounded())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(deadlines) == 0


async def test_a_timeout_inside_an_outer_cancellation_scope_is_still_a_timeout() -> None:
    """The bound's own cancel, not an earlier one the task already absorbed, is what it
    turns into TimeoutError (as asyncio.timeout does, from the task's cancelling count)."""
    deadlines = Deadlines(0.1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(5), deadlines.bound():
            await asyncio.sleep(10)


async def test_many_bounds_share_one_timer_and_only_the_late_ones_fire() -> None:
    deadlines = Deadlines(2.0)  # far past the short ones' 10 ms, on a loaded host too
    outcomes: dict[int, str] = {}

    async def publish(n: int) -> None:
        try:
            async with deadlines.bound():
                await asyncio.sleep(0.01 if n % 2 else 10)
            outcomes[n] = "done"
        except TimeoutError:
            outcomes[n] = "timed out"

    tasks = [asyncio.create_task(publish(n)) for n in range(200)]
    # Not a fixed sleep: CI once found 85 of the short ones not done after 0.1 s.
    await wait_until(lambda: len(outcomes) == 100, 1.5, "the short bounds to be left")
    assert len(deadlines) == 100  # only the bounds not yet left are kept
    assert deadlines.armed
    await asyncio.gather(*tasks)
    assert {n for n, o in outcomes.items() if o == "timed out"} == set(range(0, 200, 2))
    assert {n for n, o in outcomes.items() if o == "done"} == set(range(1, 200, 2))
    assert len(deadlines) == 0


async def test_bounds_entered_later_fire_later() -> None:
    deadlines = Deadlines(0.2)
    loop = asyncio.get_running_loop()
    fired: list[tuple[int, float]] = []

    async def bounded(n: int) -> None:
        started = loop.time()
        try:
            async with deadlines.bound():
                await asyncio.sleep(10)
        except TimeoutError:
            fired.append((n, loop.time() - started))

    first = asyncio.create_task(bounded(0))
    await asyncio.sleep(0.15)
    second = asyncio.create_task(bounded(1))
    await asyncio.gather(first, second)
    assert [n for n, _ in fired] == [0, 1]
    assert all(0.2 <= took < 0.2 + TICK_S + 0.2 for _, took in fired), fired


def test_bounds_still_fire_on_the_next_event_loop() -> None:
    """One left armed on a loop that closed would never fire: a manager built once and
    run on two loops (a test's next one) would bound nothing on the second."""
    deadlines = Deadlines(0.1)

    async def outlive() -> None:
        async with deadlines.bound():
            await asyncio.sleep(10)

    async def leave_armed() -> None:
        async with deadlines.bound():
            pass
        assert deadlines.armed

    asyncio.run(leave_armed())
    with pytest.raises(TimeoutError):
        asyncio.run(outlive())


def test_a_bound_is_a_positive_time() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        Deadlines(0)
