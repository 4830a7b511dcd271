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
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["CoalescingTransport", "CoalescingWebSocketProtocol"]


class CoalescingTransport:
    """Stands in for a transport: ``write`` gathers, the rest is the transport's own."""

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


class CoalescingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol writing through a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport = CoalescingTransport(self.transport, self.loop)  # type: ignore[assignment]
