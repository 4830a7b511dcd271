"""Recoverable session state, kept in the compacted ``<channel>.sessions`` topic.

Keys: a session's pid; ``__epoch__`` (the events topic's epoch, see `offsets`);
``__node__:<host_id>`` (a node's heartbeat, to tell a session whose node died from one
still in use). Values are UTF-8 JSON; a tombstone (no value) ends a session.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

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


@dataclass(frozen=True, slots=True)
class Session:
    """What a reconnecting client gets back, and where its event stream began."""

    pid: str
    sid: str
    namespace: str
    rooms: tuple[str, ...]
    data: Any
    start: tuple[int, ...]
    epoch: str
    owner: str
    disconnected_at: float | None = None


def encode_session(session: Session) -> bytes:
    return json.dumps({"v": _VERSION, **asdict(session)}, separators=(",", ":")).encode()


def decode_session(value: bytes) -> Session:
    try:
        raw = json.loads(value)
        if raw.pop("v") != _VERSION:
            raise RecordDecodeError("unsupported session version")
        session = Session(**raw)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RecordDecodeError(f"malformed session record: {exc!r}") from exc
    if not (
        isinstance(session.pid, str)
        and isinstance(session.sid, str)
        and isinstance(session.namespace, str)
        and all(isinstance(r, str) for r in session.rooms)
        and all(isinstance(o, int) for o in session.start)
    ):
        raise RecordDecodeError("malformed session record")
    return replace(session, rooms=tuple(session.rooms), start=tuple(session.start))


class SessionTable:
    """This node's view of the sessions topic, fed record by record in offset order."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.epoch: str | None = None
        self.heartbeats: dict[str, float] = {}

    def apply(self, key: bytes | None, value: bytes | None, timestamp_ms: int) -> None:
        if key is None:
            raise RecordDecodeError("session record without a key")
        if key == EPOCH_KEY:
            self.epoch = self._epoch(value)
        elif key.startswith(NODE_PREFIX):
            self.heartbeats[key[len(NODE_PREFIX) :].decode()] = timestamp_ms / 1000
        elif value is None:
            self.sessions.pop(key.decode(errors="replace"), None)
        else:
            session = decode_session(value)
            self.sessions[session.pid] = session

    def node_alive(self, host_id: str, stale_after: float) -> bool:
        seen = self.heartbeats.get(host_id)
        return seen is not None and time.time() - seen < stale_after

    def expired(self, now: float, window: float, stale_after: float) -> list[Session]:
        """Sessions no client can claim any more: past the window since they were left.

        A session still marked connected counts as left at its node's last heartbeat,
        once that heartbeat is stale (the node died without a word).
        """
        out = []
        for session in self.sessions.values():
            left_at = session.disconnected_at
            if left_at is None:
                seen = self.heartbeats.get(session.owner)
                if seen is None or now - seen < stale_after:
                    continue  # alive, or not heard of yet: leave it alone
                left_at = seen
            if now - left_at > window:
                out.append(session)
        return out

    @staticmethod
    def _epoch(value: bytes | None) -> str:
        try:
            epoch = json.loads(value or b"")["epoch"]
        except (ValueError, TypeError, KeyError) as exc:
            raise RecordDecodeError("malformed epoch record") from exc
        if not isinstance(epoch, str):
            raise RecordDecodeError("malformed epoch record")
        return epoch
