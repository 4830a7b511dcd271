"""Per-key turns: records of one key reach the producer in the order their publishes began.

python-socketio runs each event handler in its own task, and a publish waits on Kafka
(metadata, a full batch, a broker away) before its record is queued; tasks that wait wake in
any order, so one client's pipelined publishes to one room were stored out of the order it
sent them (issue 9). A publish takes its turn before its first ``await``: tasks start in
the order python-socketio created them, which is the order the packets arrived.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["Holding", "Turns"]


class Turns:
    """FIFO turns per key. A turn ends when its holder leaves *and* every earlier turn of
    the key has ended: a caller that gives up while waiting (a timeout) never lets a later
    one overtake the turn still in progress ahead of it."""

    def __init__(self) -> None:
        self._last: dict[bytes, _Turn] = {}

    def __len__(self) -> int:
        """Keys with a turn in progress or waiting (bounded by the publishes in flight)."""
        return len(self._last)

    def turn(self, key: bytes) -> Holding:
        """``async with turns.turn(key)``: wait for every earlier turn of ``key`` to end,
        then hold this one.

        Taken synchronously when entered: callers are ordered by when they entered, not by
        when they woke up. A plain object, not a generator, and no future unless a later
        turn has to wait for this one: it runs once per publish (tests/test_turns.py).
        """
        mine = _Turn()
        before = self._last.get(key)
        self._last[key] = mine
        return Holding(self, key, before, mine)

    def _end(self, key: bytes, turn: _Turn) -> None:
        turn.end()
        if self._last.get(key) is turn:
            del self._last[key]


class _Turn:
    """One caller's turn; a future to wait on is made only for a caller that must wait."""

    __slots__ = ("_waiter", "ended")

    def __init__(self) -> None:
        self.ended = False
        self._waiter: asyncio.Future[None] | None = None

    def waiter(self) -> asyncio.Future[None]:
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
            if self.ended:
                self._waiter.set_result(None)
        return self._waiter

    def end(self) -> None:
        self.ended = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Holding:
    """The turn `Turns.turn` took, as an async context manager; or held from `begin` to
    `end`, for a caller whose turn ends somewhere a block cannot (`gateway/protocol.py`)."""

    __slots__ = ("_before", "_key", "_left", "_mine", "_turns")

    def __init__(self, turns: Turns, key: bytes, before: _Turn | None, mine: _Turn) -> None:
        self._turns = turns
        self._key = key
        self._before = before
        self._mine = mine
        self._left = False

    async def __aenter__(self) -> None:
        before = self._before
        if before is not None and not before.ended:
            try:
                await asyncio.shield(before.waiter())  # a cancelled waiter must not end it
            except BaseException:
                self._leave()
                raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end()

    begin = __aenter__

    def end(self) -> None:
        """End the turn (once its earlier ones have): it need not have begun; ended
        already, nothing."""
        if not self._left:
            self._leave()

    def _leave(self) -> None:
        self._left = True
        before, turns, key, mine = self._before, self._turns, self._key, self._mine
        if before is None or before.ended:
            turns._end(key, mine)
        else:
            before.waiter().add_done_callback(lambda _: turns._end(key, mine))
