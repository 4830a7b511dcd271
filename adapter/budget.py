"""What a node keeps for all its sockets together: bounded, so that no number of slow
readers can bloat it.

Each socket's outgoing queue, and its hold of live events while its replay runs, is
bounded (`OutboxLimits`: 50,000 packets or 16 MiB), but a node's sockets together were
not: 1,000 clients behind a stalled network, each a bound's worth behind, would be 16 GB.
A `MemoryBudget` counts what every queue and hold keeps, as memory: each packet object
once, at its encoded size and the object's own (a room's event is one object in every
recipient's queue), and each reference to it (a slot in a queue, a record in a hold).
Past ``limit`` it calls ``on_over`` on the next loop turn; the manager then outruns the
largest holds (their replays read on from Kafka later) and cuts the largest queues (their
sessions kept: each client recovers once it reads again) until the node is under it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["HELD_RECORD", "SLOT", "MemoryBudget", "packet_size"]

#: What a packet object costs beside its encoded characters (an Engine.IO `Packet` and its
#: attribute dict), and what each reference to it costs: a queue's slot; a hold's record
#: (its slot and its (partition, offset, packets) tuple).
_PACKET = 200
SLOT = 8
HELD_RECORD = 72


def packet_size(item: Any) -> int:
    """What an Engine.IO packet counts against a byte limit: its encoded characters."""
    data = getattr(item, "data", None)
    return len(data) + 1 if isinstance(data, str | bytes) else 1


class MemoryBudget:
    """The estimated bytes a node's queues and holds keep, and the bound on them.

    Example::

        budget = MemoryBudget(256 * 2**20)
        budget.on_over = shed_the_largest  # called on the next loop turn, once
        budget.keep(packet, packet_size(packet))  # a queue took it
        budget.free(packet, packet_size(packet))  # and handed it on
    """

    __slots__ = ("_pending", "_refs", "bytes", "limit", "on_over")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        #: Called once the budget is over its limit (on the next loop turn, if it still is).
        self.on_over: Callable[[], None] | None = None
        #: How many references each kept packet object has, by its id (alive while kept).
        self._refs: dict[int, int] = {}
        self._pending = False

    @property
    def over(self) -> bool:
        return self.bytes > self.limit

    @property
    def packets(self) -> int:
        """Packet objects kept (each counted once however many hold it)."""
        return len(self._refs)

    def keep(self, item: Any, size: int, slot: int = SLOT) -> None:
        """``item`` (``size`` by `packet_size`) gained a reference costing ``slot`` bytes."""
        refs = self._refs
        key = id(item)
        if key in refs:
            refs[key] += 1
            self.bytes += slot
        else:
            refs[key] = 1
            self.bytes += slot + size + _PACKET
        if self.bytes > self.limit and not self._pending and self.on_over is not None:
            self._pending = True
            asyncio.get_running_loop().call_soon(self._judge)

    def free(self, item: Any, size: int, slot: int = SLOT) -> None:
        """``item`` lost one of its references (kept with the same ``size`` and ``slot``)."""
        refs = self._refs
        key = id(item)
        count = refs[key]
        if count > 1:
            refs[key] = count - 1
            self.bytes -= slot
        else:
            del refs[key]
            self.bytes -= slot + size + _PACKET

    def _judge(self) -> None:
        self._pending = False
        if self.over and self.on_over is not None:
            self.on_over()
