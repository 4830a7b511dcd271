"""What a node keeps for all its sockets is counted once per packet and bounded: past the
budget the largest holds are outrun, then the sockets with the most queued are cut (no
broker; against a real Kafka and real clients: `tests/test_slow_consumer.py`)."""

from __future__ import annotations

import asyncio
import gc
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from engineio import packet as eio_packet

from socketio_kafka.adapter import AsyncKafkaManager, OutboxLimits
from socketio_kafka.adapter.budget import HELD_RECORD, SLOT, MemoryBudget
from socketio_kafka.adapter.fanout import HoldBuffer
from socketio_kafka.adapter.outbox import SLOW_CONSUMER, Outbox

#: A packet of 1,000 characters, and what one object of it costs the budget.
TEXT = "x" * 999
OBJECT = 1 + len(TEXT) + 200  # its type and text, and the object itself


def _packet() -> eio_packet.Packet:
    return eio_packet.Packet(eio_packet.MESSAGE, TEXT)


def test_a_packet_in_many_queues_counts_once_and_a_slot_in_each() -> None:
    budget = MemoryBudget(10**9)
    queues = [Outbox(OutboxLimits(), budget) for _ in range(3)]
    pkt = _packet()
    for queue in queues:
        queue.put_nowait(pkt)
    assert budget.packets == 1
    assert budget.bytes == OBJECT + 3 * SLOT
    queues[0].get_nowait()
    queues[1].get_nowait()
    assert budget.bytes == OBJECT + SLOT
    queues[2].get_nowait()
    assert (budget.bytes, budget.packets) == (0, 0)


def test_a_queue_freed_with_packets_in_it_gives_them_back() -> None:
    budget = MemoryBudget(10**9)
    queue = Outbox(OutboxLimits(), budget)
    for _ in range(3):
        queue.put_nowait(_packet())
    assert budget.bytes == 3 * (OBJECT + SLOT)
    del queue
    gc.collect()
    assert (budget.bytes, budget.packets) == (0, 0)


async def test_over_its_limit_the_budget_asks_once_on_the_next_turn() -> None:
    budget = MemoryBudget(3 * (OBJECT + SLOT))
    asked: list[int] = []
    budget.on_over = lambda: asked.append(budget.bytes)
    queue = Outbox(OutboxLimits(), budget)
    for _ in range(5):
        queue.put_nowait(_packet())
    assert asked == []  # not while the batch is being queued
    await asyncio.sleep(0)
    assert asked == [5 * (OBJECT + SLOT)]
    # Over, then under again before the next turn: nothing to do.
    while queue.qsize() > 3:
        queue.get_nowait()
    queue.put_nowait(_packet())
    queue.get_nowait()
    await asyncio.sleep(0)
    assert len(asked) == 1


def test_holds_count_in_the_budget_until_released_dropped_or_outrun() -> None:
    budget = MemoryBudget(10**9)
    holds = HoldBuffer(OutboxLimits(), budget)
    shared = _packet()
    s1, s2, s3 = (("s1", "/"), ("s2", "/"), ("s3", "/"))
    for socket, eio_sid in ((s1, "e1"), (s2, "e2"), (s3, "e3")):
        holds.hold(socket, eio_sid)
        assert holds.add(socket, 0, 1, [shared])
    holds.add(s2, 0, 2, [_packet()])
    assert budget.bytes == 2 * OBJECT + 4 * HELD_RECORD
    assert holds.largest() == [s2, s3, s1]  # the most bytes first (then by sid)
    sent: list[Any] = []
    assert holds.release(s1, (0,), lambda eio_sid, packets: sent.extend(packets)) is None
    assert sent == [shared]
    holds.drop(s3)
    holds.outrun(s2)
    assert holds.largest() == []
    assert (budget.bytes, budget.packets, holds.bytes) == (0, 0, 0)
    outrun = holds.release(s2, (0,), lambda eio_sid, packets: None)
    assert outrun is not None  # outrun: its replay reads on


class _Socket:
    """An Engine.IO socket as the manager's cut sees it."""

    def __init__(self, queue: Outbox) -> None:
        self.queue = queue
        self.closed_for: str | None = None

    async def close(self, wait: bool, abort: bool, reason: str) -> None:
        self.closed_for = reason


async def test_over_the_node_budget_holds_are_outrun_then_the_largest_queues_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limit = 5 * (OBJECT + SLOT)
    manager = AsyncKafkaManager(
        "127.0.0.1:9", channel="unit", limits=OutboxLimits(node_max_bytes=limit)
    )
    sockets = {sid: _Socket(manager.outboxes.create_queue()) for sid in ("small", "big", "idle")}
    manager.server = SimpleNamespace(
        eio=SimpleNamespace(sockets=sockets), environ={}, logger=logging.getLogger("test")
    )
    manager.holds.hold(("held", "/"), "held")
    manager.holds.add(("held", "/"), 0, 0, [_packet()])
    for _ in range(2):
        sockets["small"].queue.put_nowait(_packet())
    for _ in range(3):
        sockets["big"].queue.put_nowait(_packet())
    # 6 packets of 5 allowed: the hold goes first, and that is enough.
    await asyncio.sleep(0)
    assert manager.holds.largest() == []
    assert manager.budget.bytes == 5 * (OBJECT + SLOT)
    assert manager.stats.over_node_budget == 1
    assert "1 replays' holds outrun" in caplog.text
    assert all(s.closed_for is None for s in sockets.values())
    # 2 more on the small one (4 there, 3 on the big one): the one with the most is cut.
    for _ in range(2):
        sockets["small"].queue.put_nowait(_packet())
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the close, a task of its own
    assert sockets["small"].closed_for == SLOW_CONSUMER
    assert sockets["big"].closed_for is None
    assert sockets["small"].queue.shed
    # The big one's 3, and the None that ends the cut one's writer.
    assert manager.budget.bytes == 3 * (OBJECT + SLOT) + (1 + 200 + SLOT)
    assert (manager.stats.over_node_budget, manager.stats.slow_consumers_cut) == (2, 1)
    assert "socket small cut: its client is not reading (over the node's budget" in caplog.text
