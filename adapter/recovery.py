"""Socket.IO connection state recovery over Kafka offsets, for python-socketio servers.

The protocol is socket.io's own (v4.6+), so the official JS client recovers unmodified:
the CONNECT reply carries a private session id (``pid``); every event packet to the
client carries an offset string as its last argument; a reconnecting client sends
``{"pid", "offset"}`` in its CONNECT auth and, if its session is recoverable, gets its
sid, rooms and data back, every event it missed, and the same ``pid`` (which is how the
client knows it was recovered).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import secrets
import time
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import socketio
from aiokafka.errors import KafkaError
from engineio import packet as eio_packet
from engineio.base_server import BaseServer as EngineIOBaseServer
from socketio import packet

from . import codec, offsets
from .cursor import REPLAY_BUFFER, REPLAY_BUFFER_BYTES, Replay
from .errors import BrokerUnavailable, ConfigError, PublishError
from .fanout import Held, event_packets
from .lanes import Lanes
from .manager import AsyncKafkaManager
from .outbox import SLOW_CONSUMER, Outbox
from .publishes import publisher_of, sessionless
from .rooms import RoomIndex
from .routing import Audience
from .sessions import ARRIVAL_S, Session
from .store import NODE_STALE_S

__all__ = ["OPT_OUT_KEY", "OUTCOMES", "Fresh", "RecoveringAsyncServer", "RecoveryOptions"]

logger = logging.getLogger("socketio_kafka.recovery")

#: ``{"recovery": false}`` in the CONNECT auth: no pid, no offset argument on events.
OPT_OUT_KEY = "recovery"
_REASON = EngineIOBaseServer.reason
_ACKS = (packet.ACK, packet.BINARY_ACK)
#: Disconnects after which a session is kept: the client did not mean to leave.
_KEEP = frozenset(
    {
        _REASON.PING_TIMEOUT,
        _REASON.TRANSPORT_CLOSE,
        _REASON.TRANSPORT_ERROR,
        _REASON.SERVER_DISCONNECT,
        SLOW_CONSUMER,  # cut for not reading: it recovers once it reads again
    }
)
_MAX_PID_LENGTH = 64
_RACE_WINDOW_S = 10.0
_FIRST_RETRY_S = 0.5
#: Judgments of one claim at most, when it loses to a record no connection holds.
_JUDGMENTS = 3
#: Times a replay reads on past its end because live events outran its hold, before the
#: socket is cut as reading slower than its rooms are written.
_READ_ON = 4
_MAX_RETRY_S = 5.0
#: How long a replay waits for its client to read while other replays on the node wait
#: for the room its found records take, before its socket is cut (`_paced`).
_STALL_S = 5.0
#: The node's background tasks (`AsyncKafkaManager.supervise`) that write session records.
_WRITER = "session-writer"
_RETRIER = "session-retry"


class Fresh(StrEnum):
    """Why a claim to recover a session got a fresh one: the log says the value, the
    ``reason`` label of ``socketio_kafka_recoveries_total{outcome="fresh"}`` the `label`."""

    UNKNOWN_SESSION = "unknown session"
    EPOCH_CHANGED = "the events topic has changed since (epoch)"
    CONNECTED_HERE = "its sid is connected here"
    CONNECTED_ELSEWHERE = "the session is still connected on another node"
    EXPIRED = "expired"
    BAD_OFFSET = "bad offset"
    DELETED_BY_RETENTION = "missed events were already deleted by retention"
    PAST_THE_END = "offset past the end of the topic"
    CLAIMED_ELSEWHERE = "claimed first on another node"
    #: Refused by a server that binds sessions to identities (the gateway's).
    OTHER_SUBJECT = "the session is another subject's"

    @property
    def label(self) -> str:
        return self.name.lower()


#: Every ``(outcome, reason)`` of `RecoveringAsyncServer.recoveries`: recovered; a fresh
#: session, and why; closed for the client to retry; failed mid-way (closed); refused by
#: the app's connect handler.
OUTCOMES = (
    ("recovered", ""),
    *(("fresh", reason.label) for reason in Fresh),
    ("retry", ""),
    ("failed", ""),
    ("refused", ""),
)


@dataclass(frozen=True, slots=True)
class RecoveryOptions:
    """Connection state recovery settings (Node's ``connectionStateRecovery``).

    ``skip_middlewares``: a recovered socket does not run the app's ``connect`` handler.
    Not as in Node, whose option skips ``io.use`` middlewares alone and always emits
    ``connection`` (apps there branch on ``socket.recovered``): python-socketio has no
    middlewares, so the handler is what is skipped. False: the handler runs for a
    recovered socket too (`is_recovered` tells it), its data already restored, and may
    refuse it.
    """

    max_disconnection_duration: float = 120.0
    skip_middlewares: bool = True
    replay_batch: int = 500
    replay_timeout: float = 60.0
    #: Found records the node's replays buffer at once, across every recovering session.
    replay_buffer: int = REPLAY_BUFFER
    #: And their bytes: large records reach that bound first.
    replay_buffer_bytes: int = REPLAY_BUFFER_BYTES
    #: How long an event's ack waits while the socket's session (its rooms, its data)
    #: changed and is not in Kafka yet (`RecoveringAsyncServer.session_saved`); past it the
    #: ack goes anyway, and the record is written again until Kafka takes it. 0: never.
    save_wait: float = 2.0
    #: Bytes of a session's data (as JSON) kept for recovery; larger data is not kept
    #: (logged and counted): every node keeps every session of the cluster in memory.
    max_session_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.max_disconnection_duration <= 0:
            raise ConfigError("max_disconnection_duration must be > 0")
        if (
            self.replay_batch < 1
            or self.replay_timeout <= 0
            or self.replay_buffer < 1
            or self.replay_buffer_bytes < 1
        ):
            raise ConfigError(
                "replay_batch, replay_timeout, replay_buffer and replay_buffer_bytes must be > 0"
            )
        if self.save_wait < 0:
            raise ConfigError("save_wait must be >= 0")
        if self.max_session_bytes < 0:
            raise ConfigError("max_session_bytes must be >= 0")


@dataclass(frozen=True, slots=True)
class _Claim:
    """What a client's CONNECT auth says about recovery, and the app's own auth without it."""

    auth: Any
    pid: str | None
    offset: Any
    opt_out: bool

    @classmethod
    def parse(cls, data: Any) -> _Claim:
        if not isinstance(data, dict):
            return cls(data, None, None, False)
        auth = {k: v for k, v in data.items() if k not in ("pid", "offset", OPT_OUT_KEY)}
        pid = data.get("pid")
        if not isinstance(pid, str) or not 0 < len(pid) <= _MAX_PID_LENGTH:
            pid = None
        # None when nothing is left, as python-socketio hands its connect handler None for
        # any empty auth (`if data:` in AsyncServer._handle_connect): `{}` is what its own
        # client sends without auth, and a recovered socket's handler must see the same.
        return cls(auth or None, pid, data.get("offset"), data.get(OPT_OUT_KEY) is False)


@dataclass(slots=True)
class _RoomChanges:
    """Where a replaying socket's rooms changed: the live position at each change, with
    the rooms it was in before it; ``rooms``, those it is in since the last one."""

    rooms: tuple[str, ...]
    marks: list[tuple[tuple[int, ...], tuple[str, ...]]] = field(default_factory=list)


class _Asks:
    """An outrun hold's events that ask for an ack (`Outrun.asks`), by partition, in the
    order they came: a read-on sends each at its place among the records it replays."""

    def __init__(self, asks: list[Held]) -> None:
        self._waiting: dict[int, collections.deque[Held]] = {}
        for ask in asks:
            self._waiting.setdefault(ask[0], collections.deque()).append(ask)

    def due(self, partition: int, offset: int) -> Iterator[list[Any]]:
        """Take the packets of those on ``partition`` before ``offset``."""
        waiting = self._waiting.get(partition)
        while waiting and waiting[0][1] < offset:
            yield waiting.popleft()[2]

    def rest(self) -> Iterator[list[Any]]:
        """Take the packets of all that are left."""
        for waiting in self._waiting.values():
            while waiting:
                yield waiting.popleft()[2]


@dataclass(frozen=True, slots=True)
class _Live:
    """A connected socket's recoverable session."""

    pid: str
    start: Sequence[int]  # packed, as a session's (`Session.start`)
    epoch: str


class RecoveringAsyncServer(socketio.AsyncServer):  # type: ignore[misc]  # untyped base
    """A python-socketio `AsyncServer` with connection state recovery on the Kafka manager.

    Example::

        mgr = AsyncKafkaManager("kafka://localhost:9092", channel="chat")
        sio = RecoveringAsyncServer(
            client_manager=mgr,
            async_mode="asgi",
            connection_state_recovery={"max_disconnection_duration": 120},
        )

    Without ``connection_state_recovery`` it behaves as python-socketio's `AsyncServer`,
    on any client manager.
    """

    def __init__(
        self,
        client_manager: Any,
        *,
        connection_state_recovery: RecoveryOptions | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(client_manager=client_manager, **kwargs)
        # A CONNECT (a replay) handled off Engine.IO's reader: its heartbeat goes on.
        self._lanes = Lanes(self._handle_eio_message, self._connection_closed, self._closing)
        self.eio.on("message", self._lanes.receive)
        options = connection_state_recovery
        if isinstance(options, Mapping):
            options = RecoveryOptions(**options)
        self.recovery: RecoveryOptions | None = options
        self._live: dict[tuple[str, str], _Live] = {}
        self._connecting: dict[tuple[str, str], str | None] = {}
        self._recovered: set[tuple[str, str]] = set()
        #: Sockets whose replay runs: where their rooms changed meanwhile (`_read_on`).
        self._replaying: dict[tuple[str, str], _RoomChanges] = {}
        self._dirty: set[tuple[str, str]] = set()
        #: Sessions just kept after a transport close, in case a DISCONNECT follows; in
        #: the order they were kept, so the expired ones are first.
        self._kept: dict[tuple[str, str], tuple[str, float]] = {}
        #: Sockets whose session is being written as kept (disconnected): their pid.
        self._keeping: dict[tuple[str, str], str] = {}
        #: Ends of sessions being written in the background (`_end_in_kafka`).
        self._ending: set[asyncio.Task[None]] = set()
        #: Done when the writer has written what is dirty now, and what it is writing.
        self._next_batch: asyncio.Future[None] | None = None
        self._batch: tuple[set[tuple[str, str]], asyncio.Future[None]] | None = None
        #: Session records Kafka has not taken yet, by pid (None: the session's end).
        self._unsaved: dict[str, Session | None] = {}
        #: The latest write of each pid's session in flight, so an older one that fails
        #: later is not retried over it.
        self._attempts: dict[str, int] = {}
        self._attempt_numbers = itertools.count()
        #: Claims waiting for the writes of their pid in flight here (`_written`).
        self._writing: dict[str, asyncio.Future[None]] = {}
        #: Connections accepted, ``fresh`` or ``recovered``; claims judged, by `OUTCOMES`.
        self.connects: collections.Counter[str] = collections.Counter()
        self.recoveries: collections.Counter[tuple[str, str]] = collections.Counter()
        if options is not None:
            if not isinstance(client_manager, AsyncKafkaManager):
                raise ConfigError("connection state recovery needs the AsyncKafkaManager")
            client_manager.enable_recovery(options.max_disconnection_duration)
            client_manager.shared_replays.batch = options.replay_batch
            client_manager.shared_replays.limit = options.replay_buffer
            client_manager.shared_replays.limit_bytes = options.replay_buffer_bytes
            client_manager.on_rooms_changed = self._rooms_changed

    @property
    def kafka(self) -> AsyncKafkaManager:
        manager: AsyncKafkaManager = self.manager
        return manager

    def is_recovered(self, sid: str, namespace: str = "/") -> bool:
        """Whether this socket's connection is a recovered session."""
        return (sid, namespace) in self._recovered

    def session_pid(self, sid: str, namespace: str = "/") -> str | None:
        """The recovery pid of this socket's session; None without one."""
        live = self._live.get((sid, namespace))
        return None if live is None else live.pid

    @property
    def unsaved_sessions(self) -> int:
        """Session records Kafka refused (a broker away), written again here until it takes
        them: until then other nodes may judge those sessions by an older record."""
        return len(self._unsaved)

    def publishes_as(self, sid: str, namespace: str = "/") -> str | None:
        """Who this socket's publishes are from, as exactly-once publishes name them
        (`publisher_of`): its session's pid, or its sid when it has no session (recovery
        off, or declined); None once its session ended here.

        A handler runs in a task of its own: one for an event read just before the
        connection dropped may run after the disconnect ended the session. Named by its
        sid then, its publish would be another publisher's than the resend its client
        makes once recovered, and both would go out.
        """
        pid = self.session_pid(sid, namespace)
        if pid is not None:
            return pid
        if self.recovery is None or sid in self.kafka.plain_sids:
            return sessionless(sid)
        return None

    # -- python-socketio overrides -------------------------------------------------------

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        namespace = namespace or "/"
        if self.recovery is None:
            await super()._handle_connect(eio_sid, namespace, data)
            await self._end_if_gone(eio_sid, namespace)
            return
        if self._in_namespace(eio_sid, namespace):
            await self._refuse_second_connect(eio_sid, namespace)
            return
        claim = _Claim.parse(data)
        # Before ready, the sessions table and the topic's positions are not read yet.
        ready = claim.opt_out or await self.kafka.wait_ready()
        # A namespace this node does not serve is refused below, as a fresh one would be.
        wants_recovery = claim.pid is not None and not claim.opt_out and self._serves(namespace)
        if wants_recovery and not ready:
            await self._retry_later(eio_sid, "Kafka is not ready")
            return
        if wants_recovery and await self._restore(eio_sid, namespace, claim):
            return
        if self._gone(eio_sid):
            return  # closed while it waited: its disconnect found no socket to end
        key = (eio_sid, namespace)
        # Without Kafka a new socket is served without a session to recover (no pid).
        self._connecting[key] = new_pid() if ready and not claim.opt_out else None
        try:
            await super()._handle_connect(eio_sid, namespace, claim.auth)
        finally:
            self._connecting.pop(key, None)
        await self._end_if_gone(eio_sid, namespace)

    def _serves(self, namespace: str) -> bool:
        """python-socketio's test of a namespace in its ``_handle_connect``."""
        return (
            namespace in self.handlers
            or namespace in self.namespace_handlers
            or self.namespaces == "*"
            or namespace in self.namespaces
        )

    async def _end_if_gone(self, eio_sid: str, namespace: str) -> None:
        """End a socket whose connection closed while the app's connect handler ran, as its
        disconnect would have: python-socketio registers it once the handler returns, and
        a disconnect that ran before (or stopped waiting for it: adapter/lanes.py) found it
        not connected and did nothing, leaving it in its rooms for good (and counted). Its
        client never had the CONNECT reply, so there is nothing to recover: its session
        ends."""
        if not self._gone(eio_sid):
            return
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is not None and self.manager.is_connected(sid, namespace):
            logger.info("sid %s: connection closed while it connected; ending it", sid)
            await self._handle_disconnect(eio_sid, namespace, _REASON.CLIENT_DISCONNECT)

    async def _send_packet(self, eio_sid: str, pkt: packet.Packet) -> None:
        # A recovered socket's CONNECT reply is sent past this (`_restore`).
        kind = pkt.packet_type
        if kind == packet.CONNECT and isinstance(pkt.data, dict):
            self.connects["fresh"] += 1
            if self.recovery:
                await self._on_connect_reply(eio_sid, pkt.namespace or "/", pkt.data)
        elif kind in _ACKS and self.recovery is not None and self.recovery.save_wait:
            await self._saved_in_time(eio_sid, pkt.namespace or "/")
        await super()._send_packet(eio_sid, pkt)

    async def _handle_disconnect(
        self, eio_sid: str, namespace: str | None, reason: str | None = None
    ) -> None:
        namespace = namespace or "/"
        if self.recovery is None:
            await super()._handle_disconnect(eio_sid, namespace, reason)
            return
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        keep = reason in _KEEP
        # Not read when it ends: its connection may be gone already (`_end_if_gone`).
        snapshot = await self._snapshot(sid, namespace) if sid and keep else None
        live = sid is not None and (sid, namespace) in self._live
        if snapshot is not None:
            # Its publishes settle first: a node that recovers it reads them as written.
            await self.kafka.publishes.settle(publisher_of(snapshot.pid), eio_sid)
            # Saved before the socket leaves its rooms: were this node to die right after,
            # the session already says when it was left.
            await self._end(sid, namespace, snapshot)
            self._kept.pop((eio_sid, namespace), None)  # to the end: kept last
            self._kept[(eio_sid, namespace)] = (snapshot.pid, time.monotonic())
        await super()._handle_disconnect(eio_sid, namespace, reason)
        if sid is not None:
            self.kafka.holds.drop((sid, namespace))
            self.kafka.plain_sids.discard(sid)  # a socket without a session: nothing to end
        if live and not keep:
            assert sid is not None
            await self._end(sid, namespace, None)
        elif not keep and (kept := self._kept.pop((eio_sid, namespace), None)):
            # The client's DISCONNECT packet lost the race with its transport's close:
            # it did mean to leave, so its session ends after all.
            await self._end_in_kafka(kept[0])
        self._prune_kept()

    def _closing(self, eio_sid: str) -> None:
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None and isinstance(socket.queue, Outbox):
            socket.queue.close()  # a replay paced by its drain stops waiting for it

    async def _handle_eio_disconnect(self, eio_sid: str, reason: str) -> None:
        """Engine.IO's disconnect, once what the connection sent before it is handled (its
        lane). By this name: python-socketio registers it, and whatever wraps it calls it
        (the Admin UI's ``instrument``); subclasses extend `_connection_closed`."""
        await self._lanes.disconnect(eio_sid, reason)

    async def _connection_closed(self, eio_sid: str, reason: str) -> None:
        self._closing(eio_sid)
        socket = self.eio.sockets.get(eio_sid)
        if reason == _REASON.CLIENT_DISCONNECT and socket is not None and not socket.upgraded:
            # A polling client's CLOSE: its long-poll GET, if one waits, is answered now,
            # with a NOOP as Node's server does (``None`` alone answered an empty body,
            # which engine.io-parser reads as an error). python-engineio left it waiting
            # for the ping interval and timeout (45 s), a request held open, and a
            # server's stop held up that long.
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
            socket.queue.put_nowait(None)
        if reason == _REASON.CLIENT_DISCONNECT and self.recovery is not None:
            # Engine.IO's CLOSE, not Socket.IO's DISCONNECT: a client leaving on purpose
            # sends one of those for each namespace first. engine.io-client sends the CLOSE
            # over polling when it gives a connection up (its ping timeout, a failed
            # poll): Node's server calls that a transport close, and keeps the sessions.
            reason = _REASON.TRANSPORT_CLOSE
        await super()._handle_eio_disconnect(eio_sid, reason)

    async def disconnect(
        self, sid: str, namespace: str | None = None, ignore_queue: bool = False
    ) -> None:
        namespace = namespace or "/"
        local = self.recovery is not None and self.manager.is_connected(sid, namespace)
        await super().disconnect(sid, namespace, ignore_queue=ignore_queue)
        if local and not self.manager.is_connected(sid, namespace):
            # The server meant it: nothing to recover. Another node's, applied as the
            # consume loop reads it, is not waited for there (`_end_in_kafka`).
            await self._end(sid, namespace, None, wait=not ignore_queue)

    async def save_session(self, sid: str, session: Any, namespace: str | None = None) -> None:
        await super().save_session(sid, session, namespace=namespace)
        if self.recovery is not None:
            self._rooms_changed(sid, namespace or "/")

    async def _saved_in_time(self, eio_sid: str, namespace: str) -> None:
        # Acked means recoverable: a client that joined, dropped within milliseconds and
        # reconnected to another node once got a fresh session, its join still on its way
        # to Kafka (the quickstart's demo, about 1 run in 8). The ack waits, not
        # enter_room: a handler that moves a thousand sockets pays one round trip.
        assert self.recovery is not None
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self._unwritten(sid, namespace):
            return
        try:
            async with asyncio.timeout(self.recovery.save_wait):
                saved = await self.session_saved(sid, namespace)
        except TimeoutError:
            saved = False
        if not saved:
            logger.debug("session of %s not in Kafka yet; written again until it is", sid)

    # -- fresh sessions ------------------------------------------------------------------

    async def _on_connect_reply(self, eio_sid: str, namespace: str, data: dict[str, Any]) -> None:
        key = (eio_sid, namespace)
        if key not in self._connecting or "sid" not in data:
            return
        pid, sid = self._connecting[key], data["sid"]
        if pid is None:
            self.kafka.plain_sids.add(sid)
            return
        data["pid"] = pid
        manager = self.kafka
        self._live[(sid, namespace)] = _Live(pid, array("q", manager.positions), manager.epoch)
        # Saved in the background, with whatever else changed: the reply does not wait on
        # Kafka, and the socket is still connecting here (python-socketio connects it after).
        self._rooms_changed(sid, namespace)

    # -- recovery ------------------------------------------------------------------------

    async def _restore(self, eio_sid: str, namespace: str, claim: _Claim) -> bool:
        """Recover the claimed session onto this connection; False to start a fresh one."""
        assert claim.pid is not None
        assert self.recovery is not None
        manager = self.kafka
        judged = await self._judge(eio_sid, namespace, claim)
        if not isinstance(judged, tuple):
            return judged
        session, start = judged
        second = self._in_namespace(eio_sid, namespace)
        if second or self._gone(eio_sid):
            # Won for a connection that closed while it was judged, or that another
            # CONNECT put in the namespace meanwhile: left claimable.
            why = "in the namespace by another CONNECT" if second else "gone"
            logger.info(
                "recovery of sid %s: connection %s before it was restored", session.sid, why
            )
            self.recoveries["failed", ""] += 1
            await self._release(session)
            if second:
                await self._refuse_second_connect(eio_sid, namespace)
            return True
        sid = session.sid
        # From here to the hold, nothing awaits: no live record can slip between the
        # watermark taken as the replay's end and the socket's registration in its rooms.
        # RoomIndex's enter, not the manager's: the rooms are the record's, not a change.
        RoomIndex.basic_enter_room(manager, sid, namespace, None, eio_sid=eio_sid)
        RoomIndex.basic_enter_room(manager, sid, namespace, sid, eio_sid=eio_sid)
        for room in session.rooms:
            if not manager.is_sid_room(namespace, room):
                RoomIndex.basic_enter_room(manager, sid, namespace, room)
        key = (sid, namespace)
        manager.holds.hold(key, eio_sid)
        stop = tuple(manager.positions)
        self._live[key] = _Live(session.pid, session.start, session.epoch)
        self._recovered.add(key)
        try:
            # Its data first: the app's connect handler reads it, and what it saves stands.
            await super().save_session(sid, session.data or {}, namespace=namespace)
            if not self.recovery.skip_middlewares and not await self._admitted(
                eio_sid, sid, namespace, claim
            ):
                self.recoveries["refused", ""] += 1
                await self._release(session)
                return True
            async with asyncio.timeout(self.recovery.replay_timeout):
                # Written while the replay runs: its acknowledgement is a round trip.
                written = asyncio.create_task(self._write((sid, namespace)))
                try:
                    # The CONNECT reply before the replay (Node sends it after): the JS
                    # client moves its offset only with events it has handed out, and
                    # hands out what comes before the reply only at a reply. A connection
                    # lost mid-replay then claims again from where its events stopped;
                    # the other way round, it claimed the same range again and the next
                    # reply handed out both (docs/decisions.md).
                    await super()._send_packet(
                        eio_sid,
                        self.packet_class(
                            packet.CONNECT, {"sid": sid, "pid": session.pid}, namespace=namespace
                        ),
                    )
                    missed = await self._replay_then_release(
                        eio_sid, namespace, session, start, stop
                    )
                finally:
                    await written
        except Exception:
            logger.exception("recovery of sid %s failed; closing the connection", sid)
            self.recoveries["failed", ""] += 1
            manager.holds.drop(key)
            queue = manager.packet_queue(eio_sid)
            if queue is not None and queue.above_low_water:
                # The replay waited on a client that does not read: engineio's disconnect
                # would wait for the queue to drain, forever.
                manager.cut_slow_consumer(eio_sid)
            else:
                await manager.close_transport(eio_sid, _REASON.SERVER_DISCONNECT)
            return True
        queue = manager.packet_queue(eio_sid)
        if queue is None:
            # Gone mid-replay, or cut (its queue past its bound, or its hold outrun by
            # live events past its read-ons): its session is kept, and its offset says
            # what it got. Not a recovery.
            logger.info("recovery of sid %s ended after %d events: connection gone", sid, missed)
            self.recoveries["failed", ""] += 1
            return True
        logger.info("recovered sid %s [%s]: %d missed events replayed", sid, namespace, missed)
        self.recoveries["recovered", ""] += 1
        self.connects["recovered"] += 1
        return True

    def _in_namespace(self, eio_sid: str, namespace: str) -> bool:
        """Whether this connection has a socket in ``namespace``, or one connecting."""
        return (eio_sid, namespace) in self._connecting or (
            self.manager.sid_from_eio_sid(eio_sid, namespace) is not None
        )

    async def _refuse_second_connect(self, eio_sid: str, namespace: str) -> None:
        """Refuse a CONNECT to a namespace the connection is in, as python-socketio does.
        A claim among them once won, then failed to register: its session stayed
        "connected" to a socket that never was, and its client lost what it missed."""
        await super()._send_packet(
            eio_sid,
            self.packet_class(packet.CONNECT_ERROR, data="Unable to connect", namespace=namespace),
        )

    def _gone(self, eio_sid: str) -> bool:
        """Whether a connection closed while its CONNECT waited (Kafka's readiness, a claim
        judged for seconds). Its disconnect ran before it had a socket here: registering
        one now would leave it in its rooms for good, its session "connected" in Kafka."""
        socket = self.eio.sockets.get(eio_sid)
        return socket is None or socket.closing or socket.closed

    async def _judge(
        self, eio_sid: str, namespace: str, claim: _Claim
    ) -> tuple[Session, tuple[int, ...]] | bool:
        """The session this connection won and where its replay starts; else whether the
        connection was dealt with (True: closed for a retry; False: a fresh session).

        Judged again when the claim lost to anything but a socket connected here: the pid
        is the client's secret, so a rival claim is the client's own earlier attempt. Here,
        one that Kafka wrote late after an outage (or its release, or a left record
        retried); elsewhere, one whose connection went while its claim was in flight (its
        node restores the session, then notices and writes it left: `_settled` waits).
        """
        assert claim.pid is not None
        manager = self.kafka
        for _ in range(_JUDGMENTS):
            try:
                await self._written(claim.pid)
                session = await manager.store.find(claim.pid)
                if session is None and not manager.store.table.ended_lately(claim.pid):
                    # Minted moments ago elsewhere, maybe: its record on its way.
                    session = await manager.store.arrival(claim.pid, _arriving(claim.pid))
                if session is not None and await self._close_stale_transport(session, eio_sid):
                    session = await manager.store.find(claim.pid)  # as the close left it
                if session is not None and not await self._left_here(session):
                    await self._retry_later(eio_sid, f"sid {session.sid} still leaving here")
                    return True
                session = await self._settled(session)
                start = await self._replay_start(session, namespace, claim)
            except KafkaError as exc:
                await self._retry_later(eio_sid, f"Kafka does not answer ({exc!r})")
                return True
            if session is None or start is None:
                return False  # counted by _replay_start
            if not await manager.delivered_to(start):
                await self._retry_later(eio_sid, "this node has not read as far as the client")
                return True
            if manager.is_connected(session.sid, namespace):
                # Restored meanwhile by a concurrent claim: restored once.
                return self._fresh(claim, Fresh.CONNECTED_HERE)
            won = await self._claim(eio_sid, session)
            if won is None:
                return True
            if won:
                return session, start
            current = manager.store.table.sessions.get(claim.pid)
            if current is None or manager.is_connected(current.sid, current.namespace):
                break
        return self._fresh(claim, Fresh.CLAIMED_ELSEWHERE)

    def _fresh(self, claim: _Claim, reason: Fresh, detail: str = "") -> bool:
        """Log and count a claim that gets a fresh session; False, as `_judge` answers it."""
        logger.info("no recovery for pid %.8s…: %s%s; new session", claim.pid, reason, detail)
        self.recoveries["fresh", reason.label] += 1
        return False

    async def _claim(self, eio_sid: str, session: Session) -> bool | None:
        """Whether this node won ``session``, judged as every node judges it: claims at the
        same instant on two nodes both pass `_refusal`, only one is first in Kafka.

        None when Kafka did not tell: the claim is released and the connection closed.
        """
        manager = self.kafka
        judged = manager.store.table.offset_of(session)
        if judged is None:
            return False  # its record changed while it was judged: it is not this one's
        claim = replace(session, owner=manager.host_id, disconnected_at=None, claimed=judged)
        try:
            won = await manager.store.claim(claim)
        except (PublishError, BrokerUnavailable) as exc:
            await self._release(session)
            await self._retry_later(eio_sid, f"claim of sid {session.sid} unconfirmed ({exc})")
            return None
        return won

    async def _release(self, session: Session) -> None:
        """Leave a session claimed here as it was found: left, claimable. Written as this
        node's, it stands only where this node won the claim (see `SessionTable.apply`)."""
        left_at = time.time() if session.disconnected_at is None else session.disconnected_at
        mine = replace(session, owner=self.kafka.host_id, disconnected_at=left_at, claimed=None)
        await self._store(mine)

    async def _close_stale_transport(self, session: Session, eio_sid: str) -> bool:
        """Close the transport this node still holds for a session claimed from a new one.

        A client whose connection dropped can be back before this node noticed (its ping
        timeout is seconds away). The pid is the client's secret, so the claim is the
        client's: its old transport is dead, and closing it keeps the session for this claim.
        """
        manager = self.kafka
        namespace = session.namespace
        if session.owner != manager.host_id or not manager.is_connected(session.sid, namespace):
            return False
        old = manager.eio_sid_from_sid(session.sid, namespace)
        socket = self.eio.sockets.get(old) if old is not None and old != eio_sid else None
        if socket is None:
            return False
        logger.info("sid %s claimed from a new connection: closing its old transport", session.sid)
        await manager.close_transport(old, _REASON.TRANSPORT_CLOSE)
        # Its disconnect may have been under way already (a ping timeout): wait for it.
        await self._until_not(lambda: manager.is_connected(session.sid, namespace))
        return True

    async def _left_here(self, session: Session) -> bool:
        """Wait (a Kafka request's timeout at most) until a disconnect of the session's
        sid under way here has ended; False if it did not.

        python-socketio unregisters a leaving socket once the app's ``disconnect`` handler
        returns: a socket restored under the same sid while an async one ran was
        unregistered with the old one (in none of its rooms, "connected" in Kafka).
        """
        manager, sid, namespace = self.kafka, session.sid, session.namespace

        def leaving() -> bool:
            registered = manager.eio_sid_from_sid(sid, namespace) is not None
            return registered and not manager.is_connected(sid, namespace)

        if not leaving():
            return True
        logger.info("sid %s claimed while its disconnect handler runs here: waiting", sid)
        return await self._until_not(leaving)

    async def _until_not(self, busy: Callable[[], bool]) -> bool:
        """Wait until ``busy()`` is false, a Kafka request's timeout at most; whether it
        is. (python-socketio has no event to await for one socket's disconnect.)"""
        deadline = time.monotonic() + self.kafka.options.request_timeout_ms / 1000
        while busy() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        return not busy()

    async def _retry_later(self, eio_sid: str, why: str) -> None:
        """Close a recovering connection whose claim cannot be judged now: the client
        retries by itself, and what it missed waits in Kafka (a fresh session would lose it).
        """
        logger.warning("%s: closing a recovering connection, for its client to retry", why)
        self.recoveries["retry", ""] += 1
        await self.kafka.close_transport(eio_sid, _REASON.SERVER_DISCONNECT)

    async def _settled(self, session: Session | None) -> Session | None:
        """The session once its node has said it was left, or has gone quiet.

        A client back before its old node noticed the drop (or right after that node
        died) would otherwise be refused as a session still live elsewhere.
        """
        manager = self.kafka
        deadline = time.monotonic() + NODE_STALE_S + 0.5
        while (
            session is not None
            and session.disconnected_at is None
            and session.owner != manager.host_id
            and manager.store.node_alive(session.owner)
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)
            session = manager.store.table.sessions.get(session.pid)
        return session

    async def _admitted(self, eio_sid: str, sid: str, namespace: str, claim: _Claim) -> bool:
        """Run the app's connect handler for a recovered socket; refuse it as a fresh one."""
        fail_reason: Any = {"message": "Connection refused by server"}
        environ = self.environ.get(eio_sid, {})
        try:
            try:
                success = await self._trigger_event("connect", namespace, sid, environ, claim.auth)
            except TypeError:
                if claim.auth is not None:
                    raise
                # Without auth python-socketio also calls a legacy `connect(sid, environ)`.
                success = await self._trigger_event("connect", namespace, sid, environ)
        except socketio.exceptions.ConnectionRefusedError as exc:
            fail_reason, success = exc.error_args, False
        if success is not False:
            return True
        key = (sid, namespace)
        self.kafka.holds.drop(key)
        self._live.pop(key, None)
        self._recovered.discard(key)
        # Refused with its rooms and its data, as a fresh socket is; its record keeps both.
        self.manager.basic_disconnect(sid, namespace)
        with contextlib.suppress(KeyError):  # its connection gone meanwhile
            (await self.eio.get_session(eio_sid)).pop(namespace, None)
        await super()._send_packet(
            eio_sid, self.packet_class(packet.CONNECT_ERROR, data=fail_reason, namespace=namespace)
        )
        return False

    async def _replay_start(
        self, session: Session | None, namespace: str, claim: _Claim
    ) -> tuple[int, ...] | None:
        """Where the replay begins, or None (and why, logged and counted) when it cannot be
        whole.

        Raises `KafkaError` when Kafka does not answer: the claim is then not judged.
        """
        manager = self.kafka
        refusal = self._refusal(session, namespace)
        detail = ""
        if refusal is None:
            assert session is not None
            try:
                start = tuple(session.start)
                if claim.offset is not None:
                    claimed = offsets.decode(claim.offset, manager.epoch, manager.partitions)
                    # Never before the session began: that would replay what it never had.
                    floor = offsets.Position(manager.epoch, start)
                    start = claimed.at_least(floor).offsets
            except offsets.OffsetError as exc:
                refusal, detail = Fresh.BAD_OFFSET, f": {exc}"
            else:
                history = manager.shared_replays.history
                if history is not None and history.covers(start):
                    return start  # read here live since, and held: within Kafka's bounds
                bounds = await manager.bounds()
                if any(s < b for s, b in zip(start, bounds.beginning, strict=True)):
                    refusal = Fresh.DELETED_BY_RETENTION
                elif any(s > e for s, e in zip(start, bounds.end, strict=True)):
                    refusal = Fresh.PAST_THE_END
                else:
                    return start
        self._fresh(claim, refusal, detail)
        return None

    def _refusal(self, session: Session | None, namespace: str) -> Fresh | None:
        assert self.recovery is not None
        manager = self.kafka
        if session is None or session.namespace != namespace:
            return Fresh.UNKNOWN_SESSION
        if session.epoch != manager.epoch:
            return Fresh.EPOCH_CHANGED
        if manager.is_connected(session.sid, namespace):
            return Fresh.CONNECTED_HERE
        window = self.recovery.max_disconnection_duration
        if session.disconnected_at is None:
            if session.owner == manager.host_id:
                # Not connected here, so left: its "left" record is not in Kafka yet (Kafka
                # was away; `_retry_unsaved` writes it). This node knows better than its log.
                return None
            if manager.store.node_alive(session.owner):
                return Fresh.CONNECTED_ELSEWHERE
            # Left when its node went quiet. A node never heard from died before its first
            # heartbeat reached us, moments ago: not expired (as SessionTable.expired).
            last_seen = manager.store.table.heartbeats.get(session.owner)
            if last_seen is not None and time.time() - last_seen > window + 15:
                return Fresh.EXPIRED
        elif time.time() - session.disconnected_at > window:
            return Fresh.EXPIRED
        return None

    async def _replay(
        self,
        eio_sid: str,
        namespace: str,
        session: Session,
        start: tuple[int, ...],
        stop: tuple[int, ...],
        asks: _Asks | None = None,
    ) -> int:
        """Send ``[start, stop)`` of the socket's audience; ``asks`` (a read-on's) each
        before the first record after it in its partition, or at the end."""
        assert self.recovery is not None
        manager = self.kafka
        audience = Audience.of(namespace, session.sid, session.rooms)
        marker = offsets.Marker(manager.epoch, start)
        count = 0
        # Shared with the node's other replays: records arrive as the partitions' cursors
        # find them, in offset order per partition (per room), partitions interleaved.
        async with manager.replay(start, stop, audience) as replay:
            async for found in replay:
                for partition, offset, message in found:
                    if manager.publishes.repeated(partition, offset):
                        continue  # a client's publish written twice: dropped live too
                    queue = manager.packet_queue(eio_sid)
                    if queue is None:
                        return count  # gone mid-replay: its offset says what it got
                    if asks is not None:
                        for packets in asks.due(partition, offset):
                            manager.send_packets(eio_sid, packets)
                    mark = marker.advance(partition, offset + 1)
                    packets = event_packets(self.packet_class, message, mark)
                    queue.offer(packets, manager.cut_slow_consumer, eio_sid)
                    manager.stats.events_replayed += 1
                    count += 1
                    if queue.above_low_water:
                        # Paced by the client: never more than the low-water mark queued.
                        # One that does not read meets the replay timeout here, and is cut.
                        await self._paced(eio_sid, queue, replay)
                # The socket's writer runs now: the client reads this while more is read.
                await asyncio.sleep(0)
        if asks is not None:
            for partition, end in enumerate(stop):
                for packets in asks.due(partition, end):
                    manager.send_packets(eio_sid, packets)
        return count

    async def _paced(self, eio_sid: str, queue: Outbox, replay: Replay) -> None:
        """Wait until the client has read its queue down to the low-water mark; cut it
        (its session kept) once it has not for `_STALL_S` while the node's replays wait
        for room that records found for it hold. A few clients that stopped reading
        during a mass reconnect once held the node's whole replay buffer, and every other
        recovery on the node waited for their timeout (a minute), then timed out too."""
        replays = self.kafka.shared_replays
        while True:
            try:
                async with asyncio.timeout(_STALL_S):
                    await queue.drained()
            except TimeoutError:
                if replays.stalled and replay.held:
                    logger.info("replay to %s cut: its client reads too slowly", eio_sid)
                    self.kafka.cut_slow_consumer(eio_sid)
                    return
            else:
                return

    async def _replay_then_release(
        self,
        eio_sid: str,
        namespace: str,
        session: Session,
        start: tuple[int, ...],
        stop: tuple[int, ...],
    ) -> int:
        """Replay ``[start, stop)``, then send the live events held meanwhile. A hold outrun
        by more live events than it keeps dropped them: the replay reads on, from its end
        to the live position, each stretch in the rooms the socket was in then
        (`_read_on`), and holds again; a few times, then the socket is cut.

        The held events that ask for an ack survive an outrun (no replay brings them back):
        the read-on sends each at its place in its partition. Too many of those to hold
        too, the socket is cut at once: its client sees a disconnect, as it would have
        lost the ask to any other."""
        manager = self.kafka
        key = (session.sid, namespace)
        changes = self._replaying[key] = _RoomChanges(session.rooms)
        try:
            missed = await self._replay(eio_sid, namespace, session, start, stop)
            for _ in range(_READ_ON):
                outrun = manager.holds.release(key, stop, manager.send_packets)
                if outrun is None:
                    return missed
                queue = manager.packet_queue(eio_sid)
                if queue is None:
                    return missed  # gone or cut meanwhile: nothing to read on for
                manager.stats.replays_outrun += 1
                if outrun.lost:
                    manager.cut_slow_consumer(eio_sid)  # its session kept, its asks lost
                    return missed
                start, stop = stop, tuple(manager.positions)
                manager.holds.hold(key, eio_sid)  # nothing awaited since the position was taken
                marks, changes.marks = changes.marks, []
                asks = _Asks(outrun.asks) if outrun.asks else None
                missed += await self._read_on(eio_sid, namespace, session, start, stop, marks, asks)
            if manager.holds.release(key, stop, manager.send_packets) is not None:
                manager.stats.replays_outrun += 1
                manager.cut_slow_consumer(eio_sid)  # its session kept: reads slower than live
            return missed
        finally:
            if self._replaying.get(key) is changes:
                del self._replaying[key]

    async def _read_on(
        self,
        eio_sid: str,
        namespace: str,
        session: Session,
        start: tuple[int, ...],
        stop: tuple[int, ...],
        marks: list[tuple[tuple[int, ...], tuple[str, ...]]],
        asks: _Asks | None = None,
    ) -> int:
        """Replay what a hold dropped in ``[start, stop)``, each stretch in the rooms the
        socket was in then: up to each change of its rooms (``marks``), in those before
        it; after the last, in those it is in now. In today's rooms alone, a room the
        server took it out of lost what it was sent while the socket was still in it.
        ``asks``, an outrun hold's, go out on the way (`_replay`), any left at the end."""
        missed = 0
        for mark, rooms in marks:
            until = tuple(max(s, min(m, e)) for s, m, e in zip(start, mark, stop, strict=True))
            then = replace(session, rooms=rooms)
            missed += await self._replay(eio_sid, namespace, then, start, until, asks)
            start = until
        now = replace(session, rooms=self._session_rooms(session.sid, namespace))
        missed += await self._replay(eio_sid, namespace, now, start, stop, asks)
        if asks is not None:
            for packets in asks.rest():
                self.kafka.send_packets(eio_sid, packets)
        return missed

    # -- session records -----------------------------------------------------------------

    def _rooms_changed(self, sid: str, namespace: str) -> None:
        if (changes := self._replaying.get((sid, namespace))) is not None:
            changes.marks.append((tuple(self.kafka.positions), changes.rooms))
            changes.rooms = self._session_rooms(sid, namespace)
        if (sid, namespace) not in self._live:
            return
        self._dirty.add((sid, namespace))
        self.kafka.supervise(_WRITER, self._write_dirty)

    async def session_saved(self, sid: str, namespace: str = "/") -> bool:
        """Wait until this socket's session, as it is now (rooms, session data), is in
        Kafka: from then on a client that drops can recover it on any node.

        An event's ack waits on it, up to the options' ``save_wait``: a client acked after
        a join is recoverable in that room. False when Kafka refused it (it is written
        again until Kafka takes it); True at once for a socket with nothing unwritten.
        """
        key = (sid, namespace)
        if not self._unwritten(sid, namespace):
            return self._saved(key)
        if key in self._dirty:
            if self._next_batch is None:
                self._next_batch = asyncio.get_running_loop().create_future()
            done = self._next_batch
        else:
            assert self._batch is not None
            done = self._batch[1]
        await asyncio.shield(done)  # one waiter cancelled is not the batch cancelled
        return self._saved(key)

    def _unwritten(self, sid: str, namespace: str) -> bool:
        """Whether a change of this socket's session waits for the writer, or is on its way."""
        key = (sid, namespace)
        return key in self._dirty or (self._batch is not None and key in self._batch[0])

    def _saved(self, key: tuple[str, str]) -> bool:
        live = self._live.get(key)
        return live is None or live.pid not in self._unsaved

    async def _write_dirty(self) -> None:
        # All that changed since the last write goes out together: a thousand joins cost
        # one produce round trip, not a thousand in a row (each pid once per batch, and
        # batches in order, so a pid's records reach Kafka in the order they were taken).
        while self._dirty:
            batch = set(self._dirty)
            self._dirty.clear()
            done = self._next_batch or asyncio.get_running_loop().create_future()
            self._next_batch = None
            self._batch = (batch, done)
            try:
                await self._write(*batch)
            except Exception:
                # The supervisor logs it and starts the writer again, which writes these
                # sessions again; whoever waits for them waits for that.
                self._dirty.update(key for key in batch if key in self._live)
                self._next_batch = _joined(self._next_batch, done)
                raise
            except BaseException:  # cancelled: the node stops, nobody waits any more
                _resolve(done, self._next_batch)
                raise
            else:
                done.set_result(None)
            finally:
                self._batch = None
        if self._next_batch is not None:  # its sockets left before it was taken
            self._next_batch.set_result(None)
            self._next_batch = None

    async def _write(self, *keys: tuple[str, str]) -> None:
        """Save the sessions of these ``(sid, namespace)`` sockets, in one batch."""
        sessions = []
        for sid, namespace in keys:
            try:
                snapshot = await self._snapshot(sid, namespace)
            except KeyError:  # its Engine.IO session closed: its disconnect writes the rest
                continue
            # Disconnected (meanwhile, too): its last word is already written.
            if snapshot is not None and (sid, namespace) in self._live:
                sessions.append(snapshot)
        await self._store(*sessions)

    async def _snapshot(self, sid: str, namespace: str) -> Session | None:
        live = self._live.get((sid, namespace))
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        # Connecting counts (a fresh session is saved as its CONNECT reply goes out).
        if live is None or eio_sid is None:
            return None
        rooms = self._session_rooms(sid, namespace)
        # What get_session returns, without the empty session it would store on every
        # socket that has none (160 bytes each, benchmarks/memory.py).
        eio_session = await self.eio.get_session(eio_sid)
        data = self._kept_data(sid, eio_session.get(namespace, {}))
        manager = self.kafka
        return Session(
            live.pid, sid, namespace, rooms, data, live.start, live.epoch, manager.host_id
        )

    def _kept_data(self, sid: str, data: Any) -> Any:
        """``data`` if a session record may keep it, else None (logged and counted)."""
        assert self.recovery is not None
        try:
            # What every node reads back: a record with NaN in it was written, then skipped
            # by every node, its session never recovered.
            size = len(codec.readable_json(data))
        except (TypeError, ValueError) as exc:
            why = f"is not JSON every node reads back ({exc})"
        else:
            if size <= self.recovery.max_session_bytes:
                return data
            why = f"has {size} bytes, over max_session_bytes={self.recovery.max_session_bytes}"
        self.kafka.stats.session_data_dropped += 1
        logger.warning("session data of %s %s; it will not be recovered", sid, why)
        return None

    def _session_rooms(self, sid: str, namespace: str) -> tuple[str, ...]:
        """The rooms a session record keeps for ``sid``: all it is in but its own."""
        return tuple(r for r in self.manager.get_rooms(sid, namespace) if r != sid)

    async def _end(self, sid: str, namespace: str, kept: Session | None, wait: bool = True) -> None:
        """Forget a socket's session here; keep it in Kafka (disconnected) or end it there
        (without waiting for Kafka, unless ``wait``)."""
        key = (sid, namespace)
        live = self._live.pop(key, None)
        self._recovered.discard(key)
        self._dirty.discard(key)
        self.kafka.plain_sids.discard(sid)
        if live is None:
            if kept is None and (pid := self._keeping.get(key)) is not None:
                # The server ends it (a kick) while its transport's close keeps it: the
                # end goes after the kept record, and is the last word.
                await self._end_in_kafka(pid, wait)
            return
        if kept is None:
            await self._end_in_kafka(live.pid, wait)
            return
        self._keeping[key] = live.pid
        try:
            await self._store(replace(kept, disconnected_at=time.time()))
        finally:
            self._keeping.pop(key, None)

    async def _end_in_kafka(self, pid: str, wait: bool = True) -> None:
        records: dict[str, Session | None] = {pid: None}
        if wait:
            await self._save(records)
            return
        # Its place among the pid's writes is taken now; a claim of it waits for it
        # (`_written`). A mass kick from another node once held up every delivery here
        # for a Kafka round trip per socket.
        ending = asyncio.get_running_loop().create_task(
            self._saving(records, self._begin_save(records))
        )
        self._ending.add(ending)
        ending.add_done_callback(self._ended)

    def _ended(self, ending: asyncio.Task[None]) -> None:
        self._ending.discard(ending)
        if not ending.cancelled() and (exc := ending.exception()) is not None:
            logger.error("a session's end was not written", exc_info=exc)

    def _prune_kept(self) -> None:
        """Forget what was kept longer ago than the race: from the front, the oldest (a
        walk over all of them on every disconnect made a node's mass drop quadratic)."""
        cutoff = time.monotonic() - _RACE_WINDOW_S
        kept = self._kept
        while kept:
            key = next(iter(kept))
            if kept[key][1] >= cutoff:
                return
            del kept[key]

    async def _store(self, *sessions: Session) -> None:
        if sessions:
            await self._save({session.pid: session for session in sessions})

    async def _save(self, records: dict[str, Session | None]) -> None:
        """Write these session records (None: end the session). What Kafka does not take
        is written again until it does, unless a newer record of its pid was written
        meanwhile: a session whose "left" record is lost looks connected to every node."""
        await self._saving(records, self._begin_save(records))

    def _begin_save(self, records: dict[str, Session | None]) -> int:
        """The attempt these records are written in, the newest of their pids'."""
        attempt = next(self._attempt_numbers)
        self._attempts.update(dict.fromkeys(records, attempt))
        for pid, record in records.items():
            # A newer record supersedes one waiting to be written again: retried after
            # it, the older one would be the pid's last word (a session that left would
            # look connected to every other node).
            if pid in self._unsaved and self._unsaved[pid] is not record:
                del self._unsaved[pid]
        return attempt

    async def _saving(self, records: dict[str, Session | None], attempt: int) -> None:
        try:
            await self.kafka.store.write(records)
        except (PublishError, BrokerUnavailable) as exc:
            latest = {p: r for p, r in records.items() if self._attempts.get(p) == attempt}
            logger.warning("%d session record(s) not saved yet; retrying: %s", len(latest), exc)
            self._unsaved.update(latest)
            self.kafka.supervise(_RETRIER, self._retry_unsaved)
        else:
            for pid in records:
                if self._attempts.get(pid) == attempt:
                    self._unsaved.pop(pid, None)
        finally:
            for pid in records:
                if self._attempts.get(pid) == attempt:
                    del self._attempts[pid]
                    if (waiting := self._writing.pop(pid, None)) is not None:
                        waiting.set_result(None)

    async def _written(self, pid: str) -> None:
        """Wait until the writes of ``pid``'s session in flight here are answered, so that a
        claim reads them: a client dropped as its session was being written (its CONNECT
        reply, its rooms, its "left" record) and back at once would otherwise find it
        unknown, and lose what it missed. At most a Kafka request's timeout: each write is
        bounded by it, but a socket still connected here may go on changing its session."""
        if pid in self._attempts:
            waiting = self._writing.get(pid)
            if waiting is None:
                waiting = self._writing[pid] = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.kafka.options.request_timeout_ms / 1000):
                    await asyncio.shield(waiting)  # one claim cancelled is not the others'

    async def _retry_unsaved(self) -> None:
        delay = _FIRST_RETRY_S
        while self._unsaved:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_S)
            # Left in _unsaved while written: taken out once Kafka takes them, or by a
            # newer record of their pid (`_save`); kept for the supervisor's restart.
            await self._save(dict(self._unsaved))


def new_pid() -> str:
    """A session's private id: 32 hex digits, the first 12 the milliseconds since the epoch
    it was minted at (as a UUIDv7's), the rest random (80 bits).

    A claim on a node that does not know the pid can tell a session just begun elsewhere,
    whose record may still be on its way to Kafka, from one long gone or never made, and
    wait for the first alone (`_arriving`). The time told is no secret the client did not
    already have.
    """
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def _arriving(pid: str) -> float:
    """How long a claim of an unknown ``pid`` waits for its session's record: what is left
    of `ARRIVAL_S` since the pid was minted (all of it, for a clock a little ahead of this
    node's), or nothing: for a pid minted longer ago, one this node did not make that way,
    or one of an older version's random pids (whose first digits, read as a time, are
    almost never within seconds of now)."""
    try:
        minted = int(pid[:12], 16) / 1000 if len(pid) == 32 else None
    except ValueError:
        minted = None
    now = time.time()
    if minted is None or not now - ARRIVAL_S < minted < now + ARRIVAL_S:
        return 0.0
    return min(ARRIVAL_S, minted + ARRIVAL_S - now)


def _joined(
    later: asyncio.Future[None] | None, earlier: asyncio.Future[None]
) -> asyncio.Future[None]:
    """One future for two sets of waiters: ``earlier`` is done when ``later`` is."""
    if later is None:
        return earlier
    later.add_done_callback(lambda _: _resolve(earlier))
    return later


def _resolve(*futures: asyncio.Future[None] | None) -> None:
    for future in futures:
        if future is not None and not future.done():
            future.set_result(None)
