"""What a stretch of one partition held that replays could want, indexed by room.

A replay cursor's pass leaves one behind it (`adapter/cursor.py`), and the live consumer
keeps the latest of every partition (`adapter/history.py`): a session whose range starts
inside one takes its records from there, by index, without reading Kafka.
"""

from __future__ import annotations

import asyncio
import heapq
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from . import codec, routing
from .errors import RecordDecodeError

__all__ = ["Window"]

#: What a kept record costs beside its value's bytes: its list and index slots (64 B,
#: measured with tracemalloc) and the value's object header (33 B).
_ENTRY_OVERHEAD = 96
#: What a room's first record in a window costs besides: its key and list in the index.
_KEY_OVERHEAD = 200


class ReplayCounters(Protocol):
    """The counter a window keeps of the records it decodes (`ManagerStats`)."""

    replay_records_decoded: int


class Window:
    """What one partition held from ``lo`` to ``hi``: every record a replay could
    want (offsets and values in two lists: no object per record), and an index of them by
    (namespace, room), room None for broadcasts (module docstring)."""

    def __init__(self, lo: int) -> None:
        self.lo = self.hi = lo
        self.offsets: list[int] = []
        self.size = 0
        self.expiry: asyncio.TimerHandle | None = None
        self._values: list[bytes] = []
        self._messages: dict[int, codec.Message] = {}  # decoded, by place
        self._index: dict[tuple[str, str | None], list[int]] = {}
        self._unrouted: list[int] = []  # records without routing headers: any session's

    def add(self, record: Any, route: routing.Route | None) -> int | None:
        """Keep ``record`` (read at ``hi``): its place, None when no replay takes it."""
        if route is not None and (route.method != "emit" or route.ack):
            return None
        at = len(self._values)
        value = record.value
        self.offsets.append(record.offset)
        self._values.append(value)
        self.size += len(value) + _ENTRY_OVERHEAD
        if route is None:
            self._unrouted.append(at)
        elif not route.rooms:
            self._place((route.namespace, None), at)
        else:
            for room in route.rooms:
                self._place((route.namespace, room), at)
        return at

    def _place(self, key: tuple[str, str | None], at: int) -> None:
        places = self._index.get(key)
        if places is None:
            self._index[key] = [at]
            self.size += _KEY_OVERHEAD
        else:
            places.append(at)

    def message(self, at: int, stats: ReplayCounters) -> codec.Message | None:
        """The record at ``at``, decoded once for every session (None: undecodable)."""
        message = self._messages.get(at)
        if message is None:
            value = self._values[at]
            try:
                message = self._messages[at] = codec.decode(value)
            except RecordDecodeError:
                return None  # counted when the live consumer met it
            stats.replay_records_decoded += 1
            self.size += len(value)  # the decoded copy, about as big
        return message

    def candidates(self, audience: routing.Audience, first: int, last: int) -> Iterator[int]:
        """The places of the records from offset ``first`` to ``last`` that may be for
        ``audience``, in offset order, each once."""
        offsets = self.offsets
        start = bisect_left(offsets, first)
        keys = [(audience.namespace, None), *((audience.namespace, r) for r in audience.rooms)]
        lists = [self._unrouted, *(self._index.get(key, ()) for key in keys)]
        ats = [_tail(found, bisect_left(found, start)) for found in lists if found]
        previous = -1
        for at in heapq.merge(*ats):
            if at == previous:
                continue  # to several of its rooms
            previous = at
            if offsets[at] >= last:
                return
            yield at


def _tail(items: Sequence[int], start: int) -> Iterator[int]:
    return (items[k] for k in range(start, len(items)))
