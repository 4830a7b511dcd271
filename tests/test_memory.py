"""Memory per connection: the benchmark's quick form runs, the node holds every official
client it opened, and a connection costs a bounded share of its RSS; the lean queue the
connections wait on keeps asyncio.Queue's behaviour where engineio and uvicorn rely on it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest
import socketio

from benchmarks import flood
from socketio_kafka.adapter import AsyncKafkaManager, RecoveringAsyncServer
from socketio_kafka.adapter.outbox import SlimQueue
from socketio_kafka.gateway.guard import GuardedServer
from socketio_kafka.gateway.websocket import ABORT, CoalescingWebSocketProtocol

from .support.server import run_server
from .support.waiting import wait_until

#: Generous: about 25 KB today, 48 KB before issue 10; per-message deflate on would be
#: hundreds. RSS does not depend on how loaded the machine is, only on what the node keeps.
_KB_PER_CONNECTION = 60


def _memory_run(kafka_bootstrap: str, *args: str) -> Any:
    """``python -m benchmarks.memory``'s figures (its last line)."""
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", f"--kafka={kafka_bootstrap}", *args],
        capture_output=True,
        text=True,
        timeout=290,
        check=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_the_quick_memory_run(kafka_bootstrap: str) -> None:
    figures = _memory_run(kafka_bootstrap, "--quick")
    assert figures["connections"] == 500
    assert figures["held_idle"] == figures["held_with_rooms"] == 500
    assert figures["clients_still_connected"] == 500
    assert 0 < figures["kb_per_connection_idle"] < _KB_PER_CONNECTION, figures
    assert 0 < figures["kb_per_connection_rooms"] < _KB_PER_CONNECTION, figures
    # Idle clients cost their heartbeats: about 1% of a core for 1,000 today.
    assert 0 < figures["idle_cpu_percent_per_1000"] < 10, figures


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_the_sessions_of_other_nodes_cost_a_bounded_share_of_a_nodes_memory(
    kafka_bootstrap: str,
) -> None:
    """Every node keeps every session of the cluster: about 0.8 kB of RSS each today (2.2
    kB by `tracemalloc` at 48 partitions before session 31)."""
    flags = ["--connections", "50", "--sessions", "20000", "--idle-s", "1"]
    figures = _memory_run(kafka_bootstrap, *flags)
    assert figures["sessions"] == 20_000
    assert 0 < figures["bytes_per_session"] < 2000, figures


async def test_a_getter_that_timed_out_takes_nothing() -> None:
    queue = SlimQueue()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), 0.01)  # engineio's writer, idle
    queue.put_nowait("a")
    queue.put_nowait("b")
    assert await asyncio.wait_for(queue.get(), 1) == "a"
    assert queue.get_nowait() == "b"
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_a_waiting_getter_gets_the_next_item_in_order() -> None:
    queue = SlimQueue()
    first, second = queue.get(), queue.get()
    queue.put_nowait(1)
    queue.put_nowait(2)
    queue.put_nowait(3)
    assert (await first, await second) == (1, 2)
    assert queue.qsize() == 1
    assert await queue.get() == 3


async def test_join_waits_for_every_item_done() -> None:
    queue = SlimQueue()
    await asyncio.wait_for(queue.join(), 1)  # nothing put: at once
    await queue.put("a")
    joined = asyncio.ensure_future(queue.join())
    assert queue.get_nowait() == "a"
    await asyncio.sleep(0)
    assert not joined.done()
    queue.task_done()
    await asyncio.wait_for(joined, 1)
    with pytest.raises(ValueError, match="too many"):
        queue.task_done()


@pytest.mark.timeout(60)
async def test_an_open_connection_keeps_no_instance_dict_nor_its_handshake_headers() -> None:
    """uvicorn's attributes are in slots, and the request websockets' parser keeps in its
    frame for the connection's life has its headers emptied once the handshake is over."""
    protocols: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        protocols.append(scope["extensions"][ABORT]["abort"].__self__)
        await receive()  # the disconnect

    async with run_server(app, ws=CoalescingWebSocketProtocol) as url:
        up = await flood.upgrade("127.0.0.1", int(url.rsplit(":", 1)[1]), "127.0.0.1")
        try:
            assert up.status == 101
            await wait_until(lambda: protocols, 5, "the app's accept")
            protocol = protocols[0]
            assert vars(protocol) == {}
            assert not hasattr(protocol, "request")
            request = protocol.conn.parser.gi_frame.f_locals["request"]
            assert len(request.headers) == 0
            assert protocol.scope["headers"]  # the app's copy stays
        finally:
            up.writer.transport.abort()


@pytest.mark.timeout(60)
async def test_the_handshake_headers_are_dropped_and_the_others_kept() -> None:
    """What GuardedServer forgets at the Socket.IO CONNECT: the WebSocket handshake's own
    headers, in the environ and its ASGI scope; the app's connect handler still sees every
    other header, in both."""
    sio = GuardedServer(client_manager=socketio.AsyncManager(), async_mode="asgi")
    environs: list[dict[str, Any]] = []

    async def connect(sid: str, environ: dict[str, Any]) -> None:
        environs.append(environ)

    async def echo(sid: str, data: Any) -> Any:
        return data

    sio.on("connect", connect)
    sio.on("echo", echo)
    async with run_server(socketio.ASGIApp(sio), ws=CoalescingWebSocketProtocol) as url:
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(url, transports=["websocket"], headers={"X-Kept": "yes"})
        try:
            (environ,) = environs
            assert environ["HTTP_X_KEPT"] == "yes"
            assert "HTTP_HOST" in environ
            assert not [k for k in environ if "WEBSOCKET" in k or k == "HTTP_UPGRADE"]
            names = {name for name, _ in environ["asgi.scope"]["headers"]}
            assert {b"x-kept", b"host"} <= names
            assert not names & {b"upgrade", b"connection", b"sec-websocket-key"}
            assert await client.call("echo", {"n": 1}, timeout=5) == {"n": 1}
        finally:
            await client.disconnect()


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_saving_a_socket_s_session_record_stores_no_empty_session_on_it(
    kafka_url: str, channel: str
) -> None:
    """Recovery reads a socket's session data for its record as get_session would, without
    leaving the empty one get_session stores on every socket that has none."""
    manager = AsyncKafkaManager(kafka_url, channel=channel)
    sio = RecoveringAsyncServer(
        client_manager=manager, async_mode="asgi", connection_state_recovery={}
    )
    async with manager, run_server(socketio.ASGIApp(sio)) as url:
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(url, transports=["websocket"])
        try:
            pid = sio.session_pid(client.get_sid())
            assert pid is not None
            await wait_until(lambda: pid in manager.store.table.sessions, 30, "its record")
            (socket,) = sio.eio.sockets.values()
            assert socket.session == {}
            await sio.save_session(client.get_sid(), {"user": 7})
            await wait_until(
                lambda: manager.store.table.sessions[pid].data == {"user": 7}, 30, "its data"
            )
        finally:
            await client.disconnect()
