"""uvicorn's WebSocket protocol with its writes gathered: one socket write per loop turn.

Engine.IO sends one WebSocket frame per packet, and uvicorn writes each frame to the socket
as it is made: a system call per delivered event per client. The Kafka manager fans a whole
fetched batch out before it yields, so by the time Engine.IO's writer task runs, a socket
has many packets queued; here their frames go out in one write at the end of the loop
turn. Order is kept (one buffer per connection, flushed before a close), flow control is
uvicorn's own (the buffer never outlives the turn), and nothing waits longer than the
callbacks already ready to run. Measured in benchmarks/RESULTS.md.

Apps serving the adapter with uvicorn themselves can use it too::

    uvicorn.run(app, ws="socketio_kafka.gateway.websocket:CoalescingWebSocketProtocol")

Each connection also offers the app a way to reset it (`ABORT`): a closed WebSocket is read
and parsed until its peer answers the close, and a flooder never does; a way to write
Engine.IO packets as frames at once (`FRAMES`, which the Kafka manager's fan-out uses:
`adapter/frames.py`); and a `gated` protocol asks the app's gate before it accepts a
WebSocket at all, and counts what it holds of a message not yet whole in the node's
bound on those (`gateway/inbound.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State

from socketio_kafka.adapter.aborts import ABORT
from socketio_kafka.adapter.frames import FRAMES
from socketio_kafka.adapter.outbox import SlimQueue

if TYPE_CHECKING:
    from .inbound import InboundBudget

__all__ = ["ABORT", "CoalescingTransport", "CoalescingWebSocketProtocol", "Gate"]

#: A `CoalescingWebSocketProtocol.gate`.
Gate = Callable[[str | None, str, str | None], bool]


class CoalescingTransport:
    """Stands in for a transport: ``write`` gathers, the rest is the transport's own."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


#: Every attribute uvicorn's protocol sets on a connection (tests/test_seams.py checks the
#: list against its source): one it adds later goes to the instance dict, as before.
_UVICORN_ATTRIBUTES = (
    "config", "app", "loop", "logger", "root_path", "asgi_version", "app_state",
    "connections", "tasks", "default_headers", "transport", "server", "client", "scheme",
    "queue", "handshake_initiated", "handshake_complete", "close_sent", "disconnected",
    "close_timer", "close_timeout", "initial_response", "conn", "read_paused", "writable",
    "ping_interval", "ping_timeout", "ping_timer", "pong_timer", "pending_ping_payload",
    "ping_sent_at", "last_ping_rtt", "frames", "curr_msg_data_type", "request", "response",
    "scope",
)  # fmt: skip


class _Flag:
    """What uvicorn uses of ``asyncio.Event`` for its ``writable`` flag, waiters in a list."""

    __slots__ = ("_set", "_waiters")

    def __init__(self, is_set: bool) -> None:
        self._set = is_set
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    @property
    def clear_to_write(self) -> bool:
        """Set, and no writer still waits or was woken but has not run yet (a frame
        written now would go out before what that writer holds)."""
        return self._set and not self._waiters

    def set(self) -> None:
        self._set = True
        for waiter in self._waiters:  # each leaves the list when it runs
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)


def _lost() -> None:
    """The abort handle of a connection already lost."""


def _refused(packets: Sequence[Any]) -> bool:
    """The frame writer of a connection already lost."""
    return False


def _frame(pkt: Any) -> bytes:
    """An Engine.IO packet as an unmasked WebSocket frame, built once per packet (every
    connection writes the same bytes) and kept on it."""
    try:
        frame: bytes = pkt.ws_frame
    except AttributeError:
        data = pkt.encode()
        if isinstance(data, str):
            frame = Frame(Opcode.TEXT, data.encode()).serialize(mask=False)
        else:
            frame = Frame(Opcode.BINARY, data).serialize(mask=False)
        pkt.ws_frame = frame
    return frame


class CoalescingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol writing through a `CoalescingTransport`.

    Lighter per connection too (benchmarks/memory.py): its incoming events wait on a
    `SlimQueue` (an ``asyncio.Queue`` is four deques, 3 KB), its flow control on a `_Flag`
    (an ``asyncio.Event`` is a deque, 760 bytes), and the handshake's request
    and response, with their headers, are dropped once the response went out (uvicorn
    reads neither again; the app has the headers in its scope). uvicorn's attributes live
    in slots: its 37 are past what a key-sharing instance dict holds (30), and the dict
    of its own each connection got instead was 1.6 KB.
    """

    __slots__ = (*_UVICORN_ATTRIBUTES, "_held", "_lost", "_plain")

    #: Asked before a WebSocket request is accepted: ``gate(peer_host, path, x_forwarded_for)``
    #: False answers it with a bare 403 at once, before the app is called (`gated`).
    gate: ClassVar[Gate | None] = None
    #: Counts what each connection holds of a message not yet whole (`gated`).
    inbound: ClassVar[InboundBudget | None] = None

    @classmethod
    def gated(
        cls, gate: Gate, inbound: InboundBudget | None = None
    ) -> type[CoalescingWebSocketProtocol]:
        """This protocol with ``gate`` asked first, and unfinished messages counted in
        ``inbound``, which may close the connection."""
        attributes = {"gate": staticmethod(gate), "inbound": inbound}
        return type(cls.__name__, (cls,), attributes)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = SlimQueue()  # type: ignore[assignment]
        self.writable = _Flag(self.writable.is_set())  # type: ignore[assignment]
        self._plain = False
        #: What this connection holds in ``inbound``'s count.
        self._held = 0
        #: Called once when the connection is lost (`on_lost`).
        self._lost: Callable[[], object] | None = None

    def start_keepalive(self) -> None:
        super().start_keepalive()  # called once, right after the handshake's response
        # websockets' parser keeps the request in its frame for the connection's life:
        # its headers, 2.3 KB, go now.
        self.request.headers.clear()
        del self.request, self.response
        #: Handshake done, and frames are written as built: no extension
        #: (permessage-deflate) rewrites them.
        self._plain = not self.conn.extensions

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport = CoalescingTransport(self.transport, self.loop)  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if (inbound := type(self).inbound) is not None:
            # What websockets' parser waits on to finish a frame, and the frames of a
            # fragmented message so far (uvicorn's).
            held = len(self.conn.reader.buffer)
            if self.frames:
                held += sum(map(len, self.frames))
            if held != self._held:
                self._held = held
                inbound.hold(self, held)

    def cut_inbound(self) -> None:
        """Over the node's inbound budget: closed with 1013 (try again later), what it held
        dropped, nothing more read (`InboundBudget`)."""
        self._held = 0
        self.conn.reader.buffer.clear()
        self.frames = []
        if self.handshake_complete and not self.close_sent and self.conn.state is State.OPEN:
            self.conn.send_close(CloseCode.TRY_AGAIN_LATER, "node busy")
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._held and (inbound := type(self).inbound) is not None:
            self._held = 0
            inbound.hold(self, 0)
        super().connection_lost(exc)
        if (lost := self._lost) is not None:
            self._lost = None
            lost()
        # Nothing more is read, and what would be left is cycles only the collector frees
        # (a churn of connections makes its pauses long, and it never frees what it was
        # told to leave alone: gateway/collector.py). websockets' parser is a generator
        # whose frame holds the connection (and the handshake's request), and its error a
        # traceback through that frame: both end here.
        self.conn.parser.close()
        self.conn.parser_exc = None
        # The app's abort handle, a method of this protocol in its scope, is another.
        if (extensions := getattr(self, "scope", {}).get("extensions")) and ABORT in extensions:
            extensions[ABORT] = {"abort": _lost}
            extensions[FRAMES] = {"write_frames": _refused}

    def handle_connect(self, event: Request) -> None:
        gate, peer = type(self).gate, self.client[0] if self.client else None
        if gate is not None and not gate(peer, event.path, event.headers.get("X-Forwarded-For")):
            self._refuse()
            return
        super().handle_connect(event)
        if not self.close_sent:  # accepted: the app starts on this scope at the next turn
            self.scope["extensions"][ABORT] = {"abort": self.abort}
            self.scope["extensions"][FRAMES] = {
                "write_frames": self.write_frames,
                "on_lost": self.on_lost,
            }

    def on_lost(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once the connection is lost: the app reads that only when its
        reader is free, and Engine.IO's is busy with a CONNECT for a whole replay."""
        self._lost = callback

    def write_frames(self, packets: Sequence[Any]) -> bool:
        """Write Engine.IO packets to the client now, all in order, or none (False): not
        before the handshake's response or after a close, not while the transport is
        paused or an ASGI send waits for it (`adapter/frames.py`)."""
        if (
            not self._plain
            or self.close_sent
            or self.disconnected
            or not self.writable.clear_to_write  # type: ignore[attr-defined]
            or self.conn.state is not State.OPEN
        ):
            return False
        write = self.transport.write
        for pkt in packets:
            write(_frame(pkt))
        return True

    def _refuse(self) -> None:
        """What uvicorn answers when the app closes a WebSocket before accepting it."""
        self.handshake_initiated = self.handshake_complete = self.close_sent = True
        self.conn.send_response(self.conn.reject(HTTPStatus.FORBIDDEN, ""))
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()

    def abort(self) -> None:
        """Reset the connection now. After a WebSocket close, uvicorn reads and parses what
        the peer sends until it answers the close, for up to 10 s: a flooder's backlog,
        170,000 frames and more, cost the node seconds of CPU (benchmarks/flood.py). Here
        nothing more is read, what was read and not yet handled is dropped, and the app's
        next ``receive`` is the disconnect."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.transport.abort()
