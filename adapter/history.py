"""The latest records of every partition, kept as the live consumer reads them.

Every node reads every record of the events topic live, so the records a recovering
client missed passed through the node it comes back to, moments ago. Kept here in
`Window` segments (per partition, indexed by namespace and room) up to a byte budget,
they answer the replay of a short drop from memory: the session takes its own records by
index, nothing is read from Kafka and only what it receives is decoded. A replay that
starts before what a partition still holds reads that partition from Kafka as before
(`adapter/cursor.py`); memory stays bounded, and Kafka stays the record.

A segment closes at ``SEGMENT_BYTES``; when the closed ones hold more than the budget, the
decoded copies replays left in them are dropped first (those of the segments that grew
first), then the oldest segment of any partition (each partition's open one comes on top: a
segment at most). A partition's history is whole from where the live consumer was
positioned: the consumer notes every record it reads (`note`), and a new position (a
restart of the Kafka clients) starts it afresh (`reset`).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Sequence
from typing import Any

from .routing import Route
from .window import Window

__all__ = ["SEGMENT_BYTES", "LiveHistory"]

#: Where a partition's segment closes and the next begins: the unit the budget drops.
SEGMENT_BYTES = 256 * 1024


class LiveHistory:
    """Up to ``budget`` bytes of the records replays deliver, the latest of each partition.

    Example::

        history = LiveHistory(32 * 1024 * 1024)
        history.reset(positions)  # the live consumer's, moved on in place
        history.note(record.partition, record, route)  # each record it reads
        windows = history.since(partition, offset)  # None: not held from there
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._positions: Sequence[int] = ()
        self._segments: list[deque[Window]] = []
        #: Closed segments, oldest first (the order the budget drops them in), by partition.
        self._closed: deque[tuple[int, Window]] = deque()
        #: What they hold now, decoded copies and indexes included.
        self._closed_bytes = 0
        #: Those that grew since their copies were last dropped, in the order they grew:
        #: the copies the budget drops first, without a walk over every segment.
        self._grown: dict[Window, None] = {}

    def reset(self, positions: Sequence[int]) -> None:
        """Keep afresh from ``positions``, where the live consumer now reads from; it moves
        them on in place as it takes records, so what it noted reaches up to them."""
        for _, window in self._closed:
            window.grown = None
        self._positions = positions
        self._segments = [deque([Window(p)]) for p in positions]
        self._closed.clear()
        self._closed_bytes = 0
        self._grown.clear()

    def note(self, partition: int, record: Any, route: Route | None) -> None:
        """The live consumer read this record (after moving its position past it)."""
        if partition >= len(self._segments):
            return  # not positioned there
        window = self._segments[partition][-1]
        if window.add(record, route) is None or window.size < SEGMENT_BYTES:
            return
        window.hi = record.offset + 1
        self._segments[partition].append(Window(window.hi))
        self._closed.append((partition, window))
        self._closed_bytes += window.size
        window.grown = functools.partial(self._grew, window)
        self._trim()

    def _grew(self, window: Window, by: int) -> None:
        """A closed segment grew (a replay decoded from it, or indexed it)."""
        self._closed_bytes += by
        self._grown[window] = None
        self._trim()

    def _trim(self) -> None:
        # Decoded copies go first, those of the segments that grew first: they save a
        # decode each, where a dropped record sends every replay that needs it to Kafka (a
        # mass reconnect's decodes, about 870 B a record of 90, pushed its own gap out).
        while self._grown and self._closed_bytes > self.budget:
            window = next(iter(self._grown))
            del self._grown[window]
            self._closed_bytes -= window.forget_decoded()
        while self._closed and self._closed_bytes > self.budget:
            oldest, window = self._closed.popleft()
            self._segments[oldest].popleft()  # that partition's oldest: closed in order
            window.grown = None  # a replay may still take from it: no longer held here
            self._grown.pop(window, None)
            self._closed_bytes -= window.size

    def held_from(self, partition: int) -> int | None:
        """The first offset of ``partition`` it holds (None: none of it)."""
        if partition >= len(self._segments):
            return None
        return self._segments[partition][0].lo

    def covers(self, start: Sequence[int]) -> bool:
        """Whether it holds every partition from ``start`` (one offset each) to the live
        position: a replay from there needs nothing of Kafka, not even its bounds."""
        segments, positions = self._segments, self._positions
        return len(start) == len(segments) and all(
            held[0].lo <= offset <= position
            for held, offset, position in zip(segments, start, positions, strict=True)
        )

    def since(self, partition: int, offset: int) -> list[Window] | None:
        """The segments of ``partition`` from the one holding ``offset`` on, the last one
        reaching to the live position; None when ``offset`` lies before what it holds."""
        if partition >= len(self._segments):
            return None
        segments = self._segments[partition]
        if offset < segments[0].lo:
            return None
        segments[-1].hi = self._positions[partition]
        return [window for window in segments if window.hi > offset]

    @property
    def size(self) -> int:
        """Bytes held: the closed segments', and each partition's open one (values, index
        and the decoded copies of the records replays took)."""
        return self._closed_bytes + sum(segments[-1].size for segments in self._segments)
