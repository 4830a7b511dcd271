"""Engine.IO's WebSocket loop without a task and a timer for every incoming packet.

python-engineio reads each packet a client sends over a WebSocket in a task of its own,
awaited through ``asyncio.wait_for`` with the connection's idle timeout: a task, a timer
and their callbacks per packet. Without them a packet took 19 µs in-process instead of 36,
and an acked publish about 9% less of its node's CPU (benchmarks/RESULTS.md, "Session 23").

`serve` is ``AsyncSocket._websocket_handler`` of python-engineio 4.15 (tests/test_seams.py
checks the source it follows) with one difference: the loop reads packets in place, and
one timer for the connection's life cancels a read that waited the idle timeout, so a
client silent that long is dropped as before. The writer is engineio's: it ends the
connection when nothing reached the socket's queue for that timeout, so Engine.IO's own
sends (its pings) must go through the queue (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from engineio import exceptions, packet

__all__ = ["serve"]


class _Idle:
    """The connection's idle timeout: one timer for its life, re-armed when it fires,
    that cancels a read waiting longer than ``timeout_s`` (engineio's ``wait_for``)."""

    __slots__ = ("_expired", "_handle", "_loop", "_read_since", "_task", "_timeout_s")

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        #: When the pending read began; None while no read waits.
        self._read_since: float | None = None
        self._expired = False
        self._handle = self._loop.call_later(timeout_s, self._check)

    async def read(self, wait: Awaitable[Any]) -> Any:
        """``await wait``; TimeoutError once it waited ``timeout_s``."""
        self._read_since = self._loop.time()
        try:
            return await wait
        except asyncio.CancelledError:
            if not self._expired:
                raise
            if self._task is not None:
                self._task.uncancel()
            raise TimeoutError from None
        finally:
            self._read_since = None

    def _check(self) -> None:
        since = self._read_since
        waited = 0.0 if since is None else self._loop.time() - since
        if since is not None and waited >= self._timeout_s and self._task is not None:
            self._expired = True
            self._task.cancel()
            return
        self._handle = self._loop.call_later(self._timeout_s - waited, self._check)

    def stop(self) -> None:
        self._handle.cancel()


async def serve(socket: Any, ws: Any) -> str:
    """Accept the WebSocket ``ws`` (engineio's ASGI ``WebSocket``) and run Engine.IO
    ``socket`` over it until either ends; its HTTP response is empty."""
    await ws.asgi_send({"type": "websocket.accept"})
    await _handle(socket, ws)
    return ""


async def _handle(socket: Any, ws: Any) -> None:
    server = socket.server

    def too_large(data: Any) -> bool:
        return bool(data) and len(data) > server.max_http_buffer_size

    async def websocket_wait() -> Any:
        data = await ws.wait()
        if too_large(data):
            raise ValueError("packet is too large")
        return data

    if socket.connected:
        # the socket was already connected, so this is an upgrade
        socket.upgrading = True  # hold packet sends during the upgrade
        try:
            pkt = await websocket_wait()
        except OSError:
            return
        decoded_pkt = packet.Packet(encoded_packet=pkt)
        if decoded_pkt.packet_type != packet.PING or decoded_pkt.data != "probe":
            server.logger.info("%s: Failed websocket upgrade, no PING packet", socket.sid)
            socket.upgrading = False
            return
        await ws.send(packet.Packet(packet.PONG, data="probe").encode())
        await socket.queue.put(packet.Packet(packet.NOOP))  # end poll
        try:
            pkt = await websocket_wait()
        except OSError:
            socket.upgrading = False
            return
        decoded_pkt = packet.Packet(encoded_packet=pkt)
        if decoded_pkt.packet_type != packet.UPGRADE:
            socket.upgraded = False
            server.logger.info(
                "%s: Failed websocket upgrade, expected UPGRADE packet, received %s instead.",
                socket.sid,
                pkt,
            )
            socket.upgrading = False
            return
        socket.upgraded = True
        socket.upgrading = False
    else:
        socket.connected = True
        socket.upgraded = True

    async def writer() -> None:
        while True:
            packets = None
            try:
                packets = await socket.poll()
            except exceptions.QueueEmpty:
                break
            if not packets:
                # empty packet list returned -> connection closed
                break
            try:
                for pkt in packets:
                    await ws.send(pkt.encode())
            except Exception:
                break
        await ws.close()

    writer_task = asyncio.ensure_future(writer())
    server.logger.info("%s: Upgrade to websocket successful", socket.sid)

    idle = _Idle(server.ping_interval + server.ping_timeout)
    try:
        while True:
            try:
                p = await idle.read(ws.wait())
            except (Exception, asyncio.CancelledError):  # engineio's: a timeout, a close
                break
            if p is None or too_large(p):
                # connection closed by client, or a packet too large (engineio's ValueError,
                # checked here so that a read is one coroutine, not websocket_wait's)
                break
            pkt = packet.Packet(encoded_packet=p)
            try:
                await socket.receive(pkt)
            except exceptions.UnknownPacketError:
                pass
            except exceptions.SocketIsClosedError:
                server.logger.info("Receive error -- socket is closed")
                break
            except Exception:
                # if we get an unexpected exception we log the error and exit
                # the connection properly
                server.logger.exception("Unknown receive error")
    finally:
        idle.stop()

    await socket.queue.put(None)  # unlock the writer task so it can exit
    await asyncio.wait_for(writer_task, timeout=None)
    await socket.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)
