"""Graceful drain: what ``serve`` does between SIGTERM and exit, within a deadline.

1. At once: ``/readyz`` answers 503 (``draining``) and handshakes are refused, so that a
   balancer and reconnecting clients go elsewhere (`GuardedServer.drain`).
2. Every connection is closed as a lost transport, its recovery session saved to Kafka:
   its client reconnects to another node and recovers what it missed there.
3. uvicorn's own shutdown: listeners closed, requests finished, then the app's lifespan
   stops the manager, which flushes what was produced.

Past ``timeout_s`` from the signal the process exits anyway (status 1), whatever waits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from types import FrameType

import uvicorn

from .guard import GuardedServer

__all__ = ["DrainingServer"]

logger = logging.getLogger("socketio_kafka.gateway")

#: Of the deadline, what closing the clients may take; the rest is uvicorn's and the flush's.
_CLOSING_SHARE = 0.5
_OVERDUE_STATUS = 1


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining ``sio`` on the first SIGTERM or SIGINT; a second signal
    stops at once, as uvicorn's second Ctrl-C does."""

    def __init__(self, config: uvicorn.Config, sio: GuardedServer, timeout_s: float) -> None:
        super().__init__(config)
        self._sio = sio
        self._timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None
        self._watchdog: threading.Timer | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await super().serve(sockets)
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None or self._watchdog is not None or self.should_exit:
            super().handle_exit(sig, frame)
            self.force_exit = True
            return
        # A signal handler: the loop is told, the work is done there.
        self._watchdog = threading.Timer(self._timeout_s, _overdue, (self._timeout_s,))
        self._watchdog.daemon = True
        self._watchdog.start()
        self._loop.call_soon_threadsafe(self._start_drain, sig)

    def _start_drain(self, sig: int) -> None:
        self._draining = asyncio.create_task(self._drain(sig))

    async def _drain(self, sig: int) -> None:
        logger.warning("draining within %.1fs", self._timeout_s)
        try:
            async with asyncio.timeout(self._timeout_s * _CLOSING_SHARE):
                await self._sio.drain()
        except TimeoutError:
            logger.warning("draining: connections still closing; shutting down anyway")
        except Exception:  # the shutdown below must run whatever went wrong here
            logger.exception("draining failed; shutting down")
        super().handle_exit(sig, None)  # uvicorn's shutdown, re-raising `sig` once done


def _overdue(timeout_s: float) -> None:
    logger.error("drain did not finish within %.1fs: exiting now", timeout_s)
    logging.shutdown()
    os._exit(_OVERDUE_STATUS)
