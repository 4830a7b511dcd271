"""One timer for many waits of one length: a publish's time bound without a timer of its own.

``asyncio.timeout`` arms a loop timer when entered and cancels it when left. Each publish
is bounded so, and on the node taking a busy room's publishes that was about 8% of its
CPU (py-spy at saturation, session 35: uvloop allocates, starts and closes a libuv timer
each time). Every publish is bounded by the same time, so their deadlines come in the
order they were set: they are kept in buckets of one tick, in a queue, and one timer,
armed for the oldest bucket, expires each bucket whole. A bound then costs a set's add
and discard, and fires up to a tick late.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from types import TracebackType

__all__ = ["TICK_S", "Deadlines"]

#: How late a bound may fire: deadlines within one tick share a bucket.
TICK_S = 0.05


class Deadlines:
    """``async with deadlines.bound()``: what ``asyncio.timeout(timeout_s)`` does (the
    task cancelled at its deadline, `TimeoutError` raised where the block is left; another
    cancellation passes through), for many tasks at once, sharing one loop timer."""

    def __init__(self, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.timeout_s = timeout_s
        self._buckets: deque[tuple[int, set[_Bound]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        """Bounds entered and not yet left or fired (the buckets hold nothing else)."""
        return sum(len(bucket) for _, bucket in self._buckets)

    @property
    def armed(self) -> bool:
        """Whether the timer is set: only while a bucket waits for its tick."""
        return self._timer is not None

    def bound(self) -> _Bound:
        return _Bound(self)

    def _enter(self, bound: _Bound) -> set[_Bound]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new loop: the old one's timer is gone
            self._loop, self._timer = loop, None
            self._buckets.clear()
        tick = math.ceil((loop.time() + self.timeout_s) / TICK_S)
        buckets = self._buckets
        if not buckets or buckets[-1][0] != tick:  # the loop's clock never goes back
            buckets.append((tick, set()))
        bucket = buckets[-1][1]
        bucket.add(bound)
        if self._timer is None:
            self._timer = loop.call_at(buckets[0][0] * TICK_S, self._expire)
        return bucket

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now, buckets = loop.time(), self._buckets
        # An empty bucket goes too: only the newest takes new bounds, and one of its tick
        # is made again when needed.
        while buckets and (buckets[0][0] * TICK_S <= now or not buckets[0][1]):
            for bound in buckets.popleft()[1]:
                bound.fire()
        if buckets:
            self._timer = loop.call_at(buckets[0][0] * TICK_S, self._expire)


class _Bound:
    """One task's bound, as an async context manager (`Deadlines.bound`)."""

    __slots__ = ("_bucket", "_cancelling", "_deadlines", "_fired", "_task")

    def __init__(self, deadlines: Deadlines) -> None:
        self._deadlines = deadlines
        self._fired = False

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline bounds a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._bucket = self._deadlines._enter(self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bucket.discard(self)
        # As asyncio.timeout: the cancel it sent becomes TimeoutError; any other passes on.
        if (
            self._fired
            and self._task.uncancel() <= self._cancelling
            and exc_type is not None
            and issubclass(exc_type, asyncio.CancelledError)
        ):
            raise TimeoutError from exc

    def fire(self) -> None:
        self._fired = True
        self._task.cancel()
