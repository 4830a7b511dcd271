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

from socketio_kafka.adapter.outbox import SlimQueue

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


class _Flag:
    """What uvicorn uses of ``asyncio.Event`` for its ``writable`` flag, waiters in a list."""

    def __init__(self, is_set: bool) -> None:
        self._set = is_set
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

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


class CoalescingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol writing through a `CoalescingTransport`.

    Lighter per connection too (benchmarks/memory.py): its incoming events wait on a
    `SlimQueue` (an ``asyncio.Queue`` is four deques, 3 KB), its flow control on a `_Flag`
    (an ``asyncio.Event`` is a deque, 760 bytes), and the handshake's request
    and response, with their headers, are dropped once the response went out (uvicorn
    reads neither again; the app has the headers in its scope).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = SlimQueue()  # type: ignore[assignment]
        self.writable = _Flag(self.writable.is_set())  # type: ignore[assignment]

    def start_keepalive(self) -> None:
        super().start_keepalive()  # called once, right after the handshake's response
        del self.request, self.response

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport = CoalescingTransport(self.transport, self.loop)  # type: ignore[assignment]
