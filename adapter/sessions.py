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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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

    Every node keeps every live session of the cluster (`SessionTable`), so its size is
    paid once per connection per node: ``start`` is kept packed, 8 bytes a partition (a
    tuple of ints took 36: 1.3 kB of a session's 2.6 at 48 partitions; `docs/scaling.md`).
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
    return json.dumps(record, separators=(",", ":")).encode()


def decode_session(value: bytes, pid: str | None = None) -> Session:
    """A session record's value, every field checked: `RecordDecodeError` if any is off.

    ``pid``: the record's key, which it must name; the session holds that string (a
    table keeps one copy of each pid, not one per record)."""
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
    return Session(
        raw["pid"] if pid is None else pid,
        raw["sid"],
        # Interned: every session of a node has its owner's, and of the topic its epoch.
        sys.intern(raw["namespace"]),
        epoch=sys.intern(raw["epoch"]),
        owner=sys.intern(raw["owner"]),
        rooms=tuple(rooms),
        data=raw.get("data"),
        start=array("q", start),
        disconnected_at=None if left_at is None else _unix_time(left_at),
        claimed=claimed,
    )


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


class SessionTable:
    """This node's view of the sessions topic, fed record by record in offset order."""

    def __init__(self) -> None:
        #: Every live session of the cluster, by pid: change it through `apply` only.
        self.sessions: dict[str, Session] = {}
        #: The offset of each session's record, the one a claim of it must name.
        self.offsets: dict[str, int] = {}
        self.epoch: str | None = None
        self.heartbeats: dict[str, float] = {}
        #: When each session marked left was left, and how many sessions each node owns:
        #: what `expired` looks at instead of every session (a node may hold millions).
        self._left: dict[str, float] = {}
        self._owned: dict[str, int] = {}

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
            self.heartbeats[host_id] = _heartbeat_time(timestamp_ms)
        elif value is None:
            self._put(_text(key), None)
        else:
            pid = _text(key)
            current = self.sessions.get(pid)
            session = decode_session(value, pid if current is None else current.pid)
            if not self._accepts(session):
                return current
            self._put(session.pid, session)
            self.offsets[session.pid] = offset
        return None

    def _put(self, pid: str, session: Session | None) -> None:
        """Set (or, with None, end) ``pid``'s session, and what `expired` looks at."""
        old = self.sessions.pop(pid, None) if session is None else self.sessions.get(pid)
        if old is not None:
            if (owned := self._owned[old.owner] - 1) > 0:
                self._owned[old.owner] = owned
            else:
                del self._owned[old.owner]
        if session is None:
            self.offsets.pop(pid, None)
            self._left.pop(pid, None)
            return
        self.sessions[pid] = session
        self._owned[session.owner] = self._owned.get(session.owner, 0) + 1
        if session.disconnected_at is None:
            self._left.pop(pid, None)
        else:
            self._left[pid] = session.disconnected_at

    def _accepts(self, session: Session) -> bool:
        if session.claimed is not None:
            # Where compaction removed the claimed record, no claim of it stands: never
            # a loser's, though a node reading from the start may miss the winner's.
            return self.offsets.get(session.pid) == session.claimed
        current = self.sessions.get(session.pid)
        return current is None or current.owner == session.owner

    def offset_of(self, session: Session) -> int | None:
        """The offset a claim of ``session`` names, while it is still its pid's latest."""
        if self.sessions.get(session.pid) is not session:
            return None
        return self.offsets.get(session.pid)

    def node_alive(self, host_id: str, stale_after: float) -> bool:
        seen = self.heartbeats.get(host_id)
        return seen is not None and time.time() - seen < stale_after

    def expired(self, now: float, window: float, stale_after: float) -> list[Session]:
        """Sessions no client can claim any more: past the window since they were left.

        A session still marked connected counts as left at its node's last heartbeat,
        once that heartbeat is stale (the node died without a word). Only sessions marked
        left are looked at, and the sessions of a dead node once its own have passed the
        window (every session then, once: its tombstones end them all).
        """
        out = [self.sessions[pid] for pid, left_at in self._left.items() if now - left_at > window]
        dead = set()
        for owner in self._owned:
            seen = self.heartbeats.get(owner)
            # Not heard of yet, or heard of lately: alive, leave its sessions alone.
            if seen is not None and now - seen >= stale_after and now - seen > window:
                dead.add(owner)
        if dead:
            out += [
                session
                for session in self.sessions.values()
                if session.disconnected_at is None and session.owner in dead
            ]
        return out


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
