"""Engine.IO v4 spoken by hand, over WebSocket and long-polling, to send what no client would.

Frames go out as given (text or binary, valid or not); nothing here checks them. A node
closing the connection mid-way is an answer, never an error: every send and read stops
quietly once the connection is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as connect_to
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from benchmarks.flood import read_frame


class RawText(bytes):
    """Bytes sent in a *text* frame, unchecked: how invalid UTF-8 reaches a text parser."""


Frame = str | bytes

#: A Socket.IO CONNECT to the main namespace, no auth.
CONNECT = "40"
#: Packets of a polling POST body are separated by this record separator.
SEPARATOR = "\x1e"


def engineio_url(base: str, transport: str, sid: str | None = None) -> str:
    url = f"{base}/socket.io/?EIO=4&transport={transport}"
    return f"{url}&sid={sid}" if sid else url


async def websocket_barrage(
    base: str, frames: Sequence[Frame], *, connect: bool = False, read_s: float = 0.05
) -> bool:
    """Open a WebSocket session, send ``frames``, read what comes back for ``read_s``.

    True when the node kept the connection open to the end, False when it closed it.
    """
    try:
        async with websocket_session(base, connect=connect) as ws:
            for frame in frames:
                await send(ws, frame)
            return await _drain(ws, read_s)
    except (ConnectionClosed, InvalidHandshake, OSError):
        return False


@contextlib.asynccontextmanager
async def websocket_session(base: str, *, connect: bool) -> AsyncIterator[ClientConnection]:
    """An open Engine.IO session over WebSocket.

    With ``connect``, a Socket.IO CONNECT to ``/`` is sent first and its answer awaited:
    the node handles a session's packets concurrently, so frames sent without waiting
    would race the CONNECT and be refused as coming from a socket not yet connected.
    """
    url = engineio_url(base.replace("http://", "ws://"), "websocket")
    async with connect_to(url, max_size=None, open_timeout=10, close_timeout=2) as ws:
        await _expect(ws, "0{")
        if connect:
            await ws.send(CONNECT)
            await _expect(ws, "40", "44")
        yield ws


async def closed_by_node(ws: ClientConnection) -> None:
    """Return once the node closed the session: an Engine.IO CLOSE, or the WebSocket's."""
    with contextlib.suppress(ConnectionClosed):
        while await ws.recv() != "1":
            pass


async def send(ws: ClientConnection, frame: Frame) -> None:
    await ws.send(frame, text=True if isinstance(frame, RawText) else None)


async def _expect(ws: ClientConnection, *prefixes: str) -> None:
    """Skip frames (pings, say) until one starting with one of ``prefixes``."""
    async with asyncio.timeout(10):
        while True:
            frame = await ws.recv()
            if isinstance(frame, str) and frame.startswith(prefixes):
                return


async def _drain(ws: ClientConnection, seconds: float) -> bool:
    """Read (and drop) frames until ``seconds`` pass quietly; False once the node closed."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), seconds)
    except TimeoutError:
        return True
    except ConnectionClosed:
        return False


async def polling_barrage(base: str, bodies: Sequence[bytes]) -> list[int]:
    """Open a polling session, POST each body as is; the status of every POST."""
    async with httpx.AsyncClient(timeout=10) as http:
        handshake = await http.get(engineio_url(base, "polling"))
        assert handshake.status_code == 200, handshake.text
        assert handshake.text.startswith("0{"), handshake.text
        sid = json.loads(handshake.text[1:])["sid"]
        statuses = []
        for body in bodies:
            with contextlib.suppress(httpx.TransportError):
                reply = await http.post(engineio_url(base, "polling", sid), content=body)
                statuses.append(reply.status_code)
        return statuses


def polling_body(frames: Sequence[Frame]) -> bytes:
    """Frames as one POST body: text as is, binary base64-less (raw bytes, as an attacker)."""
    parts = [f.encode("utf-8", "surrogatepass") if isinstance(f, str) else f for f in frames]
    return SEPARATOR.encode().join(parts)


async def close_code(reader: asyncio.StreamReader) -> int | None:
    """The code of the close frame a node sent on a raw WebSocket (`benchmarks.flood`'s
    ``upgrade``), past the frames before it, once it closed the connection too; None if it
    reset it or closed it without one."""
    try:
        async with asyncio.timeout(10):
            while (received := await read_frame(reader))[0] != 0x8:
                pass
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None
    async with asyncio.timeout(10):
        assert await reader.read() == b""
    return int.from_bytes(received[1][:2])
