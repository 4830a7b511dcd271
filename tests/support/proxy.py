"""A TCP proxy that can cut its clients off while the server still believes them there,
as a network that drops a phone's packets does (nothing reaches the server to say so)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from .cluster import free_port


class BlackHoleProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_port``; `sever` cuts the client side only."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._clients: list[asyncio.StreamWriter] = []
        #: Server-side connections kept open (unread) after `sever`.
        self._held: list[asyncio.StreamWriter] = []
        self._pumps: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self._clients.append(writer)
        self._held.append(upstream_writer)
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()

    async def sever(self) -> None:
        """Close every client connection; the server's side stays open and silent."""
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for writer in self._clients:
            writer.close()
        self._clients.clear()

    async def close(self) -> None:
        await self.sever()
        for writer in self._held:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def black_hole_proxy(target_port: int) -> AsyncIterator[BlackHoleProxy]:
    proxy = BlackHoleProxy(target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
