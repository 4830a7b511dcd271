"""Bounded outgoing queues: a client that stops reading is cut off, not fed forever.

Every Engine.IO socket's queue is an `Outbox`, a queue that counts the packets and bytes
waiting on it. Live fan-out and replays put packets on it without awaiting (one fetched
batch goes to every recipient before anything yields), so nothing else stops a client
that does not read (a stalled mobile network, a hostile client) from making its node keep
everything sent to it. A socket still past its high-water mark once
its writer had its turn (a reading client's writer takes the whole queue every turn) is cut:
its queue is emptied at once and its connection closed with the `SLOW_CONSUMER` reason,
which connection state recovery treats as a lost connection, so the session is kept and
the client, once it reads again, recovers from Kafka exactly what it did not process.

Replays do not fill an outbox to its mark: they wait for it to drain below a low-water
mark (a quarter of the high-water mark) before putting more.

All of a node's queues count against one `MemoryBudget` (`adapter/budget.py`): many
sockets, each under its own marks, are cut too once together they keep more than the node
may, the largest first.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .aborts import abort_connection
from .budget import MemoryBudget, packet_size
from .errors import ConfigError

__all__ = [
    "SLOW_CONSUMER",
    "Outbox",
    "OutboxLimits",
    "Outboxes",
    "SlimQueue",
    "WriteFrames",
]

#: The disconnect reason of a cut socket; its recovery session is kept.
SLOW_CONSUMER = "slow consumer"

#: A connection's writer of Engine.IO packets as WebSocket frames: all of them, in order,
#: or none (False) (`adapter/frames.py`).
WriteFrames = Callable[[Sequence[Any]], bool]


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """Per-socket high-water marks on queued outgoing packets and bytes.

    Whichever comes first cuts. A reading client's writer takes the whole queue every
    loop turn, so it has at most one Kafka fetch queued: up to 1 MB per partition
    (``max_partition_fetch_bytes``), 6 MB for a socket in rooms on all 6. The defaults
    are above that, with room to spare for a client that falls behind for a moment: 16 MB,
    and 50,000 packets (a Python packet object costs about 200 bytes beside its text, so
    about 10 MB of small packets). Sizes are counted in characters of the encoded packet.
    """

    max_packets: int = 50_000
    max_bytes: int = 16 * 1024 * 1024
    #: What all of a node's queues and holds keep together (`MemoryBudget`), estimated in
    #: bytes: past it the largest are shed first. About a connection's own memory (25 kB)
    #: for each of 10,000 connections (the gateway's default bound on them).
    node_max_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if min(self.max_packets, self.max_bytes, self.node_max_bytes) < 1:
            raise ConfigError("max_packets, max_bytes and node_max_bytes must be >= 1")

    @property
    def low_packets(self) -> int:
        return max(1, self.max_packets // 4)

    @property
    def low_bytes(self) -> int:
        return max(1, self.max_bytes // 4)


@functools.lru_cache(maxsize=8)
def _marks(limits: OutboxLimits) -> tuple[tuple[int, int], tuple[int, int]]:
    """The high- and low-water marks, as (packets, bytes)."""
    return (limits.max_packets, limits.max_bytes), (limits.low_packets, limits.low_bytes)


class SlimQueue:
    """What Engine.IO and uvicorn use of ``asyncio.Queue`` (``get``, ``put``, their
    ``_nowait`` forms, ``task_done``, ``join``), unbounded, without its cost.

    A Queue is four deques, 3 KB, on every connection, most of them idle (measured in
    benchmarks/memory.py). Here a deque holds the items while there are any (an empty
    one is 760 bytes), a getter (a socket's writer) gets a future the next put resolves
    with its item, and what only a close waits for is made then.
    """

    __slots__ = ("_finished", "_getters", "_items", "_loop", "_unfinished")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._getters: list[asyncio.Future[Any]] = []
        self._unfinished = 0
        self._finished: asyncio.Future[None] | None = None
        #: Looked up once: Python 3.11 checks the running loop with a system call.
        self._loop: asyncio.AbstractEventLoop | None = None

    # The hooks every put and get goes through (as asyncio.Queue's, for subclasses).
    def _put(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)

    def _get(self) -> Any:
        assert self._items is not None
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    def qsize(self) -> int:
        return len(self._items) if self._items is not None else 0

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        self._unfinished += 1
        self._put(item)
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():  # one that timed out is skipped
                getter.set_result(self._get())
                return

    async def put(self, item: Any) -> None:
        """Never waits (unbounded): a coroutine because the callers await it."""
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._get()

    def get(self) -> asyncio.Future[Any]:
        """The next item, as a future: ``asyncio.wait_for`` (engineio's writer) would wrap a
        coroutine in a task, one more per connection, made again on each wake-up."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        getter: asyncio.Future[Any] = self._loop.create_future()
        self._getters = [g for g in self._getters if not g.done()]  # timed out, gone
        if self._items and not self._getters:
            getter.set_result(self._get())
        else:
            self._getters.append(getter)
        return getter

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._finished is not None:
            if not self._finished.done():
                self._finished.set_result(None)
            self._finished = None

    async def join(self) -> None:
        """Wait until every item put was taken and marked done (engineio's close)."""
        if self._unfinished > 0:
            if self._finished is None:
                self._finished = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._finished)


class Outbox(SlimQueue):
    """An Engine.IO socket's outgoing queue that knows how much it holds (in slots, and its
    marks shared: every socket has one)."""

    __slots__ = (
        "_judging", "_low", "_low_water", "_max", "budget", "bytes", "closed", "limits",
        "shed", "write_frames",
    )  # fmt: skip

    def __init__(self, limits: OutboxLimits, budget: MemoryBudget | None = None) -> None:
        super().__init__()
        self.limits = limits
        #: The node's, shared by all its sockets' queues (or this queue's own).
        self.budget = budget or MemoryBudget(limits.node_max_bytes)
        self._max, self._low_water = _marks(limits)
        self.bytes = 0
        #: Cut: what was queued is dropped, and so is whatever comes after.
        self.shed = False
        #: Its connection closed (`close`): nothing more is offered to it.
        self.closed = False
        self._judging = False
        #: Made by the first replay that waits for the drain (most sockets never do).
        self._low: asyncio.Event | None = None
        #: The socket's connection, when it writes packets as they are offered
        #: (`adapter/frames.py`).
        self.write_frames: WriteFrames | None = None

    def _put(self, item: Any) -> None:
        super()._put(item)
        size = packet_size(item)
        self.bytes += size
        self.budget.keep(item, size)
        if self._low is not None and self.above_low_water and not self.closed:
            self._low.clear()

    def _get(self) -> Any:
        item = super()._get()
        size = packet_size(item)
        self.bytes -= size
        self.budget.free(item, size)
        if self._low is not None and not self.above_low_water:
            self._low.set()
        return item

    def __del__(self) -> None:
        # A socket closed with packets still queued (its writer ended first) keeps them
        # until the queue itself is freed: only then does the node have them back.
        for item in self._items or ():
            self.budget.free(item, packet_size(item))

    @property
    def over_limit(self) -> bool:
        packets, size = self._max
        return self.qsize() > packets or self.bytes > size

    @property
    def above_low_water(self) -> bool:
        packets, size = self._low_water
        return self.qsize() > packets or self.bytes > size

    def offer(self, packets: Sequence[Any], cut: Callable[[str], object], eio_sid: str) -> bool:
        """Queue ``packets`` for socket ``eio_sid``; once shed, drop them.

        Over its limits, ``cut(eio_sid)`` is called on the next loop turn if it still is:
        its writer, woken by the first packet, runs before, and takes all of it if its
        client reads. One fetched batch to a reading client is never cut.

        While nothing waits on the queue, nor with its writer, a connection that writes
        frames (`write_frames`) takes the packets at once: True when it did.
        """
        if self.shed or self.closed:
            return False
        if self._unfinished == 0 and self.write_frames is not None and self.write_frames(packets):
            return True
        for pkt in packets:
            self.put_nowait(pkt)
        if not self._judging and self.over_limit:
            self._judging = True
            asyncio.get_running_loop().call_soon(self._judge, cut, eio_sid)
        return False

    def _judge(self, cut: Callable[[str], object], eio_sid: str) -> None:
        self._judging = False
        if self.over_limit and not self.shed:
            cut(eio_sid)

    async def drained(self) -> None:
        """Wait until the queue is at or below its low-water mark (or shed)."""
        if self._low is None:
            self._low = asyncio.Event()
            if self.shed or self.closed or not self.above_low_water:
                self._low.set()
        await self._low.wait()

    def close(self) -> None:
        """Its connection closed. A replay waiting for the drain, which will never come,
        goes on at once and finds the socket gone: it held its share of the node's replay
        buffer, and its cursor, until its timeout (a minute) before."""
        self.closed = True
        if self._low is not None:
            self._low.set()

    def shed_all(self) -> None:
        """Drop what is queued, and end the socket's writer once it takes the next item."""
        self.shed = True
        while not self.empty():
            self.get_nowait()
            self.task_done()
        self.put_nowait(None)  # engineio's writer exits on None
        if self._low is not None:
            self._low.set()  # a replay waiting for the drain sees the socket cut


class Outboxes:
    """Makes every socket's queue an `Outbox`, all counted in one node's budget, and cuts
    sockets off."""

    def __init__(self, limits: OutboxLimits, budget: MemoryBudget | None = None) -> None:
        self.limits = limits
        self.budget = budget or MemoryBudget(limits.node_max_bytes)
        self._closing: set[asyncio.Task[None]] = set()

    def create_queue(self, *args: Any, **kwargs: Any) -> Outbox:
        """Engine.IO server's queue factory (``AsyncServer.create_queue``)."""
        return Outbox(self.limits, self.budget)

    def cut(self, socket: Any, environ: Mapping[str, Any] | None = None) -> bool:
        """Empty an Engine.IO socket's queue now, close its connection at once where its
        ``environ`` offers a way (`aborts.py`), and close it with `SLOW_CONSUMER`.

        False when it was already cut. The close does not wait for the queue to drain,
        as engineio's own ``disconnect`` does: that wait would never end.
        """
        queue = socket.queue
        if not isinstance(queue, Outbox) or queue.shed:
            return False
        queue.shed_all()
        # Its writer may be stuck in a send the client never takes: its connection goes.
        abort_connection(environ)
        close = socket.close(wait=False, abort=True, reason=SLOW_CONSUMER)
        task = asyncio.get_running_loop().create_task(close)
        self._closing.add(task)  # a reference until it is done: the loop keeps weak ones
        task.add_done_callback(self._closing.discard)
        return True
