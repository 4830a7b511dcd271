"""A connection's messages in order, its CONNECTs handled off Engine.IO's reader."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
import socketio

from socketio_kafka.adapter import lanes as lanes_module
from socketio_kafka.adapter.lanes import MAX_WAITING, MAX_WAITING_BYTES, Lanes
from socketio_kafka.gateway.app import create_app
from socketio_kafka.gateway.settings import Settings

from .support.jsclient import JsClient
from .support.rawclient import engineio_url
from .support.recovering import RecoveringRecorder, joining_server, replays_paused
from .support.server import run_server
from .support.waiting import wait_until


class _Handler:
    """Records what it handles; a CONNECT ("0...") waits until ``go`` is set."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, Any]] = []
        self.connecting = asyncio.Event()
        self.go = asyncio.Event()

    async def disconnected(self, eio_sid: str, reason: str) -> None:
        self.handled.append((eio_sid, f"disconnect: {reason}"))

    def closing(self, eio_sid: str) -> None:
        """As the server closes the connection's queue: a replay waiting on it ends."""
        self.handled.append((eio_sid, "closing"))
        self.go.set()

    async def __call__(self, eio_sid: str, data: Any) -> None:
        if isinstance(data, str) and data.startswith("0"):
            self.connecting.set()
            await self.go.wait()
        if data == "boom":
            raise RuntimeError("a handler that fails")
        self.handled.append((eio_sid, data))


def _lanes(handler: _Handler) -> Lanes:
    return Lanes(handler, handler.disconnected, handler.closing)


async def _settled(lanes: Lanes) -> None:
    await wait_until(lambda: len(lanes) == 0, 5, "every lane done")


async def test_messages_after_a_connect_wait_for_it_in_order_and_others_go_on() -> None:
    handler = _Handler()
    lanes = _lanes(handler)
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
    lanes = _lanes(handler)
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


async def test_a_connection_s_disconnect_waits_for_what_it_sent_before_it() -> None:
    """Its reader reads the close at once now: what it read before is handled first, as
    when the close was read only after it (a last emit, a DISCONNECT that ends a session)."""
    handler = _Handler()
    lanes = _lanes(handler)
    await lanes.receive("a", "0")
    await lanes.receive("a", '2["last"]')
    await lanes.receive("a", "1")
    await asyncio.wait_for(lanes.disconnect("a", "transport close"), 5)
    assert [data for _, data in handler.handled] == [
        "closing",
        "0",
        '2["last"]',
        "1",
        "disconnect: transport close",
    ]


async def test_a_disconnect_waits_for_a_connect_that_hangs_only_so_long(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(lanes_module, "CLOSE_WAIT_S", 0.1)
    handler = _Handler()
    lanes = Lanes(handler, handler.disconnected, lambda eio_sid: None)  # the CONNECT hangs
    await lanes.receive("a", "0")
    await lanes.receive("a", '2["after"]')
    with caplog.at_level(logging.WARNING, "socketio_kafka.lanes"):
        await asyncio.wait_for(lanes.disconnect("a", "transport close"), 5)
    assert handler.handled == [("a", "disconnect: transport close")]
    assert "its CONNECT still runs" in caplog.text
    handler.go.set()
    await _settled(lanes)
    # Handled once it ends, but what came after it is not: python-socketio forgot the
    # connection meanwhile.
    assert [data for _, data in handler.handled] == ["disconnect: transport close", "0"]


async def test_a_connect_that_closes_its_own_connection_does_not_wait_for_itself() -> None:
    """A CONNECT refused, told to retry or cut closes its connection from its own lane:
    Engine.IO runs the disconnect in the caller's task, which waited its whole bound for
    itself (5 s a client retrying while Kafka is away)."""
    handled: list[Any] = []
    lanes: Lanes

    async def handle(eio_sid: str, data: Any) -> None:
        handled.append(data)
        if data == "0":
            async with asyncio.timeout(1):  # in this task, as Engine.IO's close calls it
                await lanes.disconnect(eio_sid, "server disconnect")

    async def disconnected(eio_sid: str, reason: str) -> None:
        handled.append(f"disconnect: {reason}")

    lanes = Lanes(handle, disconnected, lambda eio_sid: None)
    await lanes.receive("a", "0")
    await lanes.receive("a", '2["after"]')
    await _settled(lanes)
    assert handled == ["0", "disconnect: server disconnect"]


async def test_a_handler_that_fails_is_logged_and_the_lane_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = _Handler()
    handler.go.set()
    lanes = _lanes(handler)
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
    # Whole seconds: Engine.IO's handshake tells the client int(ping_interval) * 1000.
    sio = joining_server(kafka_url, channel, ping_interval=2, ping_timeout=2)
    js = await JsClient().start()
    manager = sio.kafka
    # The first connect is a fresh one: the replay paused is the recovery's.
    with replays_paused(sio) as (replaying, go):
        async with manager, run_server(socketio.ASGIApp(sio)) as url:
            try:
                sid = (await js.connect(url, reconnection=False, transports=[transport]))["id"]
                assert await js.call("join", "lobby") is True
                await manager.close_transport(manager.eio_sid_from_sid(sid, "/"), "transport close")
                await wait_until(lambda: not manager.is_connected(sid, "/"), 10, "the drop noticed")
                # Until the client has seen its connection go: a reconnect before is a no-op.
                await wait_until(
                    lambda: any(r["type"] == "disconnect" for r in js.reports), 10, "JS disconnect"
                )
                for n in range(3):
                    await sio.emit("news", n, to="lobby")
                await js.send("reconnect")
                await asyncio.wait_for(replaying.wait(), 10)
                socket = sio.eio.sockets[manager.eio_sid_from_sid(sid, "/")]
                receive, pongs = socket.receive, []

                async def counted(pkt: Any) -> None:
                    pongs.append(pkt.packet_type == 3)  # engineio's PONG
                    await receive(pkt)

                socket.receive = counted
                # Three heartbeats while the replay waits: without them the client closes within
                # four seconds (its ping interval and timeout) of the first.
                await wait_until(lambda: sum(pongs) >= 3, 15, "3 PONGs handled during the replay")
                go.set()
                assert await js.wait_count("news", 3) == [0, 1, 2]
                assert js.connects()[-1] == {"type": "connect", "id": sid, "recovered": True}
                disconnects = [r for r in js.reports if r["type"] == "disconnect"]
                assert disconnects == [{"type": "disconnect", "reason": "transport close"}]
            finally:
                go.set()
                await js.close()


@pytest.mark.kafka
@pytest.mark.timeout(60)
@pytest.mark.parametrize("node", ["library", "instrumented", "gateway"])
async def test_what_a_client_sent_during_its_replay_is_handled_when_it_drops_again(
    kafka_url: str, channel: str, node: str
) -> None:
    """The client's emits after its CONNECT reply wait for the replay; its connection
    dropping meanwhile once threw them away (and a DISCONNECT among them, its session
    then kept): the reader had read them before the close, and handles them first. The
    gateway's guard drops what a closing connection sends, but for those, and forgets
    the connection only after them. The Admin UI's ``instrument`` wraps the disconnect."""
    admin = None
    if node == "gateway":
        app: Any = create_app(Settings(channel=channel), kafka_url)
        sio = app.state.node.sio
        joined: Any = {"ok": True}
    else:
        sio = joining_server(kafka_url, channel)
        app, joined = socketio.ASGIApp(sio), True
        if node == "instrumented":
            admin = sio.instrument(auth=False, mode="production")
    notes: list[str] = []

    async def note(sid: str, text: str) -> None:
        notes.append(text)

    sio.on("note", note)
    client = RecoveringRecorder()
    manager = sio.kafka
    # The first connect is a fresh one: the replay paused is the recovery's.
    with replays_paused(sio) as (replaying, go):
        async with manager, run_server(app) as url:
            try:
                await client.connect(url)
                sid = client.sid
                room = {"room": "lobby"} if node == "gateway" else "lobby"
                assert await client.client.call("join", room) == joined
                await client.drop_transport()
                await wait_until(lambda: not manager.is_connected(sid, "/"), 10, "the drop noticed")
                await sio.emit("news", 0, to="lobby")
                await client.connect(url)
                assert client.client.recovered["/"]
                await asyncio.wait_for(replaying.wait(), 10)
                eio_sid = manager.eio_sid_from_sid(sid, "/")
                messages = sio.eio.sockets[eio_sid].receive
                read: list[Any] = []

                async def counted(pkt: Any) -> None:
                    read.append(pkt.data)
                    await messages(pkt)

                sio.eio.sockets[eio_sid].receive = counted
                await client.client.emit("note", "saved draft")
                await wait_until(lambda: len(read) == 1, 10, "the note read by the node")
                socket = sio.eio.sockets[eio_sid]
                await client.drop_transport()
                await wait_until(lambda: socket.closing, 10, "the node's disconnect under way")
                go.set()
                await wait_until(lambda: notes == ["saved draft"], 10, "the note handled")
                await wait_until(lambda: eio_sid not in sio.eio.sockets, 10, "the disconnect done")
                if node == "gateway":  # the note's token bucket went with the connection
                    assert eio_sid not in sio.limits._events._buckets
            finally:
                go.set()
                await client.close()
                if admin is not None:  # it patches Engine.IO's classes
                    await admin.shutdown()
                    admin.uninstrument()


@pytest.mark.kafka
@pytest.mark.timeout(60)
async def test_a_polling_js_client_that_gives_its_connection_up_recovers(
    kafka_url: str, channel: str
) -> None:
    """engine.io-client sends Engine.IO's CLOSE over polling when it gives a connection up
    (its ping timeout, a failed poll, here its engine closed): python-engineio calls that
    a client disconnect, and the sessions were ended, where Node's server keeps them."""
    # Short heartbeats: a long-poll the exiting client leaves holds the server's stop up to
    # the ping interval.
    sio = joining_server(kafka_url, channel, ping_interval=2, ping_timeout=2)
    js = await JsClient().start()
    manager = sio.kafka
    async with manager, run_server(socketio.ASGIApp(sio)) as url:
        try:
            sid = (await js.connect(url, reconnection=False, transports=["polling"]))["id"]
            assert await js.call("join", "lobby") is True
            await js.send("drop")
            await wait_until(lambda: not manager.is_connected(sid, "/"), 10, "the drop noticed")
            for n in range(2):
                await sio.emit("news", n, to="lobby")
            await js.send("reconnect")
            await js.wait_connects(2)
            assert js.connects()[-1] == {"type": "connect", "id": sid, "recovered": True}
            assert await js.wait_count("news", 2) == [0, 1]
        finally:
            await js.close()


@pytest.mark.kafka
@pytest.mark.timeout(60)
async def test_a_namespace_a_node_does_not_serve_is_refused_though_claimed(
    kafka_url: str, channel: str
) -> None:
    """A node without "/chat" (a rolling deploy, an older release) restored a claimed
    "/chat" session into a namespace no handler answers; a fresh CONNECT there was refused."""
    serving = joining_server(kafka_url, channel)
    serving.on("join", namespace="/chat")(lambda sid, room: True)
    other = joining_server(kafka_url, channel)
    client = RecoveringRecorder()
    async with (
        serving.kafka,
        other.kafka,
        run_server(socketio.ASGIApp(serving)) as first,
        run_server(socketio.ASGIApp(other)) as second,
    ):
        try:
            await client.client.connect(first, namespaces=["/chat"], transports=["websocket"])
            sid = client.client.get_sid("/chat")
            assert client.client.pids.get("/chat")
            await client.drop_transport()
            manager = serving.kafka
            await wait_until(lambda: not manager.is_connected(sid, "/chat"), 10, "the drop")
            with pytest.raises(socketio.exceptions.ConnectionError):
                await client.client.connect(
                    second, namespaces=["/chat"], transports=["websocket"], wait_timeout=5
                )
            assert other.recoveries.total() == 0
            assert not other.kafka.is_connected(sid, "/chat")
        finally:
            await client.close()


@pytest.mark.kafka
@pytest.mark.timeout(60)
async def test_a_polling_client_s_close_answers_its_waiting_long_poll(
    kafka_url: str, channel: str
) -> None:
    """python-engineio answered a long-poll GET waiting when its client sent Engine.IO's
    CLOSE only at the poll's timeout, 45 s later: a request held open, and the server's
    stop held up as long."""
    sio = joining_server(kafka_url, channel)
    async with (
        sio.kafka,
        run_server(socketio.ASGIApp(sio)) as url,
        httpx.AsyncClient(timeout=60) as http,
    ):
        handshake = await http.get(engineio_url(url, "polling"))
        eio_sid = json.loads(handshake.text[1:])["sid"]
        socket, waiting = sio.eio.sockets[eio_sid], asyncio.Event()
        poll = socket.poll

        async def watched() -> Any:
            waiting.set()
            return await poll()

        socket.poll = watched
        session = engineio_url(url, "polling", eio_sid)
        polling = asyncio.create_task(http.get(session))
        await asyncio.wait_for(waiting.wait(), 10)  # the GET waits for packets
        await http.post(session, content="1")
        answer = await asyncio.wait_for(polling, 10)
        # A NOOP, as Node's server answers it (an empty body reads as a parser error).
        assert (answer.status_code, answer.text) == (200, "6")
