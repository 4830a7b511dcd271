"""`Turns`: records of one key reach the producer in the order their publishes began."""

from __future__ import annotations

import asyncio
import random

import pytest

from socketio_kafka.adapter.turns import Turns


async def _publish(turns: Turns, key: bytes, n: int, order: list[int], wait_s: float) -> None:
    async with turns.turn(key):
        await asyncio.sleep(wait_s)  # the producer busy: metadata, a full batch, a broker away
        order.append(n)


async def test_turns_of_one_key_follow_the_order_they_were_taken_not_the_order_of_waking() -> None:
    turns, order = Turns(), []
    rng = random.Random(7)
    tasks = [
        asyncio.create_task(_publish(turns, b"room", n, order, rng.uniform(0, 0.01)))
        for n in range(200)
    ]
    await asyncio.gather(*tasks)
    assert order == list(range(200))
    assert len(turns) == 0  # nothing kept once every turn ended


async def test_other_keys_do_not_wait() -> None:
    turns, order = Turns(), []
    slow = asyncio.create_task(_publish(turns, b"a", 1, order, 5))
    await asyncio.wait_for(_publish(turns, b"b", 2, order, 0), 1)
    assert order == [2]
    slow.cancel()
    await asyncio.gather(slow, return_exceptions=True)


async def test_a_publish_that_gives_up_waiting_lets_no_later_one_overtake_the_one_ahead() -> None:
    turns, order = Turns(), []
    release = asyncio.Event()

    async def first() -> None:
        async with turns.turn(b"room"):
            await release.wait()
            order.append(1)

    holder = asyncio.create_task(first())
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):  # the second times out while the first still holds
        async with asyncio.timeout(0.05), turns.turn(b"room"):
            order.append(2)
    third = asyncio.create_task(_publish(turns, b"room", 3, order, 0))
    await asyncio.sleep(0.05)
    assert order == []  # the third waits for the first, not for the second that left
    release.set()
    await asyncio.gather(holder, third)
    assert order == [1, 3]
    assert len(turns) == 0
