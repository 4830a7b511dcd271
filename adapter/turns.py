"""Per-key turns: records of one key reach the producer in the order their publishes began.

python-socketio runs each event handler in its own task, and a publish waits on Kafka
(metadata, a full batch, a broker away) before its record is queued; tasks that wait wake in
any order, so one client's pipelined publishes to one room were stored out of the order it
sent them (issue 9). A publish takes its turn before its first ``await``: tasks start in
the order python-socketio created them, which is the order the packets arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["Turns"]


class Turns:
    """FIFO turns per key. A turn ends when its holder leaves *and* every earlier turn of
    the key has ended: a caller that gives up while waiting (a timeout) never lets a later
    one overtake the turn still in progress ahead of it."""

    def __init__(self) -> None:
        self._last: dict[bytes, asyncio.Future[None]] = {}

    def __len__(self) -> int:
        """Keys with a turn in progress or waiting (bounded by the publishes in flight)."""
        return len(self._last)

    @contextlib.asynccontextmanager
    async def turn(self, key: bytes) -> AsyncIterator[None]:
        """Wait for every earlier turn of ``key`` to end, then hold this one.

        Taken synchronously when entered: callers are ordered by when they entered, not by
        when they woke up.
        """
        before = self._last.get(key)
        mine = asyncio.get_running_loop().create_future()
        self._last[key] = mine
        try:
            if before is not None and not before.done():
                await asyncio.shield(before)  # a cancelled waiter must not cancel `before`
            yield
        finally:
            if before is None or before.done():
                self._end(key, mine)
            else:
                before.add_done_callback(lambda _: self._end(key, mine))

    def _end(self, key: bytes, turn: asyncio.Future[None]) -> None:
        if not turn.done():
            turn.set_result(None)
        if self._last.get(key) is turn:
            del self._last[key]
