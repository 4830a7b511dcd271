"""Every emit shape reaches a client on another node byte for byte as python-socketio's own
manager delivers it on one node: the frames on the wire, compared."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import socketio
from websockets.asyncio.client import ClientConnection, connect

from socketio_kafka.adapter import AsyncKafkaManager

from .support.server import run_server

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

Frame = str | bytes
END = '42["end"]'


@dataclass(frozen=True)
class Shape:
    """One ``emit`` call: its data and, given the client's sid, its other arguments."""

    data: Any
    to: Callable[[str], Any] = lambda sid: None
    skip_sid: Callable[[str], Any] = lambda sid: None
    callback: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _ignore(*args: Any) -> None:
    """An ack callback: what matters here is the packet that asks for it."""


SHAPES = {
    "no-argument": Shape(()),
    "none": Shape(None),
    "one-none": Shape((None,)),
    "tuple": Shape((1, "two", [3.5, {"k": None}], False)),
    "list": Shape([1, 2]),
    "dict": Shape({"a": {"b": [1, True, None]}, "": 0}),
    "bytes": Shape(b"\x00\xff"),
    "nested-bytes": Shape(({"raw": b"\x01", "more": [b"\x02", "x"]}, b"\x03")),
    "unicode": Shape("é😀\u2028\x00"),
    "big-ints": Shape((2**64, -(2**63) - 1, 10**30, 2**63 - 1)),
    "to-sid": Shape("hi", to=lambda sid: sid),
    "to-rooms": Shape("hi", to=lambda sid: ["nobody-here", "lobby"]),
    "to-rooms-tuple": Shape("hi", to=lambda sid: ("nobody-here", "lobby")),
    "skip-sid": Shape("hi", skip_sid=lambda sid: sid),
    "skip-sid-list": Shape("hi", skip_sid=lambda sid: ["other", sid]),
    "callback": Shape(("x", b"\x07"), to=lambda sid: sid, callback=True),
    "callback-none": Shape(None, to=lambda sid: sid, callback=True),
}


class RawClient:
    """A Socket.IO client spoken by hand: keeps every frame after its connect, as is."""

    def __init__(self, ws: ClientConnection, sid: str) -> None:
        self.ws = ws
        self.sid = sid

    @classmethod
    @asynccontextmanager
    async def connect(cls, base: str) -> AsyncIterator[RawClient]:
        url = base.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        async with connect(url, max_size=None, open_timeout=10) as ws:
            opened = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(opened, str), opened
            assert opened.startswith("0{"), opened
            await ws.send("40")
            connected = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(connected, str), connected
            assert connected.startswith("40{"), connected
            yield cls(ws, json.loads(connected[2:])["sid"])

    async def frames_until_end(self, timeout: float = 20) -> list[Frame]:
        """Every frame up to and with the ``end`` event; pings answered, not kept."""
        frames: list[Frame] = []
        deadline = time.monotonic() + timeout
        while not frames or frames[-1] != END:
            frame = await asyncio.wait_for(self.ws.recv(), deadline - time.monotonic())
            if frame == "2":
                await self.ws.send("3")
            else:
                frames.append(frame)
        return frames


async def _emit(sio: socketio.AsyncServer, shape: Shape, sid: str) -> None:
    to, skip = shape.to(sid), shape.skip_sid(sid)
    callback = _ignore if shape.callback else None
    await sio.emit("e", shape.data, to=to, skip_sid=skip, callback=callback)
    # The same target, hence the same partition: the end marker comes after the shape.
    await sio.emit("end", to=to)


async def _received(sio: socketio.AsyncServer, base: str, shape: Shape, joins: Any) -> list[Frame]:
    async with RawClient.connect(base) as client:
        await joins.enter_room(client.sid, "lobby")
        await _emit(sio, shape, client.sid)
        return await client.frames_until_end()


async def _kafka_node(stack: AsyncExitStack, kafka_url: str, channel: str) -> socketio.AsyncServer:
    manager = AsyncKafkaManager(kafka_url, channel=channel)
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)
    await manager.start()
    stack.push_async_callback(manager.stop)
    return sio


@pytest.mark.parametrize(
    "shape",
    [
        *(pytest.param(shape, id=name) for name, shape in SHAPES.items()),
        pytest.param(Shape((None,), to=lambda sid: sid, callback=True), id="callback-one-none"),
    ],
)
async def test_every_emit_shape_arrives_as_python_socketio_delivers_it(
    kafka_url: str, channel: str, shape: Shape
) -> None:
    stock = socketio.AsyncServer(async_mode="asgi")
    async with AsyncExitStack() as stack:
        emitter = await _kafka_node(stack, kafka_url, channel)
        receiver = await _kafka_node(stack, kafka_url, channel)
        stock_url = await stack.enter_async_context(run_server(socketio.ASGIApp(stock)))
        receiver_url = await stack.enter_async_context(run_server(socketio.ASGIApp(receiver)))
        expected = await _received(stock, stock_url, shape, stock)
        # Emitted on one node, received by a client of another.
        assert await _received(emitter, receiver_url, shape, receiver) == expected
