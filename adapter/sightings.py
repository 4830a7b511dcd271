"""Where each room was last written, per partition, as this node's live consumer read it.

Every node reads every record of the events topic live. What it notes here lets a replay
skip a partition that none of its session's rooms (its sid, its namespace's broadcasts)
was written to since the session left, and stop reading a partition after the last
record that can concern it. A client that missed 100 of its own events among 1,000,000
to other rooms then reads its room's partition only, not its sid's and its namespace's
broadcast partition as well: at 48 partitions, 21,000 records instead of 64,000-68,000.

The table is fixed in size: rooms are hashed into buckets of each partition, twice (two
half tables, each room in one bucket of each, read by the smaller offset of its two), and a
collision only means a partition read that could have been skipped: a room looks written
to by others only when both its buckets were, and at 5,000 rooms that is about 0.3% of
rooms rather than 2.5% with one table of the same size. A partition is asked
only about the session's rooms whose events are keyed to it (docs/wire-format.md), and it
answers only for a range this node's consumer read whole, from where it was positioned to
where it is.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

from .routing import Route, room_key

__all__ = ["Sightings"]

#: Buckets across the partitions and both tables (2 MiB of offsets). With ``r`` rooms of a
#: partition written within a session's gap and ``b`` buckets per table of it, one of its
#: rooms looks written to by others with a probability of about ``(r / b)**2`` (6 partitions,
#: 5,000 rooms: 0.3%; 100,000: about 40%, as with one table: a Bloom filter's trade).
BUCKETS = 1 << 18
#: The second table's bucket comes from these upper bits of the room's hash.
_SECOND = 32


class Sightings:
    """The last offset at which each (namespace, room) bucket of a partition was written,
    for the events replays deliver (emits that wait for no ack)."""

    def __init__(self) -> None:
        self._since: list[int] = []
        self._positions: Sequence[int] = ()
        self._last: list[array[int]] = []
        self._unrouted: list[int] = []
        self._mask = 0

    def reset(self, positions: Sequence[int]) -> None:
        """Note afresh from ``positions``, where the live consumer now reads from; it moves
        them on in place as it takes records, so a range up to them was read here."""
        self._since = list(positions)
        self._positions = positions
        per_table = 1 << max(0, (BUCKETS // max(1, 2 * len(positions))).bit_length() - 1)
        self._mask = per_table - 1
        # One array per partition: the first table, then the second.
        self._last = [array("q", [-1]) * (2 * per_table) for _ in positions]
        self._unrouted = [-1] * len(positions)

    def note(self, partition: int, offset: int, route: Route | None) -> None:
        """The live consumer read this record (before it moves past it)."""
        if partition >= len(self._unrouted):
            return  # not positioned there: `bound` answers for none of it
        if route is None:  # no routing headers: any session's, as far as anyone knows
            self._unrouted[partition] = offset
            return
        if route.method != "emit" or route.ack:
            return  # never replayed
        # An emit to several rooms is keyed as a broadcast, and noted as one.
        last, mask, key = self._last[partition], self._mask, route.key
        last[key & mask] = offset
        last[mask + 1 + (key >> _SECOND & mask)] = offset

    def bound(
        self, partition: int, start: int, stop: int, namespace: str, rooms: Iterable[str | None]
    ) -> int:
        """Where a replay of ``[start, stop)`` of ``partition`` can end for a session that
        receives ``rooms`` of ``namespace`` there (None: broadcasts and emits to several
        rooms; `Audience.by_partition`): ``start`` or before when nothing in the range can
        concern it; ``stop`` when this node did not read the whole range."""
        if not (
            partition < len(self._since)
            and self._since[partition] <= start
            and stop <= self._positions[partition]
        ):
            return stop
        last, mask = self._last[partition], self._mask
        seen = self._unrouted[partition]
        for room in rooms:
            key = room_key(namespace, room)
            seen = max(seen, min(last[key & mask], last[mask + 1 + (key >> _SECOND & mask)]))
        return min(stop, seen + 1)
