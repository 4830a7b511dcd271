"""Clients that stop reading are cut off, their sessions kept; reading again, they recover.

A real Kafka, a real uvicorn, the official JS client paused with SIGSTOP, and a raw
WebSocket client that never reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio
from websockets.asyncio.client import ClientConnection, connect

from socketio_kafka.adapter import (
    AsyncKafkaManager,
    OutboxLimits,
    RecoveringAsyncServer,
)
from socketio_kafka.adapter.budget import MemoryBudget
from socketio_kafka.adapter.outbox import SLOW_CONSUMER, Outbox, Outboxes
from socketio_kafka.gateway import protocol
from socketio_kafka.gateway.websocket import CoalescingWebSocketProtocol

from .support.jsclient import JsClient
from .support.recovering import RecoveringRecorder
from .support.server import run_server
from .support.sockets import served_on
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

ROOM = "R"
#: 10 KB events: a paused client's kernel takes tens of MB on loopback before it pushes back.
PAD = "x" * 10_000


class PeakOutbox(Outbox):
    """Remembers the most packets it ever held, and the most its node's budget counted
    as it took one."""

    peak = 0
    budget_peak = 0

    def _put(self, item: Any) -> None:
        super()._put(item)
        self.peak = max(self.peak, self.qsize())
        self.budget_peak = max(self.budget_peak, self.budget.bytes)


class PeakOutboxes(Outboxes):
    def __init__(self, limits: OutboxLimits, budget: MemoryBudget) -> None:
        super().__init__(limits, budget)
        self.made: list[PeakOutbox] = []

    def create_queue(self, *args: Any, **kwargs: Any) -> PeakOutbox:
        queue = PeakOutbox(self.limits, self.budget)
        self.made.append(queue)
        return queue


class Node:
    """One in-process node: the gateway's protocol on a recovering server."""

    def __init__(
        self, kafka_url: str, channel: str, limits: OutboxLimits, replay_timeout: float = 60
    ) -> None:
        self.manager = AsyncKafkaManager(kafka_url, channel=channel, limits=limits)
        self.outboxes = self.manager.outboxes = PeakOutboxes(limits, self.manager.budget)
        self.sio = RecoveringAsyncServer(
            client_manager=self.manager,
            async_mode="asgi",
            connection_state_recovery={"replay_timeout": replay_timeout},
        )
        self.reasons: list[str] = []
        self.sio.on("disconnect", self._disconnected)
        protocol.register(self.sio)
        self.asgi = socketio.ASGIApp(self.sio)

    async def _disconnected(self, sid: str, reason: str) -> None:
        self.reasons.append(reason)

    async def flood(self, count: int, start: int = 0) -> None:
        """``count`` events to the room, in order (each chunk acknowledged before the next)."""
        for first in range(start, start + count, 500):
            last = min(first + 500, start + count)
            await asyncio.gather(
                *(
                    self.manager.emit("ev", {"seq": i, "pad": PAD}, room=ROOM)
                    for i in range(first, last)
                )
            )

    def eio_sid(self, sid: str) -> str:
        return str(self.manager.eio_sid_from_sid(sid, "/"))


@pytest.fixture
async def paused_js() -> AsyncIterator[JsClient]:
    """The client the test stops with SIGSTOP: resumed before it is closed."""
    client = await JsClient().start()
    try:
        yield client
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(client.pid, signal.SIGCONT)
        await client.close()


async def _reader(url: str) -> RecoveringRecorder:
    reader = await RecoveringRecorder().connect(url)
    assert await reader.client.call("join", {"room": ROOM}) == {"ok": True}
    return reader


async def _drop_behind(node: Node, client: RecoveringRecorder, count: int) -> tuple[str, str]:
    """The client has one event, drops, and misses ``count`` more: its pid and offset.

    The node has read them all when this returns, so that a claim's replay is all it is
    sent (in a full suite run the node was still reading them at the claim: records
    arriving live were held for the stalled replay, past its hold's bound).
    """
    await node.flood(1)
    await client.wait_count("ev", 1)
    pid, offset = client.client.pids["/"], client.client.offsets["/"]
    await client.drop_transport()
    await node.flood(count, start=1)
    await wait_until(lambda: node.manager.stats.records_consumed > count, 60, "the flood read")
    return pid, offset


def _seqs(events: list[Any]) -> list[int]:
    return [e["seq"] for e in events]


async def test_a_paused_js_client_is_cut_and_recovers_every_event_once(
    kafka_url: str, channel: str, paused_js: JsClient, js: JsClient
) -> None:
    count, limits = 8000, OutboxLimits(max_bytes=4 * 1024 * 1024)
    node = Node(kafka_url, channel, limits)
    async with node.manager, run_server(node.asgi) as url:
        connected = await paused_js.connect(url, reconnectionDelay=200)
        assert await paused_js.call("join", {"room": ROOM}) == {"ok": True}
        await js.connect(url)
        assert await js.call("join", {"room": ROOM}) == {"ok": True}
        queue = node.sio.eio.sockets[node.eio_sid(connected["id"])].queue
        os.kill(paused_js.pid, signal.SIGSTOP)
        await node.flood(count)
        expected = _seqs(await js.wait_count("ev", count, timeout=120))
        assert sorted(expected) == list(range(count))
        # Cut once, everything it had queued dropped, its session kept for recovery.
        await wait_until(lambda: node.manager.stats.slow_consumers_cut == 1, 30, "the cut")
        await wait_until(lambda: SLOW_CONSUMER in node.reasons, 10, "its disconnect")
        assert queue.shed
        assert queue.qsize() <= 1
        assert queue.bytes <= 1
        assert queue.peak <= 420 + 200  # its limit and one fetched batch at most
        assert node.manager.eio_sid_from_sid(connected["id"], "/") is None
        os.kill(paused_js.pid, signal.SIGCONT)
        await paused_js.wait_connects(2, timeout=60)
        assert paused_js.connects()[-1] == {
            "type": "connect",
            "id": connected["id"],
            "recovered": True,
        }
        assert _seqs(await paused_js.wait_count("ev", count, timeout=120)) == expected
        # Nothing more: a marker after the flood is the next event it gets.
        await node.flood(1, start=count)
        assert _seqs(await paused_js.wait_count("ev", count + 1)) == [*expected, count]
        assert node.manager.stats.slow_consumers_cut == 1


async def _small_window_client(url: str) -> ClientConnection:
    """A raw WebSocket client with a small receive window (its kernel takes little of what
    it does not read), opened at Engine.IO's level."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, set before connect
    sock.setblocking(False)
    host, port = url.removeprefix("http://").split(":")
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    ws = await connect(
        f"ws://{host}:{port}/socket.io/?EIO=4&transport=websocket", sock=sock, max_queue=1
    )
    opened = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(opened, str)
    assert opened.startswith("0{")
    return ws


async def _stalled_claim(url: str, pid: str, offset: str) -> ClientConnection:
    """A raw WebSocket client claiming a session, that reads nothing after the handshake."""
    ws = await _small_window_client(url)
    await ws.send("40" + json.dumps({"pid": pid, "offset": offset}))
    return ws  # never read again; aborting its transport ends it


async def _stalled_member(url: str) -> ClientConnection:
    """A raw client connected and in the room, that reads nothing after its join's ack."""
    ws = await _small_window_client(url)
    await ws.send("40")
    reply = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(reply, str)
    assert reply.startswith("40{")
    await ws.send("421" + json.dumps(["join", {"room": ROOM}]))
    assert await asyncio.wait_for(ws.recv(), 10) == '431[{"ok":true}]'
    return ws  # never read again; aborting its transport ends it


async def test_a_replay_to_a_client_that_does_not_read_is_paced_then_cut(
    kafka_url: str, channel: str
) -> None:
    count, limits = 3000, OutboxLimits(max_packets=400)
    node = Node(kafka_url, channel, limits, replay_timeout=5)
    async with node.manager, run_server(node.asgi) as url:
        client = await _reader(url)
        try:
            pid, offset = await _drop_behind(node, client, count)
            stalled = await _stalled_claim(url, pid, offset)
            try:
                await wait_until(lambda: node.manager.stats.slow_consumers_cut == 1, 30, "cut")
            finally:
                stalled.transport.abort()
            replayed = node.outboxes.made[-1]
            # Never more than the low-water mark and one record's packets queued at once.
            assert 0 < replayed.peak <= limits.low_packets + 1
            assert replayed.shed
            assert node.sio.recoveries["failed", ""] == 1  # cut by its replay's timeout
            await wait_until(lambda: SLOW_CONSUMER in node.reasons, 10, "its disconnect")
            # The session was kept: claimed again from the same offset, all of it, once.
            try:
                await client.client.connect(url, transports=["websocket"])
            except socketio.exceptions.ConnectionError as exc:
                # What the node made of the claim: a retry, a failed replay, a second cut.
                raise AssertionError(
                    f"reconnect failed: {dict(node.sio.recoveries)}, reasons {node.reasons}, "
                    f"cuts {node.manager.stats.slow_consumers_cut}"
                ) from exc
            assert client.client.recovered["/"] is True
            events = await client.wait_count("ev", count + 1, timeout=60)
            assert _seqs(events) == list(range(count + 1))
        finally:
            await client.close()


async def _read_events(ws: ClientConnection, count: int) -> list[int]:
    """Read a raw client's events until it has ``count``, answering pings; their seqs."""
    seqs: list[int] = []
    while len(seqs) < count:
        message = await asyncio.wait_for(ws.recv(), 30)
        if message == "2":
            await ws.send("3")
        elif isinstance(message, str) and message.startswith("42"):
            seqs.append(json.loads(message[2:])[1]["seq"])
    return seqs


async def test_a_replay_outrun_by_live_traffic_reads_on_without_a_cut(
    kafka_url: str, channel: str
) -> None:
    """While a replay waits on its client, the live events of its rooms are held for it;
    past the socket's byte bound (far below its packet bound here) they are dropped, not
    kept growing, and once the client reads, its replay reads on past its end to them:
    every event once, in order, on the same connection."""
    count, live = 1000, 300  # 10 MB to replay; then 3 MB live, over the 2 MB bound
    limits = OutboxLimits(max_packets=400, max_bytes=2 * 1024 * 1024)
    node = Node(kafka_url, channel, limits, replay_timeout=120)
    async with node.manager, run_server(node.asgi) as url:
        client = await _reader(url)
        try:
            pid, offset = await _drop_behind(node, client, count)
            ws = await _stalled_claim(url, pid, offset)
            try:
                reply = await asyncio.wait_for(ws.recv(), 10)
                assert isinstance(reply, str)
                assert json.loads(reply[2:])["pid"] == pid  # its CONNECT reply: recovered
                # Its replay waits for a drain that does not come; live events are held.
                await wait_until(lambda: node.manager.stats.events_replayed > 0, 30, "replay")
                await node.flood(live, start=count + 1)
                await wait_until(
                    lambda: node.manager.stats.records_consumed > count + live, 60, "live read"
                )
                assert node.manager.holds.bytes <= limits.max_bytes  # dropped past it
                assert await _read_events(ws, count + live) == list(range(1, count + live + 1))
                await wait_until(lambda: node.sio.recoveries["recovered", ""] == 1, 30, "done")
                assert node.manager.stats.replays_outrun >= 1
                assert node.manager.stats.slow_consumers_cut == 0
                await node.flood(1, start=count + live + 1)  # live again: the next event
                assert await _read_events(ws, 1) == [count + live + 1]
            finally:
                ws.transport.abort()
            # Nothing left held or buffered for recoveries (the node's gauges of it).
            assert node.manager.holds.bytes == 0
            assert node.manager.shared_replays.held == node.manager.shared_replays.held_bytes == 0
        finally:
            await client.close()


async def _paused_mid_replay(node: Node, js: JsClient, url: str, count: int) -> dict[str, Any]:
    """The official client in the room with one event, gone while paused (SIGSTOP), then
    back (its claim replays the ``count`` it missed) and paused again mid-replay: its
    first connect."""
    connected = await js.connect(url, reconnectionDelay=200)
    assert await js.call("join", {"room": ROOM}) == {"ok": True}
    await node.flood(1)
    await js.wait_count("ev", 1)
    # Gone while paused: it notices once it runs again, and claims its session.
    os.kill(js.pid, signal.SIGSTOP)
    await node.manager.close_transport(node.eio_sid(connected["id"]), "transport close")
    await node.flood(count, start=1)
    await wait_until(lambda: node.manager.stats.records_consumed > count, 60, "the flood read")
    replayed = node.manager.stats.events_replayed
    os.kill(js.pid, signal.SIGCONT)
    await wait_until(lambda: node.manager.stats.events_replayed >= replayed + 300, 30, "replay")
    os.kill(js.pid, signal.SIGSTOP)  # mid-replay
    return connected


async def test_a_js_client_that_stops_reading_mid_replay_recovers_each_event_once(
    kafka_url: str, channel: str, paused_js: JsClient
) -> None:
    """The official client, paused during its replay until the replay's timeout cuts it,
    then reading again: it claims from the last event it handed out, and its app sees
    every event once, in order (before the CONNECT reply came first, 419 of 4,000 twice)."""
    count = 4000
    node = Node(kafka_url, channel, OutboxLimits(), replay_timeout=3)
    async with node.manager, run_server(node.asgi) as url:
        connected = await _paused_mid_replay(node, paused_js, url, count)
        await wait_until(lambda: node.sio.recoveries["failed", ""] >= 1, 30, "the timeout")
        os.kill(paused_js.pid, signal.SIGCONT)
        # Each attempt's CONNECT reply came; the last one's replay was whole.
        await wait_until(lambda: node.sio.recoveries["recovered", ""] == 1, 60, "a recovery")
        connects = paused_js.connects()
        assert connects[0]["recovered"] is False
        assert len(connects) >= 3
        assert all(c["recovered"] and c["id"] == connected["id"] for c in connects[1:])
        await node.flood(1, start=count + 1)  # a marker: the next event after the flood
        events = await paused_js.wait_count("ev", count + 2, timeout=120)
        assert _seqs(events) == list(range(count + 2))


async def test_a_js_client_outrun_by_live_events_mid_replay_gets_each_once_unbroken(
    kafka_url: str, channel: str, paused_js: JsClient
) -> None:
    """The official client paused mid-replay while 3 MB of live events come for it, over
    its 2 MB bound, then reading again: its replay reads on to them on the same connection
    (no second reconnect), and its app sees every event once, in order."""
    count, live = 4000, 300
    limits = OutboxLimits(max_bytes=2 * 1024 * 1024)
    node = Node(kafka_url, channel, limits, replay_timeout=120)
    async with node.manager, run_server(node.asgi) as url:
        connected = await _paused_mid_replay(node, paused_js, url, count)
        await node.flood(live, start=count + 1)
        total = count + live + 1
        await wait_until(lambda: node.manager.stats.records_consumed > total - 1, 60, "live read")
        os.kill(paused_js.pid, signal.SIGCONT)
        events = await paused_js.wait_count("ev", total, timeout=120)
        assert _seqs(events) == list(range(total))
        await wait_until(lambda: node.sio.recoveries["recovered", ""] == 1, 30, "the recovery")
        assert paused_js.connects()[1:] == [
            {"type": "connect", "id": connected["id"], "recovered": True}
        ]
        assert node.manager.stats.slow_consumers_cut == 0
        assert node.manager.stats.replays_outrun >= 1  # its hold was outrun: it read on


async def test_clients_that_stop_reading_together_are_cut_at_the_nodes_budget(
    kafka_url: str, channel: str
) -> None:
    """3 clients in a room stop reading while 15 MB of events come: each stays under its
    own bound (16 MiB), together they keep more than the node's budget of 4 MiB, so they
    are cut (their sessions kept), the furthest behind first; a client that reads gets
    every event once and is never cut."""
    count = 1500
    limits = OutboxLimits(node_max_bytes=4 * 1024 * 1024)
    node = Node(kafka_url, channel, limits)
    async with node.manager, run_server(node.asgi) as url:
        reader = await _reader(url)
        stalled = [await _stalled_member(url) for _ in range(3)]
        try:
            await node.flood(count)
            assert _seqs(await reader.wait_count("ev", count, timeout=120)) == list(range(count))
            await wait_until(lambda: node.reasons.count(SLOW_CONSUMER) == 3, 30, "the cuts")
        finally:
            for ws in stalled:
                ws.transport.abort()
            await reader.close()
        assert node.manager.stats.over_node_budget == node.manager.stats.slow_consumers_cut == 3
        # Over the budget by what one fetch brought at most (a partition's 1 MB).
        peak = max(queue.budget_peak for queue in node.outboxes.made)
        assert limits.node_max_bytes < peak < limits.node_max_bytes + 2 * 1024 * 1024
        assert all(queue.peak * len(PAD) < limits.max_bytes for queue in node.outboxes.made)


async def test_a_client_cut_for_not_reading_has_its_connection_closed(
    kafka_url: str, channel: str
) -> None:
    """A cut emptied the client's queue and closed its Engine.IO socket, but the socket's
    writer stayed in a send the client never took: the TCP connection, its ASGI task and
    half a megabyte of buffers stayed for good, out of --max-connections' sight once
    Engine.IO forgot the socket. The cut closes the connection at once, as a flood's
    does (what the client's kernel holds, it still reads before the close)."""
    node = Node(kafka_url, channel, OutboxLimits(max_bytes=1024 * 1024))
    async with (
        node.manager,
        run_server(node.asgi, ws=CoalescingWebSocketProtocol) as url,
    ):
        port = int(url.rpartition(":")[2])
        stalled = await _stalled_member(url)
        try:
            assert served_on(port) == 1
            await node.flood(1500)
            await wait_until(lambda: node.manager.stats.slow_consumers_cut == 1, 30, "the cut")
            await wait_until(lambda: served_on(port) == 0, 10, "the connection closed")
        finally:
            stalled.transport.abort()
