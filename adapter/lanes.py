"""Each connection's Socket.IO messages in order, its CONNECTs off Engine.IO's reader.

python-socketio handles a connection's messages where Engine.IO reads them: one CONNECT
that takes long (a recovery's replay, paced by its client's reads, may take up to
``replay_timeout``; an app's connect handler that calls out) held up every packet read
after it, Engine.IO's PONGs included. Engine.IO sends its next PING only once a PONG is
handled, so the client, seeing none for ``ping_interval + ping_timeout``, closed a
healthy connection (a polling client cannot even send the PONG: its POST waits).

Here a CONNECT is handled in a task of its own, and the messages the connection sends
meanwhile wait in its lane, in order, until it is done, as they waited before; only
Engine.IO's own packets (PONGs, a close) go on. A lane keeps a bounded number of them:
past that, the reader waits for the lane, as it did for the CONNECT before. The
connection's disconnect waits for its lane too (its outgoing queue closed first, so that
a replay ends): what the client sent before it left is handled before its leaving, as
when the reader read the close only after them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Lanes", "message_size"]

logger = logging.getLogger("socketio_kafka.lanes")

#: Messages, and their bytes, a lane keeps while its CONNECT is handled; past either the
#: reader waits for it, as it waited before. Enough for a client's buffered emits and its
#: PONGs; small beside what a connection's WebSocket buffers already (the node's memory
#: stays what the inbound budget says).
MAX_WAITING = 16
MAX_WAITING_BYTES = 16 * 1024

#: How long a disconnect waits for its connection's lane: a connect handler that hangs
#: must not hold up the node's stop.
CLOSE_WAIT_S = 5.0

Handler = Callable[[str, Any], Awaitable[None]]


class _Lane:
    __slots__ = ("bytes", "closed", "done", "draining", "task", "waiting")

    def __init__(self) -> None:
        #: The task handling its CONNECT, then what waited behind it.
        self.task: asyncio.Task[None] | None = None
        self.waiting: deque[Any] = deque()
        self.bytes = 0
        #: Its connection's disconnect waits for it: what it holds was read before the close.
        self.draining = False
        #: Its connection's disconnect went on without it: nothing more is handled.
        self.closed = False
        self.done = asyncio.Event()


def message_size(data: Any) -> int:
    """An Engine.IO message's length as received: it hands one of digits over as an int."""
    return len(data) if isinstance(data, str | bytes) else len(str(data))


def _is_connect(data: Any) -> bool:
    return isinstance(data, str) and data[:1] == "0"


class Lanes:
    """Engine.IO's ``message`` handler, and its ``disconnect``'s wait (the server's
    ``_handle_eio_disconnect``): each connection's messages go to ``handle``
    (python-socketio's ``_handle_eio_message``) in the order they came, a CONNECT in a task
    and the messages after it once it is done; its disconnect goes to ``disconnected``
    once they are, ``closing`` called first (to end a replay)."""

    def __init__(
        self,
        handle: Handler,
        disconnected: Handler,
        closing: Callable[[str], None],
    ) -> None:
        self._handle = handle
        self._disconnected = disconnected
        self._closing = closing
        #: Each busy connection's lane: it holds its task (a reference asyncio needs kept).
        self._busy: dict[str, _Lane] = {}

    def __len__(self) -> int:
        """Connections with a CONNECT being handled."""
        return len(self._busy)

    def draining(self, eio_sid: str) -> bool:
        """Whether this closing connection's messages, read before its close, are being
        handled: a connection closing is otherwise one whose messages go nowhere."""
        lane = self._busy.get(eio_sid)
        return lane is not None and lane.draining and not lane.closed

    async def receive(self, eio_sid: str, data: Any) -> None:
        """Engine.IO's ``message`` handler."""
        while (lane := self._busy.get(eio_sid)) is not None:
            size = message_size(data)
            if len(lane.waiting) < MAX_WAITING and lane.bytes + size <= MAX_WAITING_BYTES:
                lane.waiting.append(data)
                lane.bytes += size
                return
            await lane.done.wait()  # a client that floods waits, as it did before
        if not _is_connect(data):
            await self._handle(eio_sid, data)
            return
        lane = self._busy[eio_sid] = _Lane()
        lane.task = asyncio.get_running_loop().create_task(self._run(eio_sid, lane, data))

    async def disconnect(self, eio_sid: str, reason: str) -> None:
        """Engine.IO's ``disconnect``: once the lane is done, ``disconnected``."""
        lane = self._busy.get(eio_sid)
        if lane is not None and lane.task is asyncio.current_task():
            # Its CONNECT closes its own connection (refused, told to retry, cut): it
            # cannot wait for itself, and what the client sent after it goes nowhere.
            lane.closed = True
        elif lane is not None:
            lane.draining = True
            self._closing(eio_sid)
            try:
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await lane.done.wait()
            except TimeoutError:
                logger.warning(
                    "connection %s closed; its CONNECT still runs after %.0f s: "
                    "what it sent after the CONNECT is dropped",
                    eio_sid,
                    CLOSE_WAIT_S,
                )
                lane.closed = True
        await self._disconnected(eio_sid, reason)

    async def _run(self, eio_sid: str, lane: _Lane, data: Any) -> None:
        try:
            while True:
                try:
                    await self._handle(eio_sid, data)
                except Exception:
                    # As Engine.IO logs a message handler's error: the connection goes on.
                    logger.exception("message handler error on connection %s", eio_sid)
                if lane.closed or not lane.waiting:
                    return
                data = lane.waiting.popleft()
                lane.bytes -= message_size(data)
        finally:
            if self._busy.get(eio_sid) is lane:
                del self._busy[eio_sid]
            lane.done.set()
