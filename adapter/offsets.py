"""The offset string a client holds: an epoch plus its position on every partition.

``<epoch>~<o0>.<o1>...`` with each offset in base 36. The last string a client received
says everything it has seen: the node that delivered it had consumed every partition up
to those offsets, and delivers to each socket in consumption order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import SocketIOKafkaError

__all__ = ["MAX_OFFSET_LENGTH", "Marker", "OffsetError", "Position", "decode", "encode"]

MAX_OFFSET_LENGTH = 4096
_EPOCH = re.compile(r"[0-9a-z]{1,32}")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


class OffsetError(SocketIOKafkaError, ValueError):
    """An offset string that is malformed, forged, or from another topic's epoch."""


@dataclass(frozen=True, slots=True)
class Position:
    """Next offset to read, per partition, under one epoch of the events topic."""

    epoch: str
    offsets: tuple[int, ...]

    def at_least(self, floor: Position) -> Position:
        """This position with no partition behind ``floor`` (same epoch)."""
        return Position(self.epoch, tuple(map(max, self.offsets, floor.offsets)))


def encode(epoch: str, offsets: list[int] | tuple[int, ...]) -> str:
    return f"{epoch}~{'.'.join(_base36(o) for o in offsets)}"


class Marker:
    """An offset string kept current one partition at a time: a replay moves one partition
    per record, so only that part is re-encoded."""

    def __init__(self, epoch: str, offsets: tuple[int, ...]) -> None:
        self.epoch = epoch
        self._prefix = f"{epoch}~"
        self._offsets = list(offsets)
        self._parts = [_base36(o) for o in offsets]

    @property
    def size(self) -> int:
        """How many partitions it marks."""
        return len(self._offsets)

    def advance(self, partition: int, offset: int) -> str:
        """The offset string once ``partition`` has been read up to ``offset``."""
        self._offsets[partition] = offset
        self._parts[partition] = _base36(offset)
        return self._prefix + ".".join(self._parts)

    def at(self, offsets: list[int]) -> str:
        """The offset string of ``offsets``, re-encoding only the partitions that moved
        since the last call: live delivery marks every event (`encode` of 6 partitions
        took 3.6 µs of CPU, 0.9 µs this way, and it grows with the partitions)."""
        known = self._offsets
        for partition, offset in enumerate(offsets):
            if offset != known[partition]:
                known[partition] = offset
                self._parts[partition] = _base36(offset)
        return self._prefix + ".".join(self._parts)


def decode(value: object, epoch: str, partitions: int) -> Position:
    """Parse a client's offset string; raise `OffsetError` unless it fits this topic exactly."""
    if not isinstance(value, str) or len(value) > MAX_OFFSET_LENGTH:
        raise OffsetError("offset must be a string of reasonable length")
    their_epoch, sep, body = value.partition("~")
    if not sep or not _EPOCH.fullmatch(their_epoch):
        raise OffsetError("malformed offset")
    if their_epoch != epoch:
        raise OffsetError(f"offset from another epoch ({their_epoch}, now {epoch})")
    parts = body.split(".")
    if len(parts) != partitions:
        raise OffsetError(f"offset has {len(parts)} partitions, the topic {partitions}")
    try:
        offsets = tuple(int(part, 36) for part in parts)
    except ValueError as exc:
        raise OffsetError("malformed offset") from exc
    if any(o < 0 for o in offsets) or any(not p.isalnum() for p in parts):
        raise OffsetError("malformed offset")
    return Position(epoch, offsets)


def _base36(number: int) -> str:
    if number == 0:
        return "0"
    out = []
    while number:
        number, digit = divmod(number, 36)
        out.append(_DIGITS[digit])
    return "".join(reversed(out))
