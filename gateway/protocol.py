"""The gateway's own client protocol: ``join``, ``leave``, ``publish`` and ``refresh`` (a
fresh token, `identity`), each with an ack.

Every reply is ``{"ok": true}`` (a publish's with its correlation ``id`` and, on the Kafka
adapter, ``repeat``) or ``{"ok": false, "error": "..."}``; a malformed payload gets an error
reply, never an exception.

A publish whose ``id`` the client chose is produced once per client session: a repeat of
an accepted id within the window is acked with ``"repeat": true`` and not produced again,
on whichever node the session is recovered (`socketio_kafka.adapter.publishes`).

A socket's requests act in the order it sent them, each in its turn (`Turns`, by sid):
each is checked as it comes, and an async ``--authorize`` hook answers in any order.
A publish's turn ends as its record takes its room's turn, so publishes still overlap
their round trips to Kafka.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from socketio_kafka.adapter import (
    AsyncKafkaManager,
    BrokerUnavailable,
    PayloadError,
    PublishError,
    RecoveringAsyncServer,
    SocketIOKafkaError,
)
from socketio_kafka.adapter.publishes import MAX_ID_LENGTH, Turn, publisher_of, sessionless
from socketio_kafka.adapter.routing import partition_of
from socketio_kafka.adapter.turns import Holding, Turns

from .errors import TokenRefused
from .limits import ROOMS, NodeLimits
from .permissions import Action, Gate

__all__ = [
    "EVENTS",
    "MAX_CORRELATION_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "RESERVED_EVENTS",
    "register",
]

logger = logging.getLogger("socketio_kafka.gateway")

MAX_NAME_LENGTH = 256
#: A publish's ``id``: what a client may choose as its correlation id.
MAX_CORRELATION_ID_LENGTH = MAX_ID_LENGTH
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
#: The protocol's own events, which `register` installs.
EVENTS = frozenset({"join", "leave", "publish", "refresh"})

Reply = dict[str, Any]


class _CorrelationIds:
    """Ids no other process makes: a random half, drawn afresh in a forked child, and a
    count. A uuid4 each cost 3.8 µs, about 2% of a publish's CPU on the node taking it."""

    def __init__(self) -> None:
        self.renew()
        os.register_at_fork(after_in_child=self.renew)

    def renew(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):016x}"


_CORRELATION_IDS = _CorrelationIds()


#: A request's action: given the socket's place in its line, what its ack adds, if anything.
_Action = Callable[
    [socketio.AsyncServer, str, str, tuple[Any, ...], Holding], Awaitable[Reply | None]
]


class _BadRequest(ValueError):
    """A client payload the protocol refuses; its message goes back in the ack."""


def register(
    sio: socketio.AsyncServer, namespace: str = "/", *, limits: NodeLimits | None = None
) -> None:
    """Install the ``join``/``leave``/``publish`` handlers on ``namespace``; ``limits``
    bounds the rooms a socket may join."""

    # Each socket's place in line is taken as python-socketio starts its handler, before
    # any await: handlers start in the order the packets came.
    order = Turns()

    def in_turn(action: _Action) -> Callable[..., Awaitable[Reply]]:
        async def handle(sid: str, *args: Any) -> Reply:
            place = order.turn(sid.encode())
            return await _reply(action(sio, sid, namespace, args, place), place)

        return handle

    actions: dict[str, _Action] = {
        "join": functools.partial(_enter, limits=limits),
        "leave": _leave,
        "publish": _publish,
        "refresh": _refresh,
    }
    for event, action in actions.items():
        sio.on(event, in_turn(action), namespace=namespace)


async def _reply(action: Awaitable[Reply | None], place: Holding) -> Reply:
    """The request's ack; its turn ends with it, if it did not end before (a publish's
    ends as its record takes its room's turn)."""
    try:
        extra = await action
    except (_BadRequest, PayloadError) as exc:
        return {"ok": False, "error": str(exc)}
    except SocketIOKafkaError as exc:
        return {"ok": False, "error": f"broker: {exc}"}
    finally:
        place.end()
    return {"ok": True} if extra is None else {"ok": True, **extra}


async def _enter(
    sio: socketio.AsyncServer,
    sid: str,
    namespace: str,
    args: tuple[Any, ...],
    place: Holding,
    *,
    limits: NodeLimits | None,
) -> None:
    room = _room(_payload(args))
    await _authorize(sio, sid, namespace, room, "join")
    await place.begin()
    if not sio.manager.is_connected(sid, namespace):
        # Gone while it was authorized: python-socketio would make the room, then fail to
        # put the socket in it, and leave the room behind for good.
        raise _BadRequest("the connection is closed")
    if limits is not None:
        rooms = sio.rooms(sid, namespace=namespace)
        if room not in rooms and not limits.allow_room(len(rooms) - 1):  # its own sid room
            raise _BadRequest(limits.refuse(ROOMS, sid))
    try:
        await sio.enter_room(sid, room, namespace=namespace)
    except ValueError as exc:  # python-socketio refuses to let a socket enter another's sid room
        raise _BadRequest(str(exc)) from exc


async def _leave(
    sio: socketio.AsyncServer, sid: str, namespace: str, args: tuple[Any, ...], place: Holding
) -> None:
    room = _room(_payload(args))
    await place.begin()
    await sio.leave_room(sid, room, namespace=namespace)


async def _publish(
    sio: socketio.AsyncServer, sid: str, namespace: str, args: tuple[Any, ...], place: Holding
) -> Reply:
    payload = _payload(args)
    room = _room(payload)
    event = _name(payload, "event")
    if event in RESERVED_EVENTS:
        raise _BadRequest(f"event name {event!r} is reserved")
    if "data" not in payload:
        raise _BadRequest("'data' is required")
    await _authorize(sio, sid, namespace, room, "publish")
    await place.begin()
    cid = _correlation_id(payload)
    manager = sio.manager
    ledger = manager.publishes if isinstance(manager, AsyncKafkaManager) else None
    chosen = payload.get("id") is not None and ledger is not None
    turn = _turn(sio, sid, namespace, room, cid) if chosen else None
    # Outbound topics name who published (docs/wire-format.md: sio.sub).
    subject = sio.subject(sid, namespace) if _is_gate(sio) else None

    async def produce() -> None:
        # The socket's next request goes on once this record has its room's turn, which
        # the emit takes before it first awaits.
        place.end()
        # The manager's own emit: python-socketio's drops arguments it does not know.
        await manager.emit(
            event,
            payload["data"],
            namespace,
            room=room,
            skip_sid=sid,
            correlation_id=cid,
            publisher=None if turn is None else turn.publisher,
            subject=subject,
        )

    if turn is None or ledger is None:
        await produce()
        new = True
    else:
        new = await ledger.publish(turn, produce)
    logger.debug(
        "published %r to room %r from %s, correlation id %s%s",
        event,
        room,
        sid,
        cid,
        "" if new else " (a repeat: not produced again)",
    )
    # Only a node that checks ids says whether a publish repeats one (not on Redis).
    return {"id": cid} if ledger is None else {"id": cid, "repeat": not new}


def _turn(sio: socketio.AsyncServer, sid: str, namespace: str, room: str, cid: str) -> Turn:
    """The session's turn for a publish with its own id: its recovery pid names it (its
    sid, without recovery), its connection is the Engine.IO one. `PublishError` when it
    is handled after its session ended (`RecoveringAsyncServer.publishes_as`)."""
    manager: AsyncKafkaManager = sio.manager
    if not manager.ready:  # its partitions are not known yet
        raise BrokerUnavailable("Kafka is not ready yet; retry with the same id")
    if isinstance(sio, RecoveringAsyncServer):
        name = sio.publishes_as(sid, namespace)
    else:
        name = sessionless(sid)
    if name is None:  # handled after its session ended here
        raise PublishError("the connection is closed")
    publisher = publisher_of(name)
    partition = partition_of(f"{namespace}#{room}".encode(), manager.partitions)
    connection = manager.eio_sid_from_sid(sid, namespace) or ""
    recovered = isinstance(sio, RecoveringAsyncServer) and sio.is_recovered(sid, namespace)
    return Turn(publisher, cid, partition, connection, recovered)


def _correlation_id(payload: dict[str, Any]) -> str:
    """The client's own ``id`` for its publish, or a new one: the ``sio.cid`` header."""
    value = payload.get("id")
    if value is None:
        return _CORRELATION_IDS.next()
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_CORRELATION_ID_LENGTH
        or not value.isprintable()
    ):
        raise _BadRequest(
            f"'id' must be a string of 1 to {MAX_CORRELATION_ID_LENGTH} printable characters"
        )
    return value


async def _authorize(
    sio: socketio.AsyncServer, sid: str, namespace: str, room: str, action: Action
) -> None:
    """On a server that checks identities (`Gate`), a room the socket's claims allow."""
    if _is_gate(sio) and not await sio.allows(sid, namespace, room, action):
        raise _BadRequest("forbidden")


#: Per server class, whether it is a `Gate`.
_GATES: dict[type, bool] = {}


def _is_gate(sio: socketio.AsyncServer) -> bool:
    """Asked once per server class: ``isinstance`` against a runtime protocol inspects
    each of its members: 8% of the publish handler's CPU when it ran for every one."""
    server_class = type(sio)
    gate = _GATES.get(server_class)
    if gate is None:
        gate = _GATES[server_class] = issubclass(server_class, Gate)
    return gate


async def _refresh(
    sio: socketio.AsyncServer, sid: str, namespace: str, args: tuple[Any, ...], place: Holding
) -> Reply:
    if not isinstance(sio, Gate):
        raise _BadRequest("tokens not checked")
    token = _payload(args).get("token")
    try:
        return {"exp": await sio.refresh(sid, namespace, token, earlier=place.begin)}
    except TokenRefused as exc:
        raise _BadRequest(str(exc)) from None


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
