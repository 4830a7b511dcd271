"""The gateway's own client protocol: ``join``, ``leave`` and ``publish``, each with an ack.

Every reply is ``{"ok": true}`` or ``{"ok": false, "error": "..."}``; a malformed payload
gets an error reply, never an exception.
"""

from __future__ import annotations

from typing import Any

import socketio

from socketio_kafka.adapter import SocketIOKafkaError

__all__ = ["MAX_NAME_LENGTH", "RESERVED_EVENTS", "register"]

MAX_NAME_LENGTH = 256
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)

Reply = dict[str, Any]


class _BadRequest(ValueError):
    """A client payload the protocol refuses; its message goes back in the ack."""


def register(sio: socketio.AsyncServer, namespace: str = "/") -> None:
    """Install the ``join``/``leave``/``publish`` handlers on ``namespace``."""

    async def join(sid: str, *args: Any) -> Reply:
        return await _reply(_enter(sio, sid, namespace, args))

    async def leave(sid: str, *args: Any) -> Reply:
        return await _reply(_leave(sio, sid, namespace, args))

    async def publish(sid: str, *args: Any) -> Reply:
        return await _reply(_publish(sio, sid, namespace, args))

    sio.on("join", join, namespace=namespace)
    sio.on("leave", leave, namespace=namespace)
    sio.on("publish", publish, namespace=namespace)


async def _reply(action: Any) -> Reply:
    try:
        await action
    except _BadRequest as exc:
        return {"ok": False, "error": str(exc)}
    except SocketIOKafkaError as exc:
        return {"ok": False, "error": f"broker: {exc}"}
    return {"ok": True}


async def _enter(
    sio: socketio.AsyncServer, sid: str, namespace: str, args: tuple[Any, ...]
) -> None:
    room = _room(_payload(args))
    try:
        await sio.enter_room(sid, room, namespace=namespace)
    except ValueError as exc:  # python-socketio refuses to let a socket enter another's sid room
        raise _BadRequest(str(exc)) from exc


async def _leave(
    sio: socketio.AsyncServer, sid: str, namespace: str, args: tuple[Any, ...]
) -> None:
    await sio.leave_room(sid, _room(_payload(args)), namespace=namespace)


async def _publish(
    sio: socketio.AsyncServer, sid: str, namespace: str, args: tuple[Any, ...]
) -> None:
    payload = _payload(args)
    room = _room(payload)
    event = _name(payload, "event")
    if event in RESERVED_EVENTS:
        raise _BadRequest(f"event name {event!r} is reserved")
    if "data" not in payload:
        raise _BadRequest("'data' is required")
    await sio.emit(event, payload["data"], room=room, skip_sid=sid, namespace=namespace)


def _payload(args: tuple[Any, ...]) -> dict[str, Any]:
    if len(args) != 1 or not isinstance(args[0], dict):
        raise _BadRequest("expected one JSON object as the payload")
    return args[0]


def _room(payload: dict[str, Any]) -> str:
    return _name(payload, "room")


def _name(payload: dict[str, Any], field: str) -> str:
    value = payload.get(field)
    if not isinstance(value, str) or not value:
        raise _BadRequest(f"{field!r} must be a non-empty string")
    if len(value) > MAX_NAME_LENGTH:
        raise _BadRequest(f"{field!r} longer than {MAX_NAME_LENGTH} characters")
    return value
