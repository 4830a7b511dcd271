"""What a stretch of one partition held that replays could want, indexed by room.

A replay cursor's pass leaves one behind it (`adapter/cursor.py`), and the live consumer
keeps the latest of every partition (`adapter/history.py`): a session whose range starts
inside one takes its records from there, by index, without reading Kafka.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from . import codec, routing
from .errors import RecordDecodeError

__all__ = ["Window"]

#: What a kept record costs beside its value's bytes: its list and index slots (64 B,
#: measured with tracemalloc) and the value's object header (33 B).
_ENTRY_OVERHEAD = 96
#: What a room's first record in a window costs besides, once indexed: its key and list.
_KEY_OVERHEAD = 150
#: The key of a record that is not one room's: `routing.room_key` is never -1.
_NO_KEY = -1
#: What a decoded copy costs, by its value's bytes: measured with tracemalloc, 870-1,920
#: B for records of 150-1,150 B (dicts and strings: 1.7-6x the JSON), under this bound.
_DECODED_FACTOR = 3
_DECODED_OVERHEAD = 600


class ReplayCounters(Protocol):
    """The counter a window keeps of the records it decodes (`ManagerStats`)."""

    replay_records_decoded: int


class Window:
    """What one partition held from ``lo`` to ``hi``: every record a replay could want
    (offsets, values and room keys in flat lists: no object per record), and an index of
    them by (namespace, room), room None for broadcasts, built when a replay first asks.

    A room's key is the hash of (namespace, room): the index finds a room's records with
    at most a rare other's among them, which `Audience.wants` refuses once decoded.
    """

    def __init__(self, lo: int) -> None:
        self.lo = self.hi = lo
        self.offsets: list[int] = []
        self.size = 0
        #: Told of what the window grew by once its records are in: decoded copies and
        #: the index (`LiveHistory` counts them against its budget), at `report`.
        self.grown: Callable[[int], None] | None = None
        self._unreported = 0
        self._values: list[bytes] = []
        self._keys = array("q")  # by place; _NO_KEY: in _several, or no routing headers
        self._several: dict[int, list[int]] = {}  # an emit to several rooms: their keys
        self._messages: dict[int, codec.Message] = {}  # decoded, by place
        self._decoded_bytes = 0  # what they count for in ``size``
        self._index: dict[int, list[int]] = {}
        self._unrouted: list[int] = []  # records without routing headers: any session's
        self._indexed = 0  # places the index covers

    def add(self, record: Any, route: routing.Route | None) -> int | None:
        """Keep ``record`` (read at ``hi``): its place, None when no replay takes it."""
        value = record.value
        if value is None:  # a tombstone: nothing to deliver (the live path skips it too)
            return None
        if route is None:
            key = _NO_KEY
        elif route.method != "emit" or route.ack:
            return None
        elif len(rooms := route.rooms) <= 1:
            key = route.key
        else:
            key = _NO_KEY
            self._several[len(self._values)] = [routing.room_key(route.namespace, r) for r in rooms]
        at = len(self._values)
        self.offsets.append(record.offset)
        self._values.append(value)
        self._keys.append(key)
        self.size += len(value) + _ENTRY_OVERHEAD
        return at

    def value_size(self, at: int) -> int:
        """The bytes of the record at ``at``, as written in Kafka."""
        return len(self._values[at])

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
            cost = _DECODED_FACTOR * len(value) + _DECODED_OVERHEAD
            self._decoded_bytes += cost
            self._grow(cost)
        return message

    def forget_decoded(self) -> int:
        """Drop the decoded copies (a replay decodes again what it takes): the bytes of
        ``size`` freed. Told to no one: the caller accounts for them."""
        freed, self._decoded_bytes = self._decoded_bytes, 0
        self._messages.clear()
        self.size -= freed
        return freed

    def candidates(self, audience: routing.Audience, first: int, last: int) -> Iterator[int]:
        """The places of the records from offset ``first`` to ``last`` that may be for
        ``audience``, in offset order, each once."""
        self._catch_up()
        offsets = self.offsets
        start = bisect_left(offsets, first)
        lists = [self._unrouted, *(self._index.get(key, ()) for key in audience.room_keys)]
        ats = [_tail(found, bisect_left(found, start)) for found in lists if found]
        previous = -1
        for at in heapq.merge(*ats):
            if at == previous:
                continue  # to several of its rooms
            previous = at
            if offsets[at] >= last:
                return
            yield at

    def may_hold(self, keys: frozenset[int]) -> bool:
        """Whether it may hold records filed by any of these room keys (`candidates`
        says which), or records without routing headers, which anyone may want."""
        self._catch_up()
        index = self._index
        return bool(self._unrouted) or any(key in index for key in keys)

    def _catch_up(self) -> None:
        """Index the places added since the index was last asked for."""
        keys, index, end = self._keys, self._index, len(self._keys)
        if self._indexed == end:
            return
        grown = 0
        for at in range(self._indexed, end):
            key = keys[at]
            rooms = [key] if key != _NO_KEY else self._several.get(at)
            if rooms is None:
                self._unrouted.append(at)
                continue
            for key in rooms:
                places = index.get(key)
                if places is None:
                    index[key] = [at]
                    grown += _KEY_OVERHEAD
                elif places[-1] != at:  # one room named twice: once
                    places.append(at)
        self._indexed, indexed = end, self._indexed
        self._grow(grown + 8 * (end - indexed))

    def report(self) -> None:
        """Tell ``grown`` what the window grew by since it last did: once per batch a
        replay takes, not per record decoded (the call chain cost 1.7-3 µs a record, a
        fifth of a decode)."""
        if self._unreported and self.grown is not None:
            self.grown(self._unreported)
        self._unreported = 0

    def _grow(self, by: int) -> None:
        self.size += by
        if self.grown is not None:  # before it is set, ``size`` says it all
            self._unreported += by


def _tail(items: Sequence[int], start: int) -> Iterator[int]:
    return (items[k] for k in range(start, len(items)))
