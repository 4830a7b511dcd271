"""Fan-out past Engine.IO's writer: packets written to the WebSocket as they are delivered.

A delivered packet normally waits on its socket's queue until the socket's writer task
runs: a task wake-up, an ASGI message and a WebSocket frame built anew, for every socket
and every event. A server connection that offers `FRAMES` in its ASGI scope (the gateway's
`CoalescingWebSocketProtocol` does) takes the packets itself, as frames it builds once per
packet and writes for every socket that gets it (server frames are not masked, so all
recipients get the same bytes). Measured in benchmarks/RESULTS.md.

Order is kept: a socket takes packets this way only while nothing waits on its queue or in
its writer (`Outbox.offer`), and only once Engine.IO has finished upgrading it to a
WebSocket; the connection refuses them (and they are queued as before) while its transport
is paused by a client that does not read, so the queue's limits still cut a slow consumer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from engineio.async_drivers import asgi

from . import websocket_loop
from .outbox import Outbox, WriteFrames

__all__ = ["FRAMES", "FramesWebSocket"]

#: The ASGI scope extension of a connection that writes Engine.IO packets as WebSocket
#: frames: ``scope["extensions"][FRAMES]["write_frames"](packets) -> bool``, all of them
#: written in order, or none (False: the connection cannot take them now); and, if it
#: has it, ``["on_lost"](callback)``: ``callback()`` once the connection is lost.
FRAMES = "socketio_kafka.frames"


class FramesWebSocket(asgi.WebSocket):  # type: ignore[misc]
    """Engine.IO's ASGI WebSocket, handing its connection's `FRAMES` to the socket's
    `Outbox` once the socket is upgraded (at the first receive after it is).

    Its socket is served by `websocket_loop.serve` in place of the socket's own handler
    (the handler is a method of its socket). Its hooks return their coroutines rather than
    awaiting them: a coroutine of ours around them would stay alive, waiting, for the
    connection's whole life (about 1 kB a connection, measured by benchmarks/memory.py).
    Once the connection is gone, its writer refuses every packet, so the `Outbox` may
    keep it.
    """

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(handler, server)
        self._frames: WriteFrames | None = None
        self._on_lost: Callable[[Callable[[], object]], None] | None = None

    def __call__(self, environ: dict[str, Any]) -> Awaitable[str]:
        extension = (environ["asgi.scope"].get("extensions") or {}).get(FRAMES)
        self._frames = extension["write_frames"] if extension else None
        self._on_lost = extension.get("on_lost") if extension else None
        self.asgi_receive = environ["asgi.receive"]
        self.asgi_send = environ["asgi.send"]
        return websocket_loop.serve(self.handler.__self__, self)

    def wait(self) -> Awaitable[Any]:
        if self._frames is not None:
            socket = self.handler.__self__  # the handler is a method of its socket
            if socket.upgraded:
                if isinstance(queue := socket.queue, Outbox):
                    queue.write_frames = self._frames
                    if self._on_lost is not None:
                        # A replay paced by the socket's drain learns of it at once.
                        self._on_lost(queue.close)
                self._frames = self._on_lost = None
        return super().wait()  # type: ignore[no-any-return]
