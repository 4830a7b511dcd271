"""A handler's ACK after the events it emitted, as python-socketio's own managers order them.

They deliver an emit to this node's sockets before ``emit`` returns, so an event a handler
emits to its caller is on the wire before the handler's reply. Here a local socket gets an
emit once Kafka has it back: the reply overtook it every time (a helper ran one app on
``AsyncRedisManager`` and on this, session 51), and a client that acts on the reply
("joined: now show the history I was sent") had not got the event yet.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import socketio

from socketio_kafka.adapter import AsyncKafkaManager

from .support.jsclient import JsClient
from .support.server import run_server
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]


@pytest.mark.parametrize(
    "target", ["sid", "room", "everyone", "sid, from a task", "its socket of another namespace"]
)
async def test_a_handlers_reply_comes_after_what_it_emitted_to_its_caller(
    kafka_url: str, channel: str, target: str
) -> None:
    manager = AsyncKafkaManager(kafka_url, channel=channel)
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)
    chat: dict[str, str] = {}  # a connection's sid in /chat, by its eio_sid

    @sio.on("connect", namespace="/chat")  # type: ignore[untyped-decorator]
    async def connect_chat(sid: str, environ: Any) -> None:
        chat[manager.eio_sid_from_sid(sid, "/chat")] = sid

    @sio.on("trigger")  # type: ignore[untyped-decorator]
    async def trigger(sid: str, n: int) -> str:
        await sio.enter_room(sid, "r")
        to: Any = {"sid": sid, "room": "r", "everyone": None}.get(target, sid)
        if target == "sid, from a task":  # gather runs it in a task of its own
            await asyncio.gather(sio.emit("pre", n, to=to))
        elif target == "its socket of another namespace":
            to = chat[manager.eio_sid_from_sid(sid, "/")]
            await sio.emit("pre", n, to=to, namespace="/chat")
        else:
            await sio.emit("pre", n, to=to)
        return f"done {n}"

    js = await JsClient().start()
    try:
        async with manager, run_server(socketio.ASGIApp(sio)) as url:
            await js.connect(url)
            if target == "its socket of another namespace":
                await js.send("namespace", nsp="/chat")
                await wait_until(lambda: chat, 15, "the /chat socket")
            for n in range(5):
                assert await js.call("trigger", n) == f"done {n}"
                reports = [
                    r
                    for r in js.reports
                    if r["type"] == "reply" or (r["type"] == "event" and r["event"] == "pre")
                ]
                # Each call's event, then its reply: in the order the client read them.
                assert [r.get("args", r.get("reply")) for r in reports[-2:]] == [[n], f"done {n}"]
    finally:
        await js.close()


async def test_a_reply_waits_only_for_emits_that_may_reach_its_caller(
    kafka_url: str, channel: str
) -> None:
    """The gateway's ``publish`` skips its caller: its reply (acked once Kafka has the
    record) does not wait for the node to read it back, nor does a reply after an emit to
    a room the caller is not in, nor one after another task's emits."""
    manager = AsyncKafkaManager(kafka_url, channel=channel)
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)
    waited: list[dict[int, int] | None] = []
    real = manager._emits_delivered

    async def counted(emitted: dict[int, int] | None = None, timeout_s: Any = None) -> None:
        waited.append(emitted)
        await real(emitted, timeout_s)

    manager._emits_delivered = counted  # type: ignore[method-assign]

    @sio.on("emit")  # type: ignore[untyped-decorator]
    async def emit(sid: str, how: str) -> str:
        if how == "skipping me":
            await sio.emit("news", how, skip_sid=sid)
        elif how == "to another room":
            await sio.emit("news", how, to="elsewhere")
        elif how == "to everyone":
            await sio.emit("news", how)
        return how

    js = await JsClient().start()
    try:
        async with manager, run_server(socketio.ASGIApp(sio)) as url:
            await js.connect(url)
            await sio.emit("news", "this task's")
            for how in ("nothing", "skipping me", "to another room"):
                assert await js.call("emit", how) == how
            assert waited == []
            assert await js.call("emit", "to everyone") == "to everyone"
            assert len(waited) == 1
            assert waited[0]
    finally:
        await js.close()
