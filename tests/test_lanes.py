"""A connection's messages in order, its CONNECTs handled off Engine.IO's reader."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import socketio

from socketio_kafka.adapter import AsyncKafkaManager, RecoveringAsyncServer
from socketio_kafka.adapter.lanes import MAX_WAITING, MAX_WAITING_BYTES, Lanes

from .support.jsclient import JsClient
from .support.server import run_server
from .support.waiting import wait_until


class _Handler:
    """Records what it handles; a CONNECT ("0...") waits until ``go`` is set."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, Any]] = []
        self.connecting = asyncio.Event()
        self.go = asyncio.Event()

    async def __call__(self, eio_sid: str, data: Any) -> None:
        if isinstance(data, str) and data.startswith("0"):
            self.connecting.set()
            await self.go.wait()
        if data == "boom":
            raise RuntimeError("a handler that fails")
        self.handled.append((eio_sid, data))


async def _settled(lanes: Lanes) -> None:
    await wait_until(lambda: len(lanes) == 0, 5, "every lane done")


async def test_messages_after_a_connect_wait_for_it_in_order_and_others_go_on() -> None:
    handler = _Handler()
    lanes = Lanes(handler)
    await lanes.receive("a", "0")
    # Engine.IO's reader is free again at once: the CONNECT waits in a task of its own.
    await asyncio.wait_for(handler.connecting.wait(), 5)
    await lanes.receive("a", '2["one"]')
    await lanes.receive("a", 42)
    await lanes.receive("b", '2["elsewhere"]')  # another connection is not held up
    assert handler.handled == [("b", '2["elsewhere"]')]
    handler.go.set()
    await _settled(lanes)
    assert handler.handled == [("b", '2["elsewhere"]'), ("a", "0"), ("a", '2["one"]'), ("a", 42)]
    await lanes.receive("a", '2["two"]')  # handled in place once the lane is done
    assert handler.handled[-1] == ("a", '2["two"]')


@pytest.mark.parametrize(
    "flood", [[f'2["{n}"]' for n in range(MAX_WAITING + 1)], ["x" * MAX_WAITING_BYTES, "y"]]
)
async def test_a_client_that_floods_during_its_connect_waits_for_it(flood: list[str]) -> None:
    handler = _Handler()
    lanes = Lanes(handler)
    await lanes.receive("a", "0")
    *kept, over = flood
    for data in kept:
        await lanes.receive("a", data)
    waiting = asyncio.create_task(lanes.receive("a", over))
    for _ in range(10):  # everything ready runs: the CONNECT waits on ``go`` alone
        await asyncio.sleep(0)
    assert not waiting.done()  # bounded: the reader waits while the CONNECT runs
    assert [data for _, data in handler.handled] == []
    handler.go.set()
    await asyncio.wait_for(waiting, 5)
    await _settled(lanes)
    assert [data for _, data in handler.handled] == ["0", *flood]


async def test_a_closed_connection_s_waiting_messages_go_nowhere() -> None:
    handler = _Handler()
    lanes = Lanes(handler)
    await lanes.receive("a", "0")
    await lanes.receive("a", '2["late"]')
    lanes.close("a")
    handler.go.set()
    await _settled(lanes)
    assert handler.handled == [("a", "0")]


async def test_a_handler_that_fails_is_logged_and_the_lane_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = _Handler()
    handler.go.set()
    lanes = Lanes(handler)
    with caplog.at_level(logging.ERROR, "socketio_kafka.lanes"):
        await lanes.receive("a", "0")
        await lanes.receive("a", "boom")
        await lanes.receive("a", '2["after"]')
        await _settled(lanes)
    assert handler.handled[-1] == ("a", '2["after"]')
    assert "message handler error on connection a" in caplog.text


@pytest.mark.kafka
@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_the_js_client_keeps_its_heartbeat_while_its_replay_is_long(
    kafka_url: str, channel: str, transport: str
) -> None:
    """A replay longer than Engine.IO's heartbeat (a client reading slowly, a long gap):
    its CONNECT held up the PONGs read after it, no PING followed, and the JS client closed
    a healthy connection at its ping timeout, then lost its recovery's events."""
    sio = RecoveringAsyncServer(
        client_manager=AsyncKafkaManager(kafka_url, channel=channel),
        async_mode="asgi",
        connection_state_recovery={},
        # Whole seconds: Engine.IO's handshake tells the client int(ping_interval) * 1000.
        ping_interval=1,
        ping_timeout=1,
    )

    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    sio.on("join", join)
    replay = sio._replay
    replaying, go = asyncio.Event(), asyncio.Event()

    async def paused_replay(*args: Any) -> int:
        replaying.set()
        await go.wait()
        return await replay(*args)

    js = await JsClient().start()
    manager = sio.kafka
    async with manager, run_server(socketio.ASGIApp(sio)) as url:
        try:
            sid = (await js.connect(url, reconnection=False, transports=[transport]))["id"]
            assert await js.call("join", "lobby") is True
            await manager.close_transport(manager.eio_sid_from_sid(sid, "/"), "transport close")
            await wait_until(lambda: not manager.is_connected(sid, "/"), 10, "the drop noticed")
            for n in range(3):
                await sio.emit("news", n, to="lobby")
            sio._replay = paused_replay  # type: ignore[method-assign]
            await js.send("reconnect")
            await asyncio.wait_for(replaying.wait(), 10)
            socket = sio.eio.sockets[manager.eio_sid_from_sid(sid, "/")]
            receive, pongs = socket.receive, []

            async def counted(pkt: Any) -> None:
                pongs.append(pkt.packet_type == 3)  # engineio's PONG
                await receive(pkt)

            socket.receive = counted
            # Three heartbeats while the replay waits: without them the client closes within
            # two seconds (its ping interval and timeout) of the first.
            await wait_until(lambda: sum(pongs) >= 3, 15, "3 PONGs handled during the replay")
            go.set()
            assert await js.wait_count("news", 3) == [0, 1, 2]
            assert js.connects()[-1] == {"type": "connect", "id": sid, "recovered": True}
            disconnects = [r for r in js.reports if r["type"] == "disconnect"]
            assert disconnects == [{"type": "disconnect", "reason": "transport close"}]
        finally:
            go.set()
            await js.close()
