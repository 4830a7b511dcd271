"""Recoverable session state, kept in the compacted ``<channel>.sessions`` topic.

Keys: a session's pid; ``__epoch__`` (the events topic's epoch, see `offsets`);
``__node__:<host_id>`` (a node's heartbeat, to tell a session whose node died from one
still in use). Values are UTF-8 JSON; a tombstone (no value) ends a session.

A session restored on a node is first claimed there: a record carrying, in ``claimed``,
the offset of the record its claimant judged. Every node's table accepts the first claim
to follow that record and rejects the others, so all agree on the one node that won.
"""

from __future__ import annotations

import json
import re
import sys
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import fastjson
from .codec import parse_json
from .errors import RecordDecodeError

__all__ = [
    "EPOCH_KEY",
    "NODE_PREFIX",
    "Session",
    "SessionTable",
    "decode_session",
    "encode_session",
]

#: How long a session may still be on its way to Kafka after its pid was minted: a claim
#: of an unknown pid minted that recently waits for it (recovery.py), unless the pid's
#: session ended within twice as long (`SessionTable.ended_lately`).
ARRIVAL_S = 3.0
EPOCH_KEY = b"__epoch__"
NODE_PREFIX = b"__node__:"
_VERSION = 1
# Every offset string carries the epoch; offsets.decode reads only these.
_EPOCH = re.compile(r"[0-9a-z]{1,32}")
_OFFSET_END = 2**63  # Kafka offsets and timestamps are signed 64-bit
_TEXT_FIELDS = ("pid", "sid", "namespace", "epoch", "owner")
_FIELDS = frozenset({*_TEXT_FIELDS, "rooms", "data", "start", "disconnected_at", "claimed"})


@dataclass(frozen=True, slots=True)
class Session:
    """What a reconnecting client gets back, and where its event stream began.

    ``start`` is an ``array("q")``, whatever sequence it was made with: 8 bytes a
    partition, where a tuple of ints takes 36. (`SessionTable` keeps sessions as rows,
    not as these objects.)
    """

    pid: str
    sid: str
    namespace: str
    rooms: tuple[str, ...]
    data: Any
    #: The events topic's position where the session began, one offset a partition.
    start: Sequence[int]
    epoch: str
    owner: str
    disconnected_at: float | None = None
    #: On a claim record only: the offset of the session record its claimant judged.
    claimed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.start, array):
            object.__setattr__(self, "start", array("q", self.start))


def encode_session(session: Session) -> bytes:
    # Field by field: `dataclasses.asdict` copies deeply, and a mass reconnect writes two
    # records a client (it was 1-2% of a survivor's CPU).
    record = {
        "v": _VERSION,
        "pid": session.pid,
        "sid": session.sid,
        "namespace": session.namespace,
        "rooms": session.rooms,
        "data": session.data,
        "start": list(session.start),
        "epoch": session.epoch,
        "owner": session.owner,
        "disconnected_at": session.disconnected_at,
    }
    if session.claimed is not None:  # a plain record reads as it always did
        record["claimed"] = session.claimed
    # NaN and Infinity as null, as JavaScript writes them: the standard library wrote
    # them as no reader takes them (RecoveringAsyncServer keeps only data it reads back).
    return fastjson.dumpb(record)


def decode_session(value: bytes, pid: str | None = None) -> Session:
    """A session record's value, every field checked: `RecordDecodeError` if any is off.

    ``pid``: the record's key, which it must name; the session holds that string (a
    table keeps one copy of each pid, not one per record)."""
    return _session(_decode_row(value, pid))


#: A session as `SessionTable` keeps it: its fields in `Session`'s order in an exact tuple
#: of strings, numbers, bytes and None (``start`` packed, ``data`` as JSON when it is a
#: container), which CPython's collector stops tracking once it has looked at it. A node
#: keeps every session of the cluster; as objects, every full collection walked them all
#: (40 ms of the event loop for 200,000 here).
_Row = tuple[Any, ...]
_PID, _OWNER, _LEFT_AT, _CLAIMED = 0, 7, 8, 9


def _decode_row(value: bytes, pid: str | None) -> _Row:
    raw = parse_json(value)
    if not isinstance(raw, dict) or raw.pop("v", None) != _VERSION:
        raise RecordDecodeError("not a session record of version 1")
    if not raw.keys() <= _FIELDS or not all(type(raw.get(f)) is str for f in _TEXT_FIELDS):
        raise RecordDecodeError("malformed session record: unknown field or missing text")
    rooms, start, left_at = raw.get("rooms"), raw.get("start"), raw.get("disconnected_at")
    if not (type(rooms) is list and all(type(room) is str for room in rooms)):
        raise RecordDecodeError("malformed session record: rooms must be a list of strings")
    if not (type(start) is list and all(_is_offset(offset) for offset in start)):
        raise RecordDecodeError("malformed session record: start must be a list of offsets")
    claimed = raw.get("claimed")
    if claimed is not None and not _is_offset(claimed):
        raise RecordDecodeError("malformed session record: claimed must be an offset")
    if pid is not None and raw["pid"] != pid:
        raise RecordDecodeError(f"session {raw['pid']!r} under the key {pid!r}")
    data = raw.get("data")
    return (
        raw["pid"] if pid is None else pid,
        raw["sid"],
        # Interned: every session of a node has its owner's, and of the topic its epoch.
        sys.intern(raw["namespace"]),
        tuple(rooms),
        _json(data) if isinstance(data, dict | list) else data,
        array("q", start).tobytes(),
        sys.intern(raw["epoch"]),
        sys.intern(raw["owner"]),
        None if left_at is None else _unix_time(left_at),
        claimed,
    )


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _session(row: _Row) -> Session:
    pid, sid, namespace, rooms, data, packed, epoch, owner, left_at, claimed = row
    start = array("q")
    start.frombytes(packed)
    if type(data) is bytes:  # a container, kept as JSON
        data = parse_json(data)
    return Session(pid, sid, namespace, rooms, data, start, epoch, owner, left_at, claimed)


def _is_offset(value: Any) -> bool:
    return type(value) is int and 0 <= value < _OFFSET_END


def _unix_time(value: Any) -> float:
    """Seconds as a float, or `RecordDecodeError`: `expired` subtracts it from now."""
    if type(value) not in (int, float):
        raise RecordDecodeError(f"malformed session record: {value!r} is not a time")
    try:
        return float(value)
    except OverflowError as exc:  # an integer beyond any float
        raise RecordDecodeError("malformed session record: time out of range") from exc


class _Sessions(Mapping[str, Session]):
    """The table's sessions by pid, each made from its row when asked for."""

    def __init__(self, rows: dict[str, _Row]) -> None:
        self._rows = rows

    def __getitem__(self, pid: str) -> Session:
        return _session(self._rows[pid])

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


class SessionTable:
    """This node's view of the sessions topic, fed record by record in offset order."""

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        #: Every live session of the cluster, by pid (read-only: `apply` changes it).
        self.sessions: Mapping[str, Session] = _Sessions(self._rows)
        #: The offset of each session's record, the one a claim of it must name.
        self.offsets: dict[str, int] = {}
        self.epoch: str | None = None
        self.heartbeats: dict[str, float] = {}
        #: When each session marked left was left, and how many sessions each node owns:
        #: what `expired` looks at instead of every session (a node may hold millions).
        self._left: dict[str, float] = {}
        self._owned: dict[str, int] = {}
        #: Sessions whose end was written lately, by pid: when (oldest first).
        self._ended: dict[str, float] = {}

    def apply(
        self, key: bytes | None, value: bytes | None, timestamp_ms: int, offset: int = -1
    ) -> Session | None:
        """Fold one record in. A malformed record raises `RecordDecodeError` and changes
        nothing: any key, any value, whoever wrote it.

        A session record is rejected unless it is the first claim of the pid's record
        (``claimed`` names its offset) or, without a claim, comes from the session's
        owner: the session it left in place is returned. Its owner writes it again, as
        compaction could otherwise keep the rejected record alone. ``offset`` is the
        record's own (-1 where unknown: no claim can name it).
        """
        if not key:
            raise RecordDecodeError("session record without a key")
        if key == EPOCH_KEY:
            self.epoch = _decode_epoch(value)
        elif key.startswith(NODE_PREFIX):
            host_id = _text(key[len(NODE_PREFIX) :])
            if value is None:  # a node gone for good, forgotten (`forgotten_nodes`)
                self.heartbeats.pop(host_id, None)
            else:
                self.heartbeats[host_id] = _heartbeat_time(timestamp_ms)
        elif value is None:
            pid = _text(key)
            self._put(pid, None)
            self._note_end(pid, timestamp_ms / 1000)
        else:
            pid = _text(key)
            current = self._rows.get(pid)
            row = _decode_row(value, pid if current is None else current[_PID])
            if not self._accepts(row, current):
                return None if current is None else _session(current)
            self._put(row[_PID], row)
            self.offsets[row[_PID]] = offset
        return None

    def _put(self, pid: str, row: _Row | None) -> None:
        """Set (or, with None, end) ``pid``'s session, and what `expired` looks at."""
        old = self._rows.pop(pid, None) if row is None else self._rows.get(pid)
        if old is not None:
            if (owned := self._owned[old[_OWNER]] - 1) > 0:
                self._owned[old[_OWNER]] = owned
            else:
                del self._owned[old[_OWNER]]
        if row is None:
            self.offsets.pop(pid, None)
            self._left.pop(pid, None)
            return
        self._rows[pid] = row
        self._owned[row[_OWNER]] = self._owned.get(row[_OWNER], 0) + 1
        if row[_LEFT_AT] is None:
            self._left.pop(pid, None)
        else:
            self._left[pid] = row[_LEFT_AT]

    def ended_lately(self, pid: str) -> bool:
        """Whether ``pid``'s session ended within the last 2 x `ARRIVAL_S` seconds: a claim
        of it (a client reconnecting after it left on purpose, say) is not kept waiting
        for a session that will not come."""
        ended = self._ended.get(pid)
        return ended is not None and time.time() - ended < 2 * ARRIVAL_S

    def _note_end(self, pid: str, at: float) -> None:
        """Remember an end written at ``at`` while it is recent; forget those that are not
        (the end of the sessions topic's past, read at start-up, never enters)."""
        now = time.time()
        if now - at < 2 * ARRIVAL_S:
            self._ended.pop(pid, None)
            self._ended[pid] = at
        ended = self._ended
        while ended and now - ended[oldest := next(iter(ended))] >= 2 * ARRIVAL_S:
            del ended[oldest]

    def _accepts(self, row: _Row, current: _Row | None) -> bool:
        if row[_CLAIMED] is not None:
            # Where compaction removed the claimed record, no claim of it stands: never
            # a loser's, though a node reading from the start may miss the winner's.
            return bool(self.offsets.get(row[_PID]) == row[_CLAIMED])
        return current is None or bool(current[_OWNER] == row[_OWNER])

    def offset_of(self, session: Session) -> int | None:
        """The offset a claim of ``session`` names, while it is still its pid's latest."""
        if self.sessions.get(session.pid) != session:
            return None
        return self.offsets.get(session.pid)

    def node_alive(self, host_id: str, stale_after: float) -> bool:
        seen = self.heartbeats.get(host_id)
        return seen is not None and time.time() - seen < stale_after

    def expired(self, now: float, window: float, stale_after: float) -> list[Session]:
        """Sessions no client can claim any more: past the window since they were left.

        A session still marked connected counts as left at its node's last heartbeat,
        once that heartbeat is stale (the node died without a word). Only sessions marked
        left are looked at (`left_past`), and every session only once a node that owns
        some is dead past the window (`dead_owners`, `connected_of`): its sessions end
        then, all together.
        """
        pids = [pid for pid, _ in self.left_past(now, window)]
        if dead := self.dead_owners(now, window, stale_after):
            pids += self.connected_of(dead, list(self._rows))
        return [_session(self._rows[pid]) for pid in pids]

    def left_past(self, now: float, window: float) -> list[tuple[str, str]]:
        """(pid, owner) of the sessions marked left more than ``window`` ago."""
        rows = self._rows
        return [
            (pid, rows[pid][_OWNER])
            for pid, left_at in self._left.items()
            if now - left_at > window
        ]

    def dead_owners(self, now: float, window: float, stale_after: float) -> set[str]:
        """Nodes that own sessions and were last heard of, stale, more than ``window`` ago:
        every session of theirs still marked connected has expired. (A node not heard of
        yet, or heard of lately, is alive.)"""
        dead = set()
        for owner in self._owned:
            seen = self.heartbeats.get(owner)
            if seen is not None and now - seen >= stale_after and now - seen > window:
                dead.add(owner)
        return dead

    def forgotten_nodes(self, now: float, after: float) -> list[str]:
        """Nodes last heard of more than ``after`` ago that own no session: their
        heartbeats can go. Every start of a node is a new one, so a cluster that restarts
        its nodes would otherwise keep one heartbeat per start, on every node, for good."""
        owned = self._owned
        return [
            host_id
            for host_id, seen in self.heartbeats.items()
            if now - seen > after and host_id not in owned
        ]

    def connected_of(self, owners: set[str], pids: Iterable[str]) -> list[str]:
        """Of ``pids``, those of sessions still marked connected, owned by ``owners``."""
        rows = self._rows
        return [
            pid
            for pid in pids
            if (row := rows.get(pid)) is not None
            and row[_LEFT_AT] is None
            and row[_OWNER] in owners
        ]


def _text(key: bytes) -> str:
    try:
        return key.decode()
    except UnicodeDecodeError as exc:
        raise RecordDecodeError(f"session record key {key!r} is not UTF-8") from exc


def _heartbeat_time(timestamp_ms: int) -> float:
    """The record's timestamp in seconds; -1 (Kafka's "none") tells nothing, so refused."""
    if type(timestamp_ms) is not int or not 0 <= timestamp_ms < _OFFSET_END:
        raise RecordDecodeError(f"heartbeat without a usable timestamp ({timestamp_ms!r})")
    return timestamp_ms / 1000


def _decode_epoch(value: bytes | None) -> str:
    raw = parse_json(value) if value is not None else None
    epoch = raw.get("epoch") if isinstance(raw, dict) else None
    if not (isinstance(epoch, str) and _EPOCH.fullmatch(epoch)):
        raise RecordDecodeError("malformed epoch record")
    return epoch
