"""Exactly-once client publishes: a client-chosen publish id is produced once per session.

A client names each publish (its ``id``). Within the window, a repeat of an id already
accepted from the same session is acknowledged as a repeat and never produced again, on
whichever node the client reconnects to. What a node knows, in memory, for the window:

- its own publishes (in flight, written, or failed: a failed one may be written all the
  same, "Kafka did not confirm ... (it may still be written)");
- every publish id on the events topic that its live consumer read: the record's
  ``sio.pub`` (the session's digest) and ``sio.cid`` headers, first record in its
  partition's order.

A session recovered here may have published on its old node: its first publish on a new
connection waits until this node's consumer has read the events topic as far as it ended
then. The old node wrote the session "left" only after that session's publishes settled
(`PublishLedger.settle`), or it is dead (its heartbeat stale, its connection to Kafka
closed): what it wrote is below that end. A failed publish, repeated, waits the same
way for its partition.

One race no check closes: an old node's produce that Kafka takes only after the client
resent elsewhere (a broker outage longer than the node's settle wait). Consumption closes
it for room members: a record whose publisher and id an earlier record of its partition
carried is dropped, live and in replays, on every node alike (Kafka's order decides).

Memory: one entry per publish id seen in the window, about 370 bytes with 32-character
ids (window x rate: 135 s at 1,000 publishes/s is 135,000 entries, 50 MB), capped at
``max_ids``: past it the oldest are forgotten early (counted in ``counts["evicted"]``), and
a repeat of one of those would be produced again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .errors import ConfigError, PublishError
from .routing import CORRELATION_ID, PUBLISHER, Headers

__all__ = [
    "DEFAULT_WINDOW_S",
    "MAX_IDS",
    "MAX_ID_LENGTH",
    "PublishLedger",
    "Turn",
    "publisher_of",
    "sessionless",
]

#: The default recovery window (120 s) and a publish's Kafka timeout (15 s): a resend
#: comes at most a recovery window after the client left, for a publish made before.
DEFAULT_WINDOW_S = 135.0
MAX_IDS = 1_000_000
#: The longest publish id a client may choose (the gateway refuses longer ones).
MAX_ID_LENGTH = 64
#: `publisher_of`'s hex digits.
_PUBLISHER_LENGTH = 16
#: How long a node waits, when a session's connection drops, for the session's publishes
#: in flight before it writes the session "left". Short: another node that recovers the
#: session waits for that record about 3.5 s (`NODE_STALE_S`), then gives up on it.
_SETTLE_S = 2.0

#: Waits until this node's consumer has read the given partitions (None: all) as far as
#: they end now; raises `PublishError` when it cannot tell in time.
CatchUp = Callable[[Sequence[int] | None], Awaitable[None]]
_Key = tuple[str, str]
K = TypeVar("K")
V = TypeVar("V")


def publisher_of(session: str) -> str:
    """The ``sio.pub`` header of a session's publishes: 16 hex digits of a digest, as the
    recovery pid is its client's secret and the events topic has many readers."""
    return hashlib.blake2b(session.encode(), digest_size=8).hexdigest()


def sessionless(sid: str) -> str:
    """What names the publishes of a socket without a session (recovery off, or declined):
    its sid, for `publisher_of`."""
    return f"sid:{sid}"


@dataclass(frozen=True, slots=True)
class Turn:
    """One publish with a client-chosen id: who (`publisher_of`), which id, the partition
    its record goes to, and the connection it came on (a new one after a recovery)."""

    publisher: str
    id: str
    partition: int
    connection: str
    #: The session is a recovered one: it may have published on another node.
    recovered: bool


@dataclass(slots=True)
class _Mine:
    """A publish of this node: True once written, False when it failed."""

    done: asyncio.Future[bool]
    at: float


class PublishLedger:
    """One node's record of publish ids, its own and those read from Kafka.

    Example (what the gateway's ``publish`` does)::

        new = await manager.publishes.publish(turn, lambda: manager.emit(...))
        ack = {"ok": True, "id": turn.id, "repeat": not new}
    """

    def __init__(
        self, catch_up: CatchUp, window_s: float = DEFAULT_WINDOW_S, max_ids: int = MAX_IDS
    ) -> None:
        if window_s <= 0 or max_ids < 1:
            raise ConfigError("the publish window and max_ids must be > 0")
        self.window_s = window_s
        self.max_ids = max_ids
        self._catch_up = catch_up
        self._mine: dict[_Key, _Mine] = {}
        #: First ``(partition, offset, time)`` of each publish id read, oldest first.
        self._seen: dict[_Key, tuple[int, int, float]] = {}
        #: Positions of records dropped as repeats (a replay drops them too), oldest first.
        self._repeats: dict[tuple[int, int], float] = {}
        #: Per publisher, the connection whose history this node has read up to.
        self._connections: dict[str, tuple[str, float]] = {}
        #: Per publisher, the connection that dropped and settled: its late publishes are
        #: refused (its session is "left" in Kafka, maybe recovered elsewhere already).
        self._closed: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: Counter[str] = Counter()
        self._in_flight: dict[str, set[asyncio.Future[bool]]] = {}
        #: Repeats acknowledged without producing; repeated records dropped when read;
        #: ids forgotten before the window's end (``max_ids``).
        self.counts: Counter[str] = Counter()

    async def publish(self, turn: Turn, produce: Callable[[], Awaitable[None]]) -> bool:
        """Produce unless ``turn`` repeats an accepted publish: True when produced now,
        False for a repeat. Raises `PublishError` as ``produce`` does (retriable).

        A session's publishes take their turns in the order they came, so their records
        are handed to the producer in that order.
        """
        key = (turn.publisher, turn.id)
        async with self._turn(turn.publisher):
            self._prune(time.monotonic())
            closed = self._closed.get(turn.publisher)
            if closed is not None and closed[0] == turn.connection:
                raise PublishError("the connection is closed")
            await self._read_history(turn)
            mine = self._mine.get(key)
            if mine is not None and not mine.done.done():
                pending: asyncio.Future[bool] | None = mine.done
            elif (mine is not None and mine.done.result()) or await self._written(turn, mine):
                self.counts["repeats_acked"] += 1
                return False
            else:
                pending, task = None, self._start(key, produce)
        if pending is None:
            await task
            return True
        if await asyncio.shield(pending):  # the first attempt, still in flight here
            self.counts["repeats_acked"] += 1
            return False
        raise PublishError("the first attempt of this publish failed; retry")

    @contextlib.asynccontextmanager
    async def _turn(self, publisher: str) -> AsyncIterator[None]:
        """A publisher's lock, first come first served, kept while anyone holds or waits."""
        lock = self._locks.setdefault(publisher, asyncio.Lock())
        self._waiting[publisher] += 1
        try:
            async with lock:
                yield
        finally:
            self._waiting[publisher] -= 1
            if not self._waiting[publisher]:
                del self._waiting[publisher], self._locks[publisher]

    async def _read_history(self, turn: Turn) -> None:
        """On a recovered session's new connection, read first what its old node wrote."""
        if not turn.recovered:
            return
        known = self._connections.get(turn.publisher)
        if known is None or known[0] != turn.connection:
            await self._catch_up(None)
            self._connections.pop(turn.publisher, None)  # re-inserted: the newest is last
            self._connections[turn.publisher] = (turn.connection, time.monotonic())

    async def _written(self, turn: Turn, mine: _Mine | None) -> bool:
        """Whether Kafka holds the publish, as far as this node read it; after a failed
        attempt here, read its partition to the end first (it may have been written)."""
        if mine is not None:
            await self._catch_up([turn.partition])
        return (turn.publisher, turn.id) in self._seen

    def _start(self, key: _Key, produce: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._mine.pop(key, None)  # a failed attempt's: re-inserted, the newest is last
        self._mine[key] = _Mine(done, time.monotonic())
        flying = self._in_flight.setdefault(key[0], set())
        flying.add(done)
        # A task, started in this turn: tasks run in the order they are made, so records
        # reach the producer in the session's order while their round trips overlap.
        task = asyncio.ensure_future(produce())

        def finished(task: asyncio.Task[None]) -> None:
            done.set_result(not task.cancelled() and task.exception() is None)
            flying.discard(done)
            if not flying and self._in_flight.get(key[0]) is flying:
                del self._in_flight[key[0]]

        task.add_done_callback(finished)
        return task

    async def settle(self, publisher: str, connection: str) -> None:
        """A session's connection dropped: wait (briefly) for its publishes in flight, and
        refuse any it sends later, before its session is written "left" for another node
        to recover."""
        now = time.monotonic()
        self._prune(now)  # here too: a node whose clients never choose ids still drops
        self._closed.pop(publisher, None)
        self._closed[publisher] = (connection, now)
        # Bounded as a whole: a turn may be waiting on Kafka (reading the topic's end).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SETTLE_S):
                if publisher in self._locks:
                    async with self._turn(publisher):  # those queued start, or are refused
                        pass
                flying = self._in_flight.get(publisher)
                if flying:
                    await asyncio.wait(set(flying))

    def first(self, partition: int, offset: int, headers: Headers) -> bool:
        """Note a record read from the events topic; False when it repeats a publish that
        an earlier record of its partition carried (drop it: first in Kafka's order wins).

        Runs for every record read: one look at its last header (``sio.pub`` is written
        last), nothing decoded unless it is a publish with a client-chosen id.
        """
        if not headers or headers[-1][0] != PUBLISHER:
            return True
        publisher = headers[-1][1]
        pub_id = next((value for name, value in headers if name == CORRELATION_ID), None)
        if publisher is None or pub_id is None:
            return True
        if len(publisher) != _PUBLISHER_LENGTH or len(pub_id) > MAX_ID_LENGTH * 4:
            # Not one a node wrote (UTF-8 takes up to 4 bytes a character): remembered,
            # another producer's headers of a megabyte each would fill the node.
            return True
        key = (publisher.decode(errors="replace"), pub_id.decode(errors="replace"))
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = (partition, offset, now)
            self._prune(now)
            return True
        if seen[0] == partition and seen[1] < offset:
            self._repeats[(partition, offset)] = now
            self._prune(now)
            self.counts["repeats_dropped"] += 1
            return False
        return True  # read again (a restarted read loop), or the same id in another room

    @property
    def remembered(self) -> int:
        """Publish ids read from Kafka and remembered now (bounded by ``max_ids``)."""
        return len(self._seen)

    def repeated(self, partition: int, offset: int) -> bool:
        """Whether the record there was dropped as a repeat when read: a replay drops it too."""
        return (partition, offset) in self._repeats

    def _prune(self, now: float) -> None:
        """Forget what is older than the window, oldest first, and past ``max_ids``."""
        cutoff = now - self.window_s
        seen = self._seen
        while seen:
            key = next(iter(seen))
            if seen[key][2] >= cutoff and len(seen) <= self.max_ids:
                break
            if seen[key][2] >= cutoff:
                self.counts["evicted"] += 1
            del seen[key]
        _drop_older(self._mine, cutoff, lambda mine: mine.at, self.max_ids)
        _drop_older(self._repeats, cutoff, lambda at: at, self.max_ids)
        _drop_older(self._connections, cutoff, lambda known: known[1])
        _drop_older(self._closed, cutoff, lambda closed: closed[1])


def _drop_older(
    table: dict[K, V], cutoff: float, when: Callable[[V], float], most: int | None = None
) -> None:
    """Drop the entries of a table kept in time order whose time is before ``cutoff``,
    and the oldest past ``most`` of them."""
    while table:
        key = next(iter(table))
        if when(table[key]) >= cutoff and (most is None or len(table) <= most):
            return
        del table[key]
