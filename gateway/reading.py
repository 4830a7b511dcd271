"""Bounds on reading an HTTP request: the time it takes, and the size of its head.

uvicorn bounds neither. A connection that sends nothing, half a request's headers, or its
body a byte at a time was held for as long as its client liked (an open file and 7.5 kB
each); one that sends headers without end made the node keep them all (httptools gathers
a header whole, however long, before uvicorn sees it). The connect rate does not help: it
counts Engine.IO handshakes, which such a request never reaches. docs/decisions.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .limits import READ_TIMEOUT, REQUEST_HEAD

if TYPE_CHECKING:
    from .inbound import InboundBudget

__all__ = ["MAX_HEAD_BYTES", "BoundedHTTPProtocol", "Refused"]

#: ``refused(limit, peer)``: a connection closed over one of these bounds, by the limit's
#: name (`READ_TIMEOUT`, `REQUEST_HEAD`) and the TCP peer's address.
Refused = Callable[[str, str | None], None]

#: The most a request's line and headers may take. nginx's buffers for them hold 32 kB by
#: default, Node's parser takes 16; a JWT in a header or a browser's cookies are a few kB.
MAX_HEAD_BYTES = 64 * 1024

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 31\r\nconnection: close\r\n"
    b"\r\nRequest header fields too large"
)


class BoundedHTTPProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol (httptools', of uvicorn[standard]) with a deadline on reading
    each request and a bound on its head; it lets go of its parser once a WebSocket took over.

    The deadline runs from the connection, and from each later request's first byte, to the
    request's last byte. A response, however long (a long-polling GET held until there is
    something to send), is not read, so not bound; between requests uvicorn's keep-alive
    timeout bounds the wait. A head past `MAX_HEAD_BYTES` is answered 431. Either closes the
    connection and tells ``refused``. What it holds of a request's head or body not yet
    whole counts in the node's ``inbound`` budget (`InboundBudget`), which may close it.

    The parser holds the protocol's bound callbacks: each upgraded connection left that
    cycle for the collector, and a burst of connections made its young collections take
    55-113 ms of the event loop (benchmarks/RESULTS.md, session 14).
    """

    def __init__(
        self,
        read_timeout: float,
        refused: Refused,
        inbound: InboundBudget | None = None,
        **uvicorn: Any,
    ) -> None:
        super().__init__(**uvicorn)
        self._read_timeout = read_timeout
        self._refused = refused
        self._inbound = inbound
        self._reading: asyncio.TimerHandle | None = None
        #: Bytes of the request head being read, once it began and until it is whole.
        self._head: int | None = None
        #: Bytes of the request body read, from its head's end until it is whole.
        self._body: int | None = None
        #: What this connection holds in ``inbound``'s count.
        self._held = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_from_now()

    def connection_lost(self, exc: Exception | None) -> None:
        self._read_done()
        self._hold(0)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Still in a head once all of it is parsed: all of it was head (give or take the
        # end of a request before it, on a connection that pipelines).
        if self._head is not None:
            self._head += len(data)
            if self._head > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._head = None
                self.transport.write(_TOO_LARGE)
                self._refuse(REQUEST_HEAD)
        self._hold(self._head or self._body or 0)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head = 0
        if self._reading is None:
            self._read_from_now()

    def on_headers_complete(self) -> None:
        self._head = None
        self._body = 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        # Once answered, uvicorn drops the rest of a body unread (a request too large for
        # Engine.IO, say): nothing is held, and a client sending on must not count.
        if self._body is not None and not self.cycle.response_complete:
            self._body += len(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._body = None
        self._read_done()

    def cut_inbound(self) -> None:
        """Over the node's inbound budget: closed, nothing more read (`InboundBudget`)."""
        self._held = 0
        self.transport.close()

    def handle_websocket_upgrade(self) -> None:
        self._read_done()
        self._body = None
        self._hold(0)
        super().handle_websocket_upgrade()
        self.__dict__.pop("parser", None)

    def _hold(self, nbytes: int) -> None:
        if nbytes != self._held and self._inbound is not None:
            self._held = nbytes
            self._inbound.hold(self, nbytes)

    def _read_from_now(self) -> None:
        self._reading = self.loop.call_later(self._read_timeout, self._too_slow)

    def _read_done(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None

    def _too_slow(self) -> None:
        self._reading = None
        if not self.transport.is_closing():
            self._refuse(READ_TIMEOUT)

    def _refuse(self, limit: str) -> None:
        self._refused(limit, self.client[0] if self.client else None)
        self.transport.close()
