"""gateway/websocket.py: frames written in one go per loop turn, in order, none lost."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
import socketio
import uvicorn

from benchmarks import flood
from socketio_kafka.gateway.websocket import ABORT, CoalescingTransport, CoalescingWebSocketProtocol

from .support.cluster import free_port
from .support.server import run_server
from .support.waiting import wait_until


class RecordingTransport:
    """The calls a transport gets, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes | None]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def close(self) -> None:
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.calls.append(("abort", None))

    def is_closing(self) -> bool:
        return False


def _coalescing() -> tuple[CoalescingTransport, RecordingTransport]:
    inner = RecordingTransport()
    return CoalescingTransport(inner, asyncio.get_running_loop()), inner  # type: ignore[arg-type]


async def test_writes_of_one_loop_turn_go_out_as_one() -> None:
    transport, inner = _coalescing()
    for frame in (b"a", b"bc", bytearray(b"d"), memoryview(b"ef")):
        transport.write(frame)
    assert inner.calls == []
    await asyncio.sleep(0)
    assert inner.calls == [("write", b"abcdef")]
    transport.write(b"g")
    await asyncio.sleep(0)
    assert inner.calls[1:] == [("write", b"g")]


async def test_close_sends_what_is_pending_first() -> None:
    transport, inner = _coalescing()
    transport.write(b"last words")
    transport.close()
    assert inner.calls == [("write", b"last words"), ("close", None)]
    await asyncio.sleep(0)
    assert len(inner.calls) == 2  # the scheduled flush finds nothing left


async def test_abort_drops_what_is_pending() -> None:
    transport, inner = _coalescing()
    transport.write(b"never")
    transport.abort()
    await asyncio.sleep(0)
    assert inner.calls == [("abort", None)]


async def test_everything_else_is_the_transport_s_own() -> None:
    transport, _ = _coalescing()
    assert transport.is_closing() is False


@pytest.mark.timeout(60)
async def test_a_burst_reaches_a_real_client_in_order_in_fewer_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flushes = 0
    flush = CoalescingTransport.flush

    def counting_flush(self: CoalescingTransport) -> None:
        nonlocal flushes
        flushes += 1
        flush(self)

    monkeypatch.setattr(CoalescingTransport, "flush", counting_flush)
    sio = socketio.AsyncServer(async_mode="asgi")
    count = 500

    @sio.on("burst")  # type: ignore[untyped-decorator]
    async def burst(sid: str) -> None:
        # Queued together, as the Kafka manager queues a fetched batch.
        await asyncio.gather(*(sio.emit("n", seq, to=sid) for seq in range(count)))

    port = free_port()
    config = uvicorn.Config(
        socketio.ASGIApp(sio),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        ws=CoalescingWebSocketProtocol,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    client = socketio.AsyncClient()
    got: list[int] = []
    client.on("n", got.append)
    try:
        await wait_until(lambda: server.started, 15, "uvicorn to start")
        await client.connect(f"http://127.0.0.1:{port}", transports=["websocket"])
        before = flushes
        await client.emit("burst")
        await wait_until(lambda: len(got) >= count, 30, "the burst")
        assert got == list(range(count))
        assert 0 < flushes - before < count / 10
    finally:
        await client.disconnect()
        server.should_exit = True
        await task


@pytest.mark.timeout(60)
async def test_a_gate_refuses_before_the_app_and_the_app_can_reset_a_connection() -> None:
    """The gate answers 403 without calling the app; the ABORT extension resets the
    connection, and what was read but not yet received by the app is dropped."""
    received: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        received.append(await receive())  # websocket.connect
        await send({"type": "websocket.accept"})
        received.append(await receive())  # the first of two frames written together
        scope["extensions"][ABORT]["abort"]()
        received.append(await receive())  # not the second frame: the disconnect

    def gate(peer: str | None, path: str, forwarded_for: str | None) -> bool:
        return peer != "127.0.0.7" and path.startswith("/socket.io/")

    async with run_server(app, ws=CoalescingWebSocketProtocol.gated(gate)) as url:
        port = int(url.rsplit(":", 1)[1])
        refused = await flood.upgrade("127.0.0.1", port, "127.0.0.7")
        refused.writer.transport.abort()
        assert refused.status == 403
        assert received == []  # the app was never called
        up = await flood.upgrade("127.0.0.1", port, "127.0.0.8")
        assert up.status == 101
        up.writer.write(flood.frame("first") + flood.frame("second"))
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            async with asyncio.timeout(5):
                await flood.read_frame(up.reader)  # no close frame: a reset
        await wait_until(lambda: len(received) == 3, 5, "the app's disconnect")
        assert [m["type"] for m in received] == [
            "websocket.connect",
            "websocket.receive",
            "websocket.disconnect",
        ]
        assert received[1]["text"] == "first"
        up.writer.transport.abort()


@pytest.mark.timeout(60)
async def test_a_closed_connection_is_freed_without_the_collector() -> None:
    """Closed cleanly or reset, nothing of a connection waits for the cycle collector: a
    churn of connections would make its pauses long, and what the gateway froze out of its
    sight (gateway/collector.py) it would never free."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    parsers: list[weakref.ref[Any]] = []

    class Watched(CoalescingWebSocketProtocol):
        def start_keepalive(self) -> None:
            super().start_keepalive()
            parsers.append(weakref.ref(self.conn))

    gc.disable()
    try:
        async with run_server(app, ws=Watched) as url:
            port = int(url.rsplit(":", 1)[1])
            ups = [await flood.upgrade("127.0.0.1", port, "127.0.0.1") for _ in range(5)]
            await wait_until(lambda: len(parsers) == 5, 5, "5 handshakes")
            for up in ups[:2]:  # the closing handshake, then the server closes the TCP
                up.writer.write(flood.frame("", opcode=0x8))
                assert (await flood.read_frame(up.reader))[0] == 0x8
                assert await up.reader.read() == b""
                up.writer.close()
            for up in ups[2:4]:
                up.writer.transport.abort()
            ups[4].writer.write(b"\x81\x01x")  # unmasked: websockets fails the connection
            assert (await flood.read_frame(ups[4].reader)) == (0x8, b"\x03\xeaincorrect masking")
            ups[4].writer.close()
            await wait_until(
                lambda: all(parser() is None for parser in parsers), 10, "connections freed"
            )
    finally:
        gc.enable()
