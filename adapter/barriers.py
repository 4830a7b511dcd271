"""Barriers: another node's room operation or disconnect waits for the emits before it.

python-socketio's Redis manager sends everything down one channel, so another node reads a
node's emit and its disconnect of a socket there in the order they were written. Here the
emit is keyed by its room and the disconnect by its sid: on two partitions, which another
node may read in either order. Read first, the disconnect left the emit no socket ("tell
the client why, then kick it" lost the why); a leave or close of the room, the same. So
such an operation carries in its ``sio.after`` header where its node's emits ended, per
partition (`routing.headers_for`), and a node about to act on it holds its partition there
(paused, read again from that record) until it has delivered as far, or `HOLD_MAX_S` has
passed (an offset that never comes: a topic deleted and made again).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["HOLD_MAX_S", "Barriers"]

#: How long a partition waits at most for the emits its operation names.
HOLD_MAX_S = 5.0


@dataclass(slots=True)
class _Hold:
    offset: int
    after: dict[int, int]
    until: float


class Barriers:
    """The partitions of the events topic held at an operation, each until the positions
    reach the offsets it names."""

    def __init__(self) -> None:
        self._held: dict[int, _Hold] = {}
        #: Partition to the offset of an operation let through unreached (its hold expired).
        self._expired: dict[int, int] = {}

    def __bool__(self) -> bool:
        return bool(self._held)

    def holds(
        self,
        partition: int,
        offset: int,
        after: dict[int, int],
        reached: Callable[[dict[int, int]], bool],
    ) -> bool:
        """Whether the operation at ``partition``/``offset`` must wait for ``after``; if
        so, its partition is held from here on."""
        if self._expired.get(partition) == offset:
            del self._expired[partition]
            return False
        if reached(after):
            return False
        if (held := self._held.get(partition)) is None or held.offset != offset:
            self._held[partition] = _Hold(offset, after, time.monotonic() + HOLD_MAX_S)
        return True

    def release(self, reached: Callable[[dict[int, int]], bool]) -> tuple[set[int], list[int]]:
        """The partitions still held, and those whose hold expired just now (read on: the
        operation is applied without waiting any longer)."""
        now = time.monotonic()
        expired = []
        for partition, held in list(self._held.items()):
            if reached(held.after):
                del self._held[partition]
            elif now >= held.until:
                del self._held[partition]
                self._expired[partition] = held.offset
                expired.append(partition)
        return set(self._held), expired
