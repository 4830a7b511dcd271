"""A TCP relay between one gateway node and Kafka that the chaos harness can cut and restore.

Cut, it behaves as a network partition: every open connection goes silent (bytes already
on their way are dropped, nothing is closed, so the node learns of it only through its own
timeouts) and new connections are accepted and left unanswered. Restored, the silent
connections are closed (as a partition that lasted longer than TCP's patience ends) and new
ones are forwarded again.

The relay runs its own event loop on a thread, so the harness drives it from plain code::

    relay = Relay(listen_port=p, target_port=kafka.relay_target_port)
    relay.start()
    relay.cut(); ...; relay.restore()
    relay.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any

__all__ = ["Relay"]

_HOST = "127.0.0.1"
_CHUNK = 65536


class Relay:
    """Forwards ``127.0.0.1:listen_port`` to ``127.0.0.1:target_port`` until `cut`."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Connections forwarded so far, and those held silent while cut.
        self.forwarded = 0
        self.held = 0

    @property
    def is_cut(self) -> bool:
        return self._cut

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    def cut(self) -> None:
        """Silence every connection, open or new, until `restore`."""
        self._call(self._set_cut(True))

    def restore(self) -> None:
        """Close the silenced connections and forward new ones again."""
        self._call(self._set_cut(False))

    def close(self) -> None:
        """Stop listening and close every connection. Safe to call twice."""
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, _HOST, self.listen_port)

    async def _set_cut(self, cut: bool) -> None:
        self._cut = cut
        if not cut:
            await self._drop_all()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._drop_all()

    async def _drop_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self._cut:
            self.held += 1  # accepted, never answered: a partition, not a refusal
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection(_HOST, self.target_port)
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self.forwarded += 1
        self._writers.add(upstream)
        for source, sink in ((reader, upstream), (upstream_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(_CHUNK):
                if self._cut:
                    continue  # read and dropped: the far side hears nothing
                sink.write(data)
                await sink.drain()
        if not self._cut:
            sink.close()  # one side ended: end the other, as the network would
