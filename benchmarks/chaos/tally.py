"""Counting a chaos run: what each publisher had acked or refused against what each member
of a room received, per client, per room, per scenario and in total.

- lost: acked, never received by a member that was in the room throughout (a member whose
  reconnection was not recovered had a fresh session and joined again: its gap is counted
  as ``not_recovered``, not as lost);
- duplicated: a number received more than once;
- out of order: an acked number received after a higher one from the same publisher to
  that room;
- refused but delivered: refused (an error or no ack in time) yet delivered, which a
  refusal that says "may still be written" allows; never counted as a duplicate;
- refused late: of those, one received after a higher number. Its place is not promised: a
  publisher whose connection drops while Kafka elects a leader publishes on through another
  node, and the old node's record lands when Kafka takes it, after the newer ones (a client
  that resends with an ``id`` can keep its first place: a later copy is dropped);
- unanswered but delivered: no answer at all when the run ended, yet delivered.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Fault", "Tally", "Window", "published_in", "tally"]

Json = dict[str, Any]

_KINDS = (
    "lost",
    "duplicated",
    "out_of_order",
    "refused_but_delivered",
    "refused_late",
    "unanswered_delivered",
)
_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    client: str
    room: str
    publisher: str
    seq: int
    #: For out of order and refused late: the higher number received before it.
    after: int | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """A stretch of the run: the numbers each publisher sent in it (from the start, or to
    the end, where a publisher is not named), and its clock times."""

    name: str
    first: dict[str, int]
    last: dict[str, int]
    started: float
    ended: float

    def holds(self, publisher: str, seq: int) -> bool:
        return self.first.get(publisher, 1) <= seq <= self.last.get(publisher, sys.maxsize)


@dataclass
class Tally:
    clients: list[Json] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    reconnects: list[Json] = field(default_factory=list)

    def totals(self, publishers: list[Json]) -> Json:
        sent = sum(n for p in publishers for n in p["sent"].values())
        acked = sum(len(v) for p in publishers for v in p["acked"].values())
        refused = sum(len(v) for p in publishers for v in p["refused"].values())
        return {
            "published": sent,
            "acked": acked,
            "refused": refused,
            "unanswered": sent - acked - refused,
            "received": sum(c["received"] for c in self.clients),
            **self._fault_counts(self.faults),
            **_reconnect_counts(self.reconnects),
        }

    def per_room(self, publishers: list[Json]) -> dict[str, Json]:
        rooms = sorted({c["room"] for c in self.clients})
        return {
            room: {
                "members": sum(c["room"] == room for c in self.clients),
                "published": sum(p["sent"].get(room, 0) for p in publishers),
                "acked": sum(len(p["acked"].get(room, [])) for p in publishers),
                "refused": sum(len(p["refused"].get(room, [])) for p in publishers),
                "received": sum(c["received"] for c in self.clients if c["room"] == room),
                **self._fault_counts([f for f in self.faults if f.room == room]),
            }
            for room in rooms
        }

    def in_window(self, window: Window) -> Json:
        faults = [f for f in self.faults if window.holds(f.publisher, f.seq)]
        reconnects = [r for r in self.reconnects if window.started <= r["t"] < window.ended]
        return {**self._fault_counts(faults), **_reconnect_counts(reconnects)}

    def examples(self) -> dict[str, list[Json]]:
        """The first few faults of each kind, to start an investigation from."""
        found: dict[str, list[Json]] = {}
        for fault in self.faults:
            bucket = found.setdefault(fault.kind, [])
            if len(bucket) < _EXAMPLES:
                bucket.append({k: v for k, v in _fields(fault).items() if v is not None})
        return found

    @staticmethod
    def _fault_counts(faults: list[Fault]) -> Json:
        counts = Counter(f.kind for f in faults)
        return {kind: counts[kind] for kind in _KINDS}


def published_in(window: Window, publishers: list[Json]) -> Json:
    """What the publishers sent in ``window`` (every room), and how each publish ended."""
    counts: Counter[str] = Counter()
    for publisher in publishers:
        p = str(publisher["index"])
        for outcome in ("acked", "refused"):
            for seqs in publisher[outcome].values():
                counts[outcome] += sum(window.holds(p, s) for s in seqs)
        for sent in publisher["sent"].values():
            counts["published"] += sum(window.holds(p, s) for s in range(1, sent + 1))
    return {key: counts[key] for key in ("published", "acked", "refused")}


def _fields(fault: Fault) -> Json:
    return {name: getattr(fault, name) for name in Fault.__slots__}


def _reconnect_counts(reconnects: list[Json]) -> Json:
    recovered = sum(bool(r["recovered"]) for r in reconnects)
    return {
        "reconnects": len(reconnects),
        "recovered": recovered,
        "not_recovered": len(reconnects) - recovered,
    }


def tally(publishers: list[Json], receivers: list[Json]) -> Tally:
    """Every receiver against what the publishers to its room had acked and refused."""
    result = Tally()
    for receiver in receivers:
        faults = _receiver_faults(receiver, publishers)
        result.faults += faults
        for reconnect in receiver["reconnects"]:
            result.reconnects.append({**reconnect, "client": receiver["client"]})
        result.clients.append(_client_row(receiver, faults))
    return result


def _receiver_faults(receiver: Json, publishers: list[Json]) -> list[Fault]:
    room, client = receiver["room"], receiver["client"]
    throughout = all(r["recovered"] for r in receiver["reconnects"])
    faults: list[Fault] = []
    for publisher in publishers:
        p = str(publisher["index"])
        got: list[int] = receiver["got"].get(p, [])
        acked = set(publisher["acked"].get(room, []))
        refused = set(publisher["refused"].get(room, []))
        seen: set[int] = set()
        highest = 0
        for s in got:
            if s in seen:
                faults.append(Fault("duplicated", client, room, p, s))
                continue
            seen.add(s)
            if s < highest:
                late = "out_of_order" if s in acked else "refused_late"
                faults.append(Fault(late, client, room, p, s, after=highest))
            highest = max(highest, s)
            if s in refused:
                faults.append(Fault("refused_but_delivered", client, room, p, s))
            elif s not in acked:
                faults.append(Fault("unanswered_delivered", client, room, p, s))
        if throughout:
            faults += [Fault("lost", client, room, p, s) for s in sorted(acked - seen)]
    return faults


def _client_row(receiver: Json, faults: list[Fault]) -> Json:
    counts = Counter(f.kind for f in faults)
    reconnects = receiver["reconnects"]
    return {
        "client": receiver["client"],
        "room": receiver["room"],
        "received": sum(len(v) for v in receiver["got"].values()),
        **{kind: counts[kind] for kind in _KINDS},
        "drops": receiver["drops"],
        **_reconnect_counts(reconnects),
        "in_room_throughout": all(r["recovered"] for r in reconnects),
    }
