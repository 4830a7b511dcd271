"""Each socket's rooms, kept by socket: python-socketio finds them by scanning every room.

`BaseManager.get_rooms` and `basic_disconnect` look at every room of a namespace to find
one socket's, and `basic_disconnect` copies the namespace's table first. A node whose 5,000
sockets are each in a room of their own holds 10,000 rooms, so every join (its session
record lists the socket's rooms, and the rooms limit counts them), every recovery and every
disconnect cost O(rooms), and a mass reconnect or a drain O(sockets x rooms). Profiled,
that scan was a third of a node's CPU while 2,000 official clients connected and joined two
rooms each. `RoomIndex` keeps the rooms a socket joined beside python-socketio's tables, so
those calls cost what the socket is in.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RoomIndex"]


class RoomIndex:
    """A mixin for a python-socketio manager (before it in the bases): the same tables and
    answers, with a socket's rooms found from the socket.

    Kept: the rooms a socket joined other than its own sid room, in the order joined (an
    idle socket has no entry). `get_rooms` lists the sid room first, then those; python-socketio
    lists them in the order the rooms were made, which no caller relies on.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._joined: dict[str, dict[str, tuple[str, ...]]] = {}

    def basic_enter_room(
        self, sid: str, namespace: str, room: str | None, eio_sid: str | None = None
    ) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        if room is None or room == sid:
            return
        joined = self._joined.setdefault(namespace, {})
        rooms = joined.get(sid, ())
        if room not in rooms:
            joined[sid] = (*rooms, room)

    def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        joined = self._joined.get(namespace)
        rooms = joined.get(sid) if joined is not None else None
        if joined is None or rooms is None or room not in rooms:
            return
        if len(rooms) > 1:
            joined[sid] = tuple(r for r in rooms if r != room)
            return
        del joined[sid]
        if not joined:
            del self._joined[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[str]:
        """The rooms ``sid`` is in, its own included."""
        table = self.rooms.get(namespace, {})  # type: ignore[attr-defined]
        own = [sid] if sid in table.get(sid, ()) else []
        return own + list(self._joined.get(namespace, {}).get(sid, ()))

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """python-socketio's, the socket's rooms taken from the index, not a scan.

        `tests/test_rooms.py` runs both on the same operations and compares every table.
        """
        table = self.rooms.get(namespace)  # type: ignore[attr-defined]
        if table is None:
            return
        candidates = (None, sid, *self._joined.get(namespace, {}).get(sid, ()))
        for room in [r for r in candidates if sid in table.get(r, ())]:
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)  # type: ignore[attr-defined]
        for pending in (self.pending_connect, self.pending_disconnect):  # type: ignore[attr-defined]
            waiting = pending.get(namespace)
            if waiting is not None and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]
