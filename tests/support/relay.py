"""A TCP relay in front of a Kafka relay listener (``LocalKafka(relay_port=...)``) that a
test can cut and restore, to take one client off Kafka while Kafka stays up."""

from __future__ import annotations

import asyncio


class Relay:
    """Forwards ``127.0.0.1:<port>`` to ``target``; `cut` closes the listener and every
    connection through it, so the client sees Kafka gone (refused), and `open` restores it."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target)
            if self._server is None:  # cut while this connection was being set up
                return
            self._writers |= {writer, upstream}
            await asyncio.gather(self._pump(reader, upstream), self._pump(upstream_reader, writer))
        except OSError:
            return
        finally:
            writer.close()
            if upstream is not None:
                upstream.close()

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()
