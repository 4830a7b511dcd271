"""Recovery claims that race what a node believes about the client's old connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import socketio
from aiokafka.errors import KafkaTimeoutError
from websockets.asyncio.client import ClientConnection

from socketio_kafka.adapter import (
    AsyncKafkaManager,
    KafkaOptions,
    OutboxLimits,
    PublishError,
    RecoveringAsyncServer,
    recovery,
)
from socketio_kafka.gateway.websocket import CoalescingWebSocketProtocol

from .support.jsclient import JsClient
from .support.proxy import black_hole_proxy
from .support.rawclient import send, websocket_session
from .support.recovering import (
    RecoveringRecorder,
    claimed_by_a_connection_that_goes_while_judged,
    joining_server,
    replays_paused,
)
from .support.server import run_server
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(60)]


async def _in_lobby_then_dropped(client: RecoveringRecorder, url: str) -> str:
    """``client`` connected to ``url``, in room "lobby", then its transport dropped: its sid."""
    await client.connect(url)
    sid = client.sid
    assert await client.client.call("join", "lobby") is True
    await client.drop_transport()
    return sid


@contextlib.asynccontextmanager
async def _serving(*servers: RecoveringAsyncServer) -> AsyncIterator[list[str]]:
    """The servers' managers started, then each served: their URLs."""
    async with contextlib.AsyncExitStack() as stack:
        for server in servers:
            await stack.enter_async_context(server.kafka)
        yield [
            await stack.enter_async_context(run_server(socketio.ASGIApp(server)))
            for server in servers
        ]


async def test_a_client_back_before_its_node_noticed_the_drop_recovers(
    kafka_url: str, channel: str
) -> None:
    sio = joining_server(kafka_url, channel)
    manager = sio.kafka
    client = RecoveringRecorder()
    async with manager, run_server(socketio.ASGIApp(sio)) as url:
        port = urlsplit(url).port
        assert port is not None
        async with black_hole_proxy(port) as proxy:
            try:
                await client.client.connect(proxy.url, transports=["websocket"])
                sid = client.sid
                assert await client.client.call("join", "room") is True
                await sio.emit("news", 0, to="room")
                await client.wait_count("news", 1)
                await proxy.sever()
                await wait_until(lambda: not client.client.connected, 15, "the client's drop")
                # The node has heard nothing: the old transport is still connected there.
                assert manager.is_connected(sid, "/")
                for n in (1, 2, 3):
                    await sio.emit("news", n, to="room")
                await client.client.connect(url, transports=["websocket"])
                assert (client.client.recovered["/"], client.sid) == (True, sid)
                assert await client.wait_count("news", 4) == [0, 1, 2, 3]
                await sio.emit("news", 4, to="room")
                assert await client.wait_count("news", 5) == [0, 1, 2, 3, 4]
            finally:
                await client.close()


async def test_a_claim_kafka_cannot_judge_closes_the_connection_so_the_js_client_retries(
    kafka_url: str, channel: str
) -> None:
    """The JS client ignores Engine.IO's CLOSE packet on a WebSocket: unless the WebSocket
    itself closes, it waits for its ping timeout (45 s) before it tries again."""
    manager = AsyncKafkaManager(kafka_url, channel=channel)
    sio = RecoveringAsyncServer(
        client_manager=manager, async_mode="asgi", connection_state_recovery={}
    )
    real_find = manager.store.find
    refusals: list[str] = []

    async def kafka_away_once(pid: str, wait: float = 3.0) -> Any:
        if not refusals:
            refusals.append(pid)
            raise KafkaTimeoutError("Kafka did not answer")
        return await real_find(pid, wait)

    js = await JsClient().start()
    try:
        async with manager, run_server(socketio.ASGIApp(sio)) as url:
            first = await js.connect(url, reconnectionDelay=100)
            manager.store.find = kafka_away_once
            await js.send("drop")
            await js.wait_connects(2, timeout=20)  # well inside the 45 s ping timeout
            assert refusals
            assert js.connects()[-1] == {"type": "connect", "id": first["id"], "recovered": True}
    finally:
        await js.close()


async def test_a_session_whose_left_record_kafka_refused_still_recovers(
    kafka_url: str, channel: str
) -> None:
    manager = AsyncKafkaManager(kafka_url, channel=channel)
    sio = RecoveringAsyncServer(
        client_manager=manager, async_mode="asgi", connection_state_recovery={}
    )
    real_write = manager.store.write
    refused: list[Any] = []

    async def refuse_the_left_record(records: dict[str, Any]) -> None:
        left = [s for s in records.values() if s is not None and s.disconnected_at is not None]
        if left and not refused:
            refused.extend(left)
            raise PublishError("Kafka did not confirm the record within 15.0s")
        await real_write(records)

    client = RecoveringRecorder()
    async with manager, run_server(socketio.ASGIApp(sio)) as url:
        try:
            await client.client.connect(url, transports=["websocket"])
            sid, pid = client.sid, client.client.pids["/"]
            manager.store.write = refuse_the_left_record
            await client.drop_transport()
            await wait_until(lambda: bool(refused), 10, "the refused left record")
            # Other nodes learn it too: the record is written once Kafka takes it.
            await wait_until(
                lambda: (
                    (s := manager.store.table.sessions.get(pid)) is not None
                    and s.disconnected_at is not None
                ),
                15,
                "the left record, retried",
            )
            await sio.emit("news", 1, to=sid)
            await client.client.connect(url, transports=["websocket"])
            assert (client.client.recovered["/"], client.sid) == (True, sid)
            assert await client.wait_count("news", 1) == [1]
        finally:
            await client.close()


async def test_a_client_that_drops_right_after_its_join_ack_recovers_elsewhere_in_the_room(
    kafka_url: str, channel: str
) -> None:
    """An ack waits for the session record its handler changed: a client that joined,
    dropped at once and reconnected to another node was given a fresh session while its
    join was still on its way to Kafka (the quickstart's demo, about 1 run in 8)."""
    slow, other = joining_server(kafka_url, channel), joining_server(kafka_url, channel)
    real_write = slow.kafka.store.write

    async def slow_write(records: dict[str, Any]) -> None:
        await asyncio.sleep(0.5)  # a Kafka slow to acknowledge
        await real_write(records)

    slow.kafka.store.write = slow_write
    client = RecoveringRecorder()
    async with _serving(slow, other) as (url, other_url):
        try:
            await client.client.connect(url, transports=["websocket"])
            sid = client.sid
            assert await client.client.call("join", "lobby") is True
            await client.drop_transport()
            await other.emit("news", 1, to="lobby")
            await client.client.connect(other_url, transports=["websocket"])
            assert (client.client.recovered["/"], client.sid) == (True, sid)
            assert await client.wait_count("news", 1) == [1]
        finally:
            await client.close()


async def test_a_socket_whose_engineio_session_closed_does_not_cost_the_others_their_records(
    kafka_url: str, channel: str
) -> None:
    """Engine.IO forgets a closed socket before python-socketio's manager does; a batch of
    session records that held such a socket was lost whole (its KeyError), with every other
    socket's join in it."""
    manager = AsyncKafkaManager(kafka_url, channel=channel)
    sio = RecoveringAsyncServer(
        client_manager=manager, async_mode="asgi", connection_state_recovery={}
    )
    real_get_session = sio.eio.get_session
    gone, kept = RecoveringRecorder(), RecoveringRecorder()
    async with manager, run_server(socketio.ASGIApp(sio)) as url:
        try:
            await gone.connect(url)
            await kept.connect(url)
            closed = manager.eio_sid_from_sid(gone.sid, "/")

            async def get_session(eio_sid: str) -> Any:
                if eio_sid == closed:
                    raise KeyError("Session is disconnected")  # as python-engineio says
                return await real_get_session(eio_sid)

            sio.eio.get_session = get_session
            # Both in the writer's next batch.
            await sio.enter_room(gone.sid, "elsewhere")
            await sio.enter_room(kept.sid, "lobby")
            assert await sio.session_saved(kept.sid)
            pid = kept.client.pids["/"]
            await wait_until(
                lambda: (
                    (s := manager.store.table.sessions.get(pid)) is not None and "lobby" in s.rooms
                ),
                10,
                "the kept socket's join in the sessions topic",
            )
        finally:
            sio.eio.get_session = real_get_session
            await gone.close()
            await kept.close()


async def test_a_session_writer_that_fails_is_restarted_and_writes_the_session_again(
    kafka_url: str, channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected error in the session writer died with its task: the batch of session
    records it held was never written, and nothing but garbage collection said so."""
    manager = AsyncKafkaManager(kafka_url, channel=channel)
    sio = RecoveringAsyncServer(
        client_manager=manager, async_mode="asgi", connection_state_recovery={}
    )
    real_write = manager.store.write
    calls: list[dict[str, Any]] = []

    async def write_failing_once(records: dict[str, Any]) -> None:
        calls.append(records)
        if len(calls) == 1:
            raise RuntimeError("a bug in the session store")
        await real_write(records)

    client = RecoveringRecorder()
    async with manager, run_server(socketio.ASGIApp(sio)) as url:
        try:
            await client.connect(url)
            pid = client.client.pids["/"]
            manager.store.write = write_failing_once
            await sio.enter_room(client.sid, "lobby")
            # The waiter waits for the writer's restart, not just for the failed attempt.
            assert await sio.session_saved(client.sid)
            assert len(calls) == 2
            await wait_until(
                lambda: (
                    (s := manager.store.table.sessions.get(pid)) is not None and "lobby" in s.rooms
                ),
                10,
                "the join in the sessions topic",
            )
            health = manager.health()
            assert (health.ready, health.task_restarts) == (True, 1)
            assert "background task 'session-writer' failed" in caplog.text
            assert "a bug in the session store" in caplog.text
        finally:
            manager.store.write = real_write
            await client.close()


class _Instant(float):
    """A monotonic time that counts how often it is compared."""

    compared = 0

    def __lt__(self, other: object) -> bool:
        _Instant.compared += 1
        return float(self) < float(other)  # type: ignore[arg-type]

    def __ge__(self, other: object) -> bool:
        _Instant.compared += 1
        return float(self) >= float(other)  # type: ignore[arg-type]


def test_what_transport_closes_kept_is_forgotten_from_the_oldest_without_a_walk() -> None:
    """Each transport close keeps its session a while for a DISCONNECT that may follow, and
    each disconnect forgets those kept too long ago. A node whose every client drops at once
    must not walk all it keeps on each: at 20,000 that was 6 s of a core, in sum."""
    sio = RecoveringAsyncServer(
        client_manager=AsyncKafkaManager("127.0.0.1:9", channel="c"),
        connection_state_recovery={},
    )
    now = time.monotonic()
    old = {(f"old-{n}", "/"): ("pid", _Instant(now - 3600)) for n in range(10)}
    young = {(f"young-{n}", "/"): ("pid", _Instant(now)) for n in range(1_000)}
    sio._kept.update({**old, **young})
    _Instant.compared = 0
    sio._prune_kept()
    assert sio._kept == young
    assert _Instant.compared <= len(old) + 1


async def test_a_refused_record_its_left_record_superseded_is_not_written_after_it(
    kafka_url: str, channel: str
) -> None:
    """A session record Kafka refused (a broker away) is written again until it takes it.
    Once the client dropped, its "left" record supersedes it: written again after that,
    the old "connected" record was the session's last word, and another node refused the
    claim (still connected elsewhere) with a fresh session: what was missed was lost."""
    a, b = joining_server(kafka_url, channel), joining_server(kafka_url, channel)
    real_write = a.kafka.store.write
    handed: list[str] = []  # the client's session records, as handed to Kafka
    kafka_back = asyncio.Event()
    watched: list[str] = []

    async def kafka_away(records: dict[str, Any]) -> None:
        if not watched or watched[0] not in records:
            await real_write(records)
            return
        session = records[watched[0]]
        left = session is None or session.disconnected_at is not None
        handed.append("left" if left else "connected")
        if not left and "left" not in handed:
            raise PublishError("Kafka did not confirm the record within 15.0s")
        await kafka_back.wait()  # waiters go on in turn: to Kafka in the order handed
        await real_write(records)

    client = RecoveringRecorder()
    async with _serving(a, b) as (url, other_url):
        try:
            await client.client.connect(url, transports=["websocket"])
            sid = client.sid
            watched.append(client.client.pids["/"])
            a.kafka.store.write = kafka_away
            assert await client.client.call("join", "lobby") is True
            await wait_until(lambda: a.unsaved_sessions == 1, 10, "the refused join record")
            await client.drop_transport()
            await wait_until(
                lambda: "left" in handed and a.unsaved_sessions == 0,
                15,
                "the left record handed over, nothing left to write again",
            )
            assert handed[handed.index("left") :] == ["left"]
            kafka_back.set()
            await b.emit("news", 1, to="lobby")
            await client.client.connect(other_url, transports=["websocket"])
            assert (client.client.recovered["/"], client.sid) == (True, sid)
            assert await client.wait_count("news", 1) == [1]
        finally:
            kafka_back.set()
            a.kafka.store.write = real_write
            await client.close()


async def test_a_connection_closed_while_its_claim_was_judged_leaves_the_session_claimable(
    kafka_url: str, channel: str
) -> None:
    """A claim can be judged for seconds (a session still live on a node that just died).
    A connection closed meanwhile (a drain, a client that gave up) had its disconnect run
    before it had a socket: its claim, won afterwards, registered a socket nobody would
    remove, in its rooms for good and "connected" in Kafka; every later claim of the
    session got a fresh one (connected here), and what the client missed was lost."""
    sio = joining_server(kafka_url, channel)
    client = RecoveringRecorder()
    async with _serving(sio) as (url,):
        try:
            sid = await _in_lobby_then_dropped(client, url)
            await claimed_by_a_connection_that_goes_while_judged(sio, url, client, sid, "lobby")
        finally:
            await client.close()


async def test_a_second_connect_that_claims_a_session_is_refused_and_leaves_it_claimable(
    kafka_url: str, channel: str
) -> None:
    """A connection already in a namespace that sends another CONNECT to it, with a pid:
    its claim once won, then failed to register a second socket for the connection; the
    session stayed claimed by a socket that never was, "connected" for good, and its
    client got a fresh one. python-socketio refuses a second CONNECT ("Unable to
    connect"); so must a claim, at once or after its judgment (sent together)."""
    sio = joining_server(kafka_url, channel)
    manager = sio.kafka
    client = RecoveringRecorder()
    async with _serving(sio) as [url]:
        try:
            await client.connect(url)
            sid = client.sid
            assert await client.client.call("join", "lobby") is True
            claim = "40" + json.dumps(client.client._recovery_auth(None, "/"))
            for n, frames in enumerate(([claim], [claim, "40"])):
                await client.drop_transport()
                await wait_until(lambda: not manager.is_connected(sid, "/"), 10, "drop noticed")
                async with websocket_session(url, connect=not n) as ws:
                    for frame in frames:
                        await send(ws, frame)
                    answers = await _answers(ws, len(frames))
                assert sum(a.startswith("44") for a in answers) == 1, answers
                await wait_until(lambda: not manager.is_connected(sid, "/"), 10, "ws closed")
                await sio.emit("news", n, to="lobby")
                await client.connect(url)
                assert (client.client.recovered["/"], client.sid) == (True, sid)
                assert await client.wait_count("news", n + 1) == list(range(n + 1))
        finally:
            await client.close()


async def test_a_kick_from_another_node_does_not_hold_up_deliveries_while_it_is_saved(
    kafka_url: str, channel: str
) -> None:
    """A node applies another node's ``disconnect(sid)`` as it reads it, and it once
    awaited the session's end in Kafka there: a round trip per kicked socket (a mass kick,
    seconds), the request timeout with the sessions topic's leader away, and no event
    delivered to anyone on the node meanwhile."""
    here, there = joining_server(kafka_url, channel), joining_server(kafka_url, channel)
    store = here.kafka.store
    write = store.write
    ending, saved = asyncio.Event(), asyncio.Event()

    async def held_write(records: Any) -> None:
        if None in records.values():  # the kicked session's end, and what follows it
            ending.set()
            await saved.wait()
        await write(records)

    kicked, stays, again = RecoveringRecorder(), RecoveringRecorder(), RecoveringRecorder()
    async with _serving(here, there) as [url, _]:
        try:
            for client in (kicked, stays):
                await client.connect(url)
                assert await client.client.call("join", "lobby") is True
            sid = kicked.sid
            again.client.pids.update(kicked.client.pids)
            again.client.offsets.update(kicked.client.offsets)
            store.write = held_write  # type: ignore[method-assign]
            await there.disconnect(sid)
            await asyncio.wait_for(ending.wait(), 10)
            await there.emit("news", 1, to="lobby")
            assert await stays.wait_count("news", 1, timeout=10) == [1]
            assert not saved.is_set()
            saved.set()
            await wait_until(lambda: not here.kafka.is_connected(sid, "/"), 10, "the kick")
            await again.connect(url)
            assert again.client.recovered["/"] is False  # the server ended it: not kept
        finally:
            saved.set()
            store.write = write  # type: ignore[method-assign]
            for client in (kicked, stays, again):
                await client.close()


async def test_a_client_back_while_its_disconnect_handler_runs_recovers_into_its_rooms(
    kafka_url: str, channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    """python-socketio unregisters a leaving socket after the app's ``disconnect``
    handler returns. A client back on the same node while an async one ran was restored
    under the same sid, then unregistered with the old socket: connected, in none of its
    rooms, its session "connected" in Kafka for good."""
    sio = joining_server(kafka_url, channel)
    leaving, left = asyncio.Event(), asyncio.Event()

    async def disconnect(sid: str, reason: str) -> None:
        leaving.set()
        await left.wait()  # a database write, say

    sio.on("disconnect", disconnect)
    client = RecoveringRecorder()
    async with _serving(sio) as [url]:
        try:
            sid = await _in_lobby_then_dropped(client, url)
            await asyncio.wait_for(leaving.wait(), 10)
            caplog.set_level(logging.INFO, "socketio_kafka.recovery")
            back = asyncio.create_task(client.connect(url))
            await wait_until(
                lambda: back.done() or "disconnect handler" in caplog.text, 10, "the claim"
            )
            left.set()
            await back
            assert (client.client.recovered["/"], client.sid) == (True, sid)
            await sio.emit("news", 1, to="lobby")
            assert await client.wait_count("news", 1, timeout=10) == [1]
        finally:
            left.set()
            await client.close()


async def test_an_event_that_asks_for_an_ack_waits_for_the_replay_before_it(
    kafka_url: str, channel: str
) -> None:
    """Live events for a socket under recovery wait for its replay; one that asks for an
    ack once went straight out, ahead of every event the client had missed before it."""
    sio = joining_server(kafka_url, channel)
    acks: list[Any] = []
    client = RecoveringRecorder()
    # The first connect is a fresh one: the replay paused is the recovery's.
    async with _serving(sio) as [url]:
        try:
            with replays_paused(sio) as (replaying, go):
                sid = await _in_lobby_then_dropped(client, url)
                for n in range(3):
                    await sio.emit("news", n, to="lobby")
                await client.connect(url)
                await asyncio.wait_for(replaying.wait(), 10)
                stats, consumed = sio.kafka.stats, sio.kafka.stats.records_consumed
                await sio.emit("ask", "ok?", to=sid, callback=lambda *a: acks.append(a))
                await sio.emit("news", 3, to="lobby")
                # Both read and handed on by the consume loop before the replay goes on.
                await wait_until(lambda: stats.records_consumed >= consumed + 2, 10, "both read")
                go.set()
                await client.wait_count("news", 4)
                await wait_until(lambda: acks == [()], 10, "the ack")
                names = [name for name, _ in client.received]
                # After what was missed; the live "news" is another room's: in either order.
                assert names[:3] == ["news"] * 3
                assert sorted(names[3:]) == ["ask", "news"]
        finally:
            await client.close()


async def _answers(ws: ClientConnection, count: int) -> list[str]:
    """The node's first ``count`` answers to CONNECTs: a CONNECT ("40") or an error ("44")."""
    answers: list[str] = []
    async with asyncio.timeout(15):
        while len(answers) < count:
            frame = await ws.recv()
            if isinstance(frame, str) and frame.startswith(("40", "44")):
                answers.append(frame)
    return answers


async def test_a_socket_the_server_disconnects_as_its_drop_is_kept_does_not_recover(
    kafka_url: str, channel: str
) -> None:
    """A server's disconnect means the session ends (a kick). One that came while the
    transport's close was still writing the session as kept found nothing left to end:
    the kept record stood, and the kicked client recovered its sid and rooms."""
    manager = AsyncKafkaManager(kafka_url, channel=channel)
    sio = RecoveringAsyncServer(
        client_manager=manager, async_mode="asgi", connection_state_recovery={}
    )
    real_write = manager.store.write
    keeping, go_on = asyncio.Event(), asyncio.Event()
    held: list[dict[str, Any]] = []

    async def slow_kept(records: dict[str, Any]) -> None:
        # Kafka slow from the kept record on: what follows waits too, and goes in turn.
        if keeping.is_set() or any(
            s is not None and s.disconnected_at is not None for s in records.values()
        ):
            keeping.set()
            held.append(records)
            await go_on.wait()
        await real_write(records)

    client = RecoveringRecorder()
    async with manager, run_server(socketio.ASGIApp(sio)) as url:
        try:
            await client.connect(url)
            sid = client.sid
            await sio.enter_room(sid, "lobby")
            assert await sio.session_saved(sid)
            manager.store.write = slow_kept
            await client.client.eio.ws.close()  # the transport drops, the node keeps it
            await wait_until(keeping.is_set, 10, "the session being written as kept")
            kick = asyncio.create_task(sio.disconnect(sid))  # the server ends it meanwhile
            await wait_until(lambda: kick.done() or len(held) == 2, 10, "the kick's record")
            go_on.set()
            await kick
            await wait_until(lambda: not manager.is_connected(sid, "/"), 10, "the disconnect")
            await wait_until(
                lambda: client.client.eio.http is None, 10, "the client's old session closed"
            )
            await client.client.connect(url, transports=["websocket"])
            assert client.client.recovered["/"] is False
            assert client.sid != sid
            assert sio.recoveries["fresh", "unknown_session"] == 1
        finally:
            go_on.set()
            manager.store.write = real_write
            await client.close()


async def test_a_replay_paced_by_a_client_that_then_goes_ends_at_once(
    kafka_url: str, channel: str
) -> None:
    """A replay waits while its socket holds more than its low-water mark. A client that
    stopped reading and then went (its TCP connection reset) left it waiting for a drain
    that never came: its cursor and its share of the node's replay buffer held until the
    replay's timeout, a minute, then a traceback for a client that merely left. Engine.IO
    reads nothing while it handles the CONNECT: the connection tells the socket's queue
    (the gateway's `CoalescingWebSocketProtocol`)."""
    limits = OutboxLimits(max_packets=400)  # waits past 100 queued: a small socket
    manager = AsyncKafkaManager(kafka_url, channel=channel, limits=limits)
    sio = RecoveringAsyncServer(
        client_manager=manager, async_mode="asgi", connection_state_recovery={}
    )
    client = RecoveringRecorder()
    app = socketio.ASGIApp(sio)
    async with manager, run_server(app, ws=CoalescingWebSocketProtocol) as url:
        try:
            await client.connect(url)
            await sio.enter_room(client.sid, "lobby")
            assert await sio.session_saved(client.sid)
            pid = client.client.pids["/"]
            await client.drop_transport()
            text = "x" * 2_000
            for n in range(5_000):  # 10 MB: past what socket buffers take
                await sio.emit("news", {"n": n, "text": text}, to="lobby")
            async with websocket_session(url, connect=False) as ws:
                await send(ws, "40" + json.dumps({"pid": pid}))  # claims, then reads nothing
                await wait_until(
                    lambda: manager.stats.events_replayed > 100, 15, "the replay under way"
                )
                ws.transport.abort()
            await wait_until(
                lambda: sio.recoveries["failed", ""] == 1,
                10,
                "the replay ended for its connection gone (its timeout is 60 s)",
            )
            assert sio.recoveries["recovered", ""] == 0
        finally:
            await client.close()


async def test_clients_that_stop_reading_mid_replay_do_not_hold_up_the_nodes_other_recoveries(
    kafka_url: str, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records found for a replay count against the node's replay buffer until it takes
    them. A few clients that stopped reading mid-replay (a mass reconnect's mobile
    clients) held the whole of it: every other recovery on the node waited for their
    replay timeout, a minute, and met its own. One waiting on its client while others
    wait for room is cut (its session kept) after a few seconds, here half of one."""
    monkeypatch.setattr(recovery, "_STALL_S", 0.5)
    manager = AsyncKafkaManager(
        kafka_url,
        channel=channel,
        options=KafkaOptions(replay_history_bytes=0),  # every replay reads Kafka
        limits=OutboxLimits(max_packets=400),  # waits past 100 queued: small sockets
    )
    sio = RecoveringAsyncServer(
        client_manager=manager,
        async_mode="asgi",
        connection_state_recovery={"replay_batch": 10, "replay_buffer": 25},
    )
    clients = [RecoveringRecorder() for _ in range(4)]
    healthy, stuck = clients[0], clients[1:]
    app = socketio.ASGIApp(sio)
    async with manager, run_server(app, ws=CoalescingWebSocketProtocol) as url:
        try:
            for client in clients:
                await client.connect(url)
                await sio.enter_room(client.sid, "lobby")
                assert await sio.session_saved(client.sid)
                await client.drop_transport()
            text, total = "x" * 2_000, 5_000
            for n in range(total):  # 10 MB: past what socket buffers take
                await sio.emit("news", {"n": n, "text": text}, to="lobby")
            async with contextlib.AsyncExitStack() as readers_gone:
                for client in stuck:  # each claims, then reads nothing
                    ws = await readers_gone.enter_async_context(
                        websocket_session(url, connect=False)
                    )
                    await send(ws, "40" + json.dumps(client.client._recovery_auth(None, "/")))
                # 10 MB read back for three replays: a slow host took longer than 15 s once.
                await wait_until(lambda: manager.shared_replays.stalled, 30, "the buffer full")
                await healthy.connect(url)
                assert healthy.client.recovered["/"] is True
                await healthy.wait_count("news", total, timeout=30)
                assert [e["n"] for e in healthy.events("news")] == list(range(total))
                assert manager.stats.slow_consumers_cut >= 1
        finally:
            for client in clients:
                await client.close()


async def test_a_client_back_on_a_node_that_has_not_read_as_far_as_it_gets_nothing_twice(
    kafka_url: str, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's offsets are its old node's; a node whose consumer was behind them (busy
    in a mass reconnect) replayed nothing there, then delivered live, to the restored
    socket, the records between its own position and the client's: events twice, and an
    offset that went back. The claim now waits until this node has read as far."""
    first, second = joining_server(kafka_url, channel), joining_server(kafka_url, channel)
    behind = second.kafka
    lagging, deferred, asked = True, [], []
    take = behind._take

    async def lagging_take(tp: Any, records: list[Any]) -> None:
        if tp.topic == behind.events_topic and lagging:
            deferred.append((tp, records))  # positions stay where they were
            return
        while deferred and not lagging:
            await take(*deferred.pop(0))
        await take(tp, records)

    async def delivered_to(offsets: Any) -> bool:
        asked.append(tuple(offsets))
        return await AsyncKafkaManager.delivered_to(behind, offsets)

    past_markers = behind._past_markers

    async def lagging_past_markers(consumer: Any) -> None:
        if not deferred:  # a consumer behind has not read past what it has not taken
            await past_markers(consumer)

    monkeypatch.setattr(behind, "_take", lagging_take)
    monkeypatch.setattr(behind, "_past_markers", lagging_past_markers)
    monkeypatch.setattr(behind, "delivered_to", delivered_to, raising=False)
    client = RecoveringRecorder()
    async with _serving(first, second) as (url, other_url):
        try:
            await client.connect(url)
            assert await client.client.call("join", "lobby") is True
            for n in range(3):
                await first.emit("news", n, to="lobby")
            await client.wait_count("news", 3)
            await client.drop_transport()
            back = asyncio.create_task(client.client.connect(other_url, transports=["websocket"]))
            await wait_until(lambda: asked or back.done(), 20, "the claim judged")
            lagging = False
            await first.emit("news", 3, to="lobby")  # the next fetch: the node catches up
            await back
            assert client.client.recovered["/"]
            await first.emit("news", 4, to="lobby")
            await client.wait_count("news", 5)
            assert client.events("news") == [0, 1, 2, 3, 4]
        finally:
            await client.close()


async def test_a_room_left_while_an_outrun_replay_ran_keeps_what_it_was_sent_before(
    kafka_url: str, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live events to room "a" outran the recovering socket's hold (5 packets here); then
    the server took it out of "a". The read-on went through its rooms of now: the events
    "a" was sent while the socket was in it were lost, and its offset moved past them."""
    manager = AsyncKafkaManager(kafka_url, channel=channel, limits=OutboxLimits(max_packets=5))
    sio = RecoveringAsyncServer(
        client_manager=manager, async_mode="asgi", connection_state_recovery={}
    )

    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    sio.on("join", join)
    replay = sio._replay
    replays: list[Any] = []

    async def outrun_then_left(eio_sid: str, namespace: str, session: Any, *span: Any) -> int:
        replays.append(span)
        if len(replays) == 1:
            for n in range(100, 110):  # past the hold, while the socket is in "a"
                await sio.emit("news", n, to="a")
            await manager.consumed_to_end()
            await sio.leave_room(session.sid, "a")
        return await replay(eio_sid, namespace, session, *span)

    monkeypatch.setattr(sio, "_replay", outrun_then_left)
    client = RecoveringRecorder()
    async with _serving(sio) as (url,):
        try:
            await client.connect(url)
            for room in ("a", "b"):
                assert await client.client.call("join", room) is True
            await sio.emit("news", 0, to="a")
            await client.wait_count("news", 1)
            await client.drop_transport()
            for n in (1, 2):
                await sio.emit("news", n, to="a")
            await client.client.connect(url, transports=["websocket"])
            assert client.client.recovered["/"]
            await wait_until(lambda: "a" not in sio.rooms(client.sid), 10, "its leave")
            await sio.emit("news", 3, to="a")  # left: not for it
            await sio.emit("news", 999, to="b")
            await client.wait_count("news", 14)
            assert client.events("news") == [0, 1, 2, *range(100, 110), 999]
            assert manager.stats.replays_outrun == 1
        finally:
            await client.close()
