"""What the gateway refuses from a client before python-socketio acts on it.

python-socketio 5.18 trusts two things a hostile client controls (tests/test_hostile_packets.py):

- A BINARY_EVENT's header announces how many attachments follow (up to 10^10), and every
  binary frame after it is kept until that many came: one connection streaming frames
  under the payload limit grew a node by 100 MB and more, for as long as it went on.
- Nothing waits for an event's handler: a client within its event rate had as many
  publishes waiting on a slow Kafka as it liked, each holding its payload
  (`InFlight` bounds them).
- An event's name is whatever the packet says: ``["connect", ...]`` or ``["disconnect"]``
  ran the app's own connect and disconnect handlers on a connected socket, and a name that
  is not a string (``[[1]]``) crashed the handler task ("Task exception was never
  retrieved"). Node's socket.io refuses both in its parser.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from socketio import packet

from socketio_kafka.adapter.aborts import abort_connection
from socketio_kafka.adapter.lanes import message_size
from socketio_kafka.adapter.outbox import Outbox
from socketio_kafka.adapter.recovery import RecoveringAsyncServer

from .accept import Holds
from .inbound import InboundBudget
from .inflight import EVENT_OVERHEAD, InFlight
from .limits import (
    CONNECT_TIMEOUT,
    IN_FLIGHT,
    Limits,
    NodeLimits,
    client_address,
    peer_address,
)
from .protocol import EVENTS, RESERVED_EVENTS

__all__ = ["ATTACHMENT_OVERHEAD", "DRAINING", "GuardedServer"]

logger = logging.getLogger("socketio_kafka.gateway")

#: What an attachment costs beyond its bytes (its object and list slot), so that a packet
#: of many empty attachments is bounded too.
ATTACHMENT_OVERHEAD = 64


class _Attachments:
    """A connection's binary packet with attachments still to come, as an `InboundBudget`
    holder: python-socketio keeps the ones in until the last arrives, which a client may
    never send."""

    __slots__ = ("_cut", "client")

    def __init__(self, client: tuple[str, int] | None, cut: Callable[[], None]) -> None:
        self.client = client
        self._cut = cut

    def cut_inbound(self) -> None:
        self._cut()


#: What a client connecting to a draining node is told (it retries, elsewhere).
DRAINING = "draining"
#: Messages handled (node-wide) between two yields to the event loop. A socket's reader
#: handles what one read brought without a pause otherwise: 256 KB of a flooder's small
#: frames, 3,500 events and their handlers' tasks, in one turn no other client got.
_MESSAGES_PER_TURN = 32


class _ReadBody:
    """A ``wsgi.input`` whose body was read: nothing is left."""

    async def read(self, length: int | None = None) -> bytes:
        return b""


_READ_BODY = _ReadBody()

#: The WebSocket handshake's own request headers: engineio reads Connection and Upgrade to
#: accept the connection, and nothing reads any of them once it is open.
_HANDSHAKE_HEADERS = frozenset(
    {b"connection", b"upgrade", b"sec-websocket-key", b"sec-websocket-version",
     b"sec-websocket-extensions"}
)  # fmt: skip
_HANDSHAKE_KEYS = tuple(
    "HTTP_" + name.decode().upper().replace("-", "_") for name in sorted(_HANDSHAKE_HEADERS)
)


def _drop_handshake_headers(environ: dict[str, Any]) -> None:
    """Forget the handshake's headers in a connection's environ and its ASGI scope, both
    kept for the connection's life: five of the six headers the official Node client
    sends, about 1.6 KB a connection (benchmarks/memory.py)."""
    for key in _HANDSHAKE_KEYS:
        environ.pop(key, None)
    scope: dict[str, Any] = environ.get("asgi.scope") or {}
    headers = scope.get("headers")
    if headers and any(name in _HANDSHAKE_HEADERS for name, _ in headers):
        scope["headers"] = [(name, v) for name, v in headers if name not in _HANDSHAKE_HEADERS]


#: An event's key in `GuardedServer._charges`: its data list, alive while it is handled
#: (``id`` is the ack id's name in python-socketio's signatures).
_key = id


class GuardedServer(RecoveringAsyncServer):
    """The gateway's server: a packet's attachments together fit one payload
    (``max_http_buffer_size``), events with a reserved or non-string name are dropped, the
    node's `Limits` hold, and a draining node takes no new connection.
    """

    def __init__(self, *args: Any, limits: Limits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = NodeLimits(limits or Limits())
        #: Connections refused at accept are held here a while before their reset.
        self.holds = Holds()
        #: What all connections hold of messages they have not finished sending: in
        #: uvicorn's protocols, and here, attachments of binary packets not yet whole.
        self.inbound = InboundBudget(self.limits.limits.max_inbound_bytes, self.refused_request)
        #: Events read and not yet handled, by connection, within what ``inbound`` leaves.
        limits = self.limits.limits
        self.in_flight = InFlight(
            limits.max_in_flight_events, limits.max_in_flight_bytes, self.inbound
        )
        #: The bytes of the message being dispatched (a binary event's with its
        #: attachments), which its event is charged in `in_flight`.
        self._message_bytes = 0
        #: The bytes of each connection's binary packet header whose attachments are to come.
        self._headers: dict[str, int] = {}
        #: By the id of each event's data list, being handled: its connection and charge.
        self._charges: dict[int, tuple[str, int]] = {}
        self._attachments: dict[str, _Attachments] = {}
        self._cutting: set[asyncio.Task[None]] = set()
        #: Connections without a Socket.IO namespace, each closed at its timer unless one
        #: connects first (`_await_namespace`); CONNECTs being judged, by connection.
        self._unconnected: dict[str, asyncio.TimerHandle] = {}
        self._judging: collections.Counter[str] = collections.Counter()
        #: Set by `drain`: new connections are refused, /readyz answers 503.
        self.draining = False
        #: Events clients sent, by name: the protocol's own, and ``other`` (names are the
        #: client's to choose, and would be as many labels).
        self.events_in: collections.Counter[str] = collections.Counter()
        self._messages = 0

    async def drain(self) -> None:
        """Refuse new connections and close every one this node has, keeping their
        recovery sessions: their clients reconnect to another node and recover there.

        Each close is a transport close without Engine.IO's CLOSE packet, after which
        python-socketio's client would not reconnect; its session is saved to Kafka before
        this returns.
        """
        self.draining = True
        eio_sids = list(self.eio.sockets)
        logger.warning("draining: closing %d connection(s), sessions kept", len(eio_sids))
        await asyncio.gather(*(self._close(eio_sid, tell=False) for eio_sid in eio_sids))

    async def _close(self, eio_sid: str, *, tell: bool) -> None:
        """Close a connection now, with Engine.IO's CLOSE packet first if ``tell``.

        engineio's own disconnect queues the CLOSE and leaves its writer waiting for more
        until the idle timeout (45 s) before it closes the WebSocket: a client that does not
        close its end on the CLOSE (a hostile one) kept its connection that long.
        """
        socket = self.eio.sockets.get(eio_sid)
        if socket is None:
            return
        await socket.close(wait=False, abort=not tell, reason=self.reason.SERVER_DISCONNECT)
        socket.queue.put_nowait(None)  # ends engineio's writer, which closes the WebSocket
        self.eio.sockets.pop(eio_sid, None)

    def refused_request(self, limit: str, peer: str | None) -> None:
        """A connection closed over a bound on reading its request (`BoundedHTTPProtocol`):
        counted and logged as a refusal, by the TCP peer's address."""
        self.limits.refuse(limit, peer_address(peer, None))

    def admits(self, peer: str | None, path: str, forwarded_for: str | None) -> bool:
        """A `CoalescingWebSocketProtocol` gate: False for an Engine.IO handshake over
        WebSocket from an address already over its connection rate, refused before uvicorn
        accepts it or the app is called: 40% less node CPU a refused handshake than through
        engineio (benchmarks/flood.py). Anything else goes on to be judged as before: an
        upgrade (``sid=``), of an admitted connection, first."""
        if "sid=" in path:
            return True
        trusted = self.limits.limits.trust_forwarded_for
        address = peer_address(peer, forwarded_for, trust_forwarded_for=trusted)
        return not self.limits.refuses_early(address)

    def accepts(self, peer: str | None) -> bool:
        """A `GatedHTTPProtocol` gate: False resets a new TCP connection from ``peer``
        before its request is read (`NodeLimits.floods_connections`). Behind a proxy the
        peer is the proxy, so nothing is judged here."""
        if peer is None or self.limits.limits.trust_forwarded_for:
            return True
        return not self.limits.floods_connections(peer_address(peer, None))

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        # At the Engine.IO handshake: refused there (HTTP 401 and the message), a client
        # retries with its backoff, where a Socket.IO CONNECT_ERROR would stop the JS one.
        if self.draining:
            return {"message": DRAINING}
        refused = self.limits.admit(environ, len(self.eio.sockets) - 1)  # itself included
        if refused is not None:
            return {"message": refused}
        # engineio's ASGI driver makes a class for each request's body reader, and the
        # environ, kept for the connection's life, holds it: 2 KB a connection for a
        # handshake's body, which is empty and read (benchmarks/memory.py).
        environ["wsgi.input"] = _READ_BODY
        refused = await super()._handle_eio_connect(eio_sid, environ)
        if refused is None or refused is True:  # engineio's two ways to accept
            self._await_namespace(eio_sid)
        return refused

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        if self._open_socket(eio_sid) is None:
            return  # cut: what it sent before the close reached it
        # A CONNECT is an event as far as the rate goes: each costs a token's check and an
        # answer (a session's records, with a valid token), and one connection once sent
        # 20,000 refused ones in 7 s, answered every one and never cut.
        refused = self.limits.check_event(eio_sid)
        if refused is not None:
            if self.limits.flooding(eio_sid):
                await self._cut(eio_sid, "kept sending CONNECTs far past its rate limit")
                return
            error = self.packet_class(
                packet.CONNECT_ERROR, data={"message": refused}, namespace=namespace or "/"
            )
            await self._send_packet(eio_sid, error)
            return
        # A Socket.IO CONNECT comes over an open connection: its handshake is over.
        environ = self.environ.get(eio_sid)
        if environ is not None:
            _drop_handshake_headers(environ)
        self._judging[eio_sid] += 1
        try:
            await self._judge_connect(eio_sid, namespace, data)
        finally:
            self._judging[eio_sid] -= 1
            if not self._judging[eio_sid]:
                del self._judging[eio_sid]
        if self._namespaced(eio_sid) and (timer := self._unconnected.pop(eio_sid, None)):
            timer.cancel()

    async def _judge_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        """A CONNECT that passed the rate and the connection's checks: a subclass judges
        its token here, after them, so that refused ones count against the rate too."""
        await super()._handle_connect(eio_sid, namespace, data)

    async def _handle_disconnect(
        self, eio_sid: str, namespace: str | None, reason: str | None = None
    ) -> None:
        await super()._handle_disconnect(eio_sid, namespace, reason)
        self._await_namespace(eio_sid)

    async def disconnect(
        self, sid: str, namespace: str | None = None, ignore_queue: bool = False
    ) -> None:
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace or "/")
        await super().disconnect(sid, namespace, ignore_queue=ignore_queue)
        if eio_sid is not None:
            self._await_namespace(eio_sid)

    async def _connection_closed(self, eio_sid: str, reason: str) -> None:
        # After its lane: what it sent before the close may still have set these.
        self.limits.forget(eio_sid)
        self._hold_attachments(eio_sid, 0)
        self._headers.pop(eio_sid, None)
        if timer := self._unconnected.pop(eio_sid, None):
            timer.cancel()
        await super()._connection_closed(eio_sid, reason)

    def _namespaced(self, eio_sid: str) -> bool:
        """Whether ``eio_sid`` has a Socket.IO namespace connected."""
        return any(
            self.manager.sid_from_eio_sid(eio_sid, namespace) is not None
            for namespace in self.manager.get_namespaces()
        )

    def _await_namespace(self, eio_sid: str) -> None:
        """An open connection without a namespace gets ``connect_timeout`` to connect one
        (`Limits`): at the handshake, and when its last namespace is disconnected."""
        if eio_sid in self._unconnected or self._open_socket(eio_sid) is None:
            return
        if self._namespaced(eio_sid):
            return
        timeout = self.limits.limits.connect_timeout
        loop = asyncio.get_running_loop()
        self._unconnected[eio_sid] = loop.call_later(timeout, self._connect_overdue, eio_sid)

    def _connect_overdue(self, eio_sid: str) -> None:
        del self._unconnected[eio_sid]
        if self._open_socket(eio_sid) is None or self._namespaced(eio_sid):
            return
        if self._judging[eio_sid]:  # a CONNECT being judged: its own bounds hold it
            self._await_namespace(eio_sid)
            return
        trusted = self.limits.limits.trust_forwarded_for
        address = client_address(self.environ.get(eio_sid, {}), trust_forwarded_for=trusted)
        self.limits.refuse(CONNECT_TIMEOUT, address)
        self._in_background(self._close(eio_sid, tell=True))

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        self._messages += 1
        if self._messages % _MESSAGES_PER_TURN == 0:
            await asyncio.sleep(0)
        pending = self._binary_packet.get(eio_sid)
        if pending is not None:
            held = self._attachments_held(eio_sid) + len(data) + ATTACHMENT_OVERHEAD
            if held > self.eio.max_http_buffer_size:
                await self._refuse(eio_sid, "binary attachments larger than the payload limit")
                return
        if pending is None:
            self._message_bytes = message_size(data)
        else:  # its header's too, which python-socketio held with its attachments
            self._message_bytes = held + self._headers.get(eio_sid, 0)
        await super()._handle_eio_message(eio_sid, data)
        announced = self._binary_packet.get(eio_sid)
        if announced is not pending:
            self._headers.pop(eio_sid, None)
            if announced is not None:
                self._headers[eio_sid] = len(data)
        if (
            announced is not None
            and announced is not pending
            and (announced.attachment_count * ATTACHMENT_OVERHEAD > self.eio.max_http_buffer_size)
        ):
            await self._refuse(eio_sid, "more binary attachments than the payload limit allows")
        elif pending is not None:  # whole now, it holds nothing
            self._hold_attachments(eio_sid, held if announced is pending else 0)

    def _attachments_held(self, eio_sid: str) -> int:
        """What ``eio_sid``'s binary packet holds so far, as the node counts it."""
        holder = self._attachments.get(eio_sid)
        return 0 if holder is None else self.inbound.held(holder)

    def _hold_attachments(self, eio_sid: str, nbytes: int) -> None:
        """The attachments ``eio_sid``'s binary packet holds now, in the node's count."""
        holder = self._attachments.get(eio_sid)
        if holder is None:
            if not nbytes:
                return
            scope = self.environ.get(eio_sid, {}).get("asgi.scope", {})
            cut = functools.partial(self._cut_attachments, eio_sid)
            holder = self._attachments[eio_sid] = _Attachments(scope.get("client"), cut)
        elif not nbytes:
            del self._attachments[eio_sid]
        self.inbound.hold(holder, nbytes)

    def _cut_attachments(self, eio_sid: str) -> None:
        """Over the node's inbound budget: the packet forgotten now, the connection reset
        next (`_cut`), its session kept for its client to recover."""
        self._attachments.pop(eio_sid, None)
        self._binary_packet.pop(eio_sid, None)
        self._in_background(self._cut(eio_sid, "the node holds too much of unfinished messages"))

    def _in_background(self, closing: Coroutine[Any, Any, None]) -> None:
        """Run ``closing`` (a close or a cut, started where nothing can await it), its
        task kept until it ends."""
        task = asyncio.get_running_loop().create_task(closing)
        self._cutting.add(task)
        task.add_done_callback(self._cutting.discard)

    async def _handle_event(
        self, eio_sid: str, namespace: str | None, id: int | None, data: Any
    ) -> None:
        if self._open_socket(eio_sid) is None:
            return  # cut (below): what it sent before the close reached it
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            logger.info("dropped an event without a name from %s", eio_sid)
            return
        if data[0] in RESERVED_EVENTS:
            logger.info("dropped an event named %r from %s: reserved", data[0], eio_sid)
            return
        self.events_in[data[0] if data[0] in EVENTS else "other"] += 1
        refused = self.limits.check_event(eio_sid)
        if refused is not None:
            if self.limits.flooding(eio_sid):
                await self._cut(eio_sid, "kept sending events far past its rate limit")
                return
            await self._answer_refused(eio_sid, namespace, id, refused)
            return
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace or "/")
        if not self.manager.is_connected(sid, namespace or "/"):
            # python-socketio drops it, nothing started: nothing to charge.
            await super()._handle_event(eio_sid, namespace, id, data)
            return
        charge = self._message_bytes + EVENT_OVERHEAD
        if not self.in_flight.admit(eio_sid, charge):
            await self._answer_refused(
                eio_sid, namespace, id, self.limits.refuse(IN_FLIGHT, eio_sid)
            )
            return
        self._charges[_key(data)] = (eio_sid, charge)
        await super()._handle_event(eio_sid, namespace, id, data)

    async def _handle_event_internal(
        self, server: Any, sid: str, eio_sid: str, data: Any, namespace: str, id: int | None
    ) -> None:
        try:
            await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
        finally:
            self.in_flight.release(*self._charges.pop(_key(data)))

    async def _answer_refused(
        self, eio_sid: str, namespace: str | None, id: int | None, error: str
    ) -> None:
        """A refused event's ack, the protocol's error reply; dropped silently without an
        ack: nothing waits for it."""
        if id is not None:
            reply = {"ok": False, "error": error}
            ack = self.packet_class(packet.ACK, namespace=namespace, data=[reply], id=id)
            await self._send_packet(eio_sid, ack)

    async def _cut(self, eio_sid: str, why: str) -> None:
        """Close a client's connection now: one that keeps sending past its event rate, or
        the oldest holding attachments once the node holds too much (`_cut_attachments`).

        engineio's own disconnect queues a CLOSE packet behind every ack still queued and
        reads on whatever the client sends until it closes its end, dispatching each
        event: a flood went on costing the node as much after it as before. Here what is
        queued is dropped (the flooder does not read it) and the connection is reset, so
        that nothing more of it is read (`ABORT`; served without that extension, the
        WebSocket is closed by its writer, and what still arrives is read and dropped).
        Its session is kept, as for any server disconnect: only the flood ends.
        """
        socket = self._open_socket(eio_sid)
        if socket is None:
            return
        logger.warning("closing connection %s: %s", eio_sid, why)
        # (A socket upgraded from polling has its handshake's scope: nothing to reset.)
        abort_connection(self.environ.get(eio_sid))
        queue = socket.queue
        if isinstance(queue, Outbox):
            queue.shed_all()  # ends engineio's writer, which closes the WebSocket
        else:
            queue.put_nowait(None)
        # engineio forgets the socket once its WebSocket handler ends.
        await socket.close(wait=False, abort=True)

    def _open_socket(self, eio_sid: str) -> Any:
        """The Engine.IO socket, unless it is gone or closing: what a closing connection
        sent is dropped, but for what it sent before its close while a CONNECT ran
        (adapter/lanes.py), handled as the reader would have before reading the close."""
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or socket.closed:
            return None
        return None if socket.closing and not self._lanes.draining(eio_sid) else socket

    async def _refuse(self, eio_sid: str, why: str) -> None:
        """Forget the half-received packet and close the connection: its client is broken
        or hostile, and anything it sends next would be read as more attachments."""
        self._binary_packet.pop(eio_sid, None)
        logger.warning("closing connection %s: %s", eio_sid, why)
        await self._close(eio_sid, tell=True)
