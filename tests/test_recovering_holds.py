"""Live events for a socket whose replay runs are held for it, and what an outrun of that
hold (more live events than it keeps) must not lose: another namespace's events on the
same connection, and events that ask for an ack. Real Kafka, python-socketio clients;
a hold of 20 packets, outrun by a burst of 30."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import socketio

from socketio_kafka.adapter import (
    AsyncKafkaManager,
    AsyncRecoveringClient,
    OutboxLimits,
    RecoveringAsyncServer,
)

from .support.server import run_server
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

NAMESPACES = ["/chat", "/"]
BOUND = 20
BURST = 30


class Recorder:
    """A recovering client in both namespaces: each event with its namespace, in order;
    it answers an "ask" with "yes"."""

    def __init__(self) -> None:
        self.client = AsyncRecoveringClient(reconnection=False)
        self.received: list[tuple[str, str, Any]] = []
        for namespace in NAMESPACES:
            self.client.on("*", self._recorder(namespace), namespace=namespace)
            self.client.on("ask", self._answer(namespace), namespace=namespace)

    def _recorder(self, namespace: str) -> Callable[..., Awaitable[None]]:
        async def record(event: str, data: Any) -> None:
            self.received.append((namespace, event, data))

        return record

    def _answer(self, namespace: str) -> Callable[[Any], Awaitable[str]]:
        async def answer(data: Any) -> str:
            self.received.append((namespace, "ask", data))
            return "yes"

        return answer

    async def connect(self, url: str) -> None:
        await self.client.connect(url, namespaces=NAMESPACES, transports=["websocket"])

    def of(self, namespace: str) -> list[tuple[str, Any]]:
        return [(event, data) for ns, event, data in self.received if ns == namespace]

    async def drop_transport(self) -> None:
        """Lose the connection without a goodbye (as `RecoveringRecorder` does)."""
        await self.client.eio.ws.close()
        await wait_until(
            lambda: not self.client.connected and self.client.eio.http is None, 15, "the drop"
        )


class PausedReplay:
    """The server's replays, the one of namespace "/" paused until `go` is set: its hold is
    in place (the hold is taken before the replay starts), the live events it holds wait."""

    def __init__(self, sio: RecoveringAsyncServer) -> None:
        self.replaying, self.go = asyncio.Event(), asyncio.Event()
        self._replay = sio._replay
        sio._replay = self  # type: ignore[method-assign]

    async def __call__(self, eio_sid: str, namespace: str, *args: Any) -> int:
        if namespace == "/":
            self.replaying.set()
            await self.go.wait()
        return await self._replay(eio_sid, namespace, *args)


@contextlib.asynccontextmanager
async def _serving(
    kafka_url: str, channel: str
) -> AsyncIterator[tuple[RecoveringAsyncServer, str]]:
    sio = RecoveringAsyncServer(
        client_manager=AsyncKafkaManager(
            kafka_url, channel=channel, limits=OutboxLimits(max_packets=BOUND)
        ),
        async_mode="asgi",
        connection_state_recovery={},
    )
    for namespace in NAMESPACES:
        sio.on("connect", lambda sid, environ, auth: None, namespace=namespace)
    async with sio.kafka, run_server(socketio.ASGIApp(sio)) as url:
        yield sio, url


async def _back_with_the_main_replay_paused(
    sio: RecoveringAsyncServer, client: Recorder, url: str
) -> PausedReplay:
    """``client`` reconnects: "/chat" recovers first (a claim of "/" waits for it, as a
    short backlog's would be done first), "/" is left in its replay, paused."""
    restore = sio._restore

    async def chat_first(eio_sid: str, namespace: str, claim: Any) -> bool:
        if namespace == "/":
            await wait_until(lambda: sio.recoveries["recovered", ""] >= 1, 10, '"/chat" first')
        return await restore(eio_sid, namespace, claim)

    sio._restore = chat_first  # type: ignore[method-assign]
    paused = PausedReplay(sio)
    await client.connect(url)
    await asyncio.wait_for(paused.replaying.wait(), 10)
    assert client.client.recovered == {"/chat": True, "/": True}
    return paused


async def test_another_namespaces_live_events_go_out_while_one_replays(
    kafka_url: str, channel: str
) -> None:
    """The hold was the connection's: "/chat"'s live events were held with "/"'s replay,
    dropped when they outran it, and the read-on brought back "/"'s alone; "/chat" lost
    them for good, its client told it recovered."""
    async with _serving(kafka_url, channel) as (sio, url):
        client = Recorder()
        try:
            await client.connect(url)
            await client.drop_transport()
            for n in range(3):
                await sio.emit("news", n, namespace="/")
            paused = await _back_with_the_main_replay_paused(sio, client, url)
            try:
                for n in range(BURST):
                    await sio.emit("chat", n, namespace="/chat")
                await wait_until(lambda: len(client.of("/chat")) == BURST, 10, "chat, live")
            finally:
                paused.go.set()
            await sio.emit("news", 3, namespace="/")
            await wait_until(lambda: len(client.of("/")) == 4, 10, "news")
            assert client.of("/") == [("news", n) for n in range(4)]
            assert client.of("/chat") == [("chat", n) for n in range(BURST)]
            assert sio.kafka.stats.replays_outrun == 0
        finally:
            await client.client.disconnect()


async def test_an_ask_held_through_an_outrun_replay_goes_out_in_its_place(
    kafka_url: str, channel: str
) -> None:
    """A `call` to a socket whose replay runs is held; live events then outran the hold,
    which dropped it with the rest: no replay brings back an event that asks for an ack,
    so the call timed out, its client connected and told nothing. It goes out in the
    read-on now, between the events sent to the socket before and after it."""
    async with _serving(kafka_url, channel) as (sio, url):
        client = Recorder()
        try:
            await client.connect(url)
            sid = client.client.get_sid("/")
            await client.drop_transport()
            for n in range(3):
                await sio.emit("news", n, to=sid)
            paused = await _back_with_the_main_replay_paused(sio, client, url)
            try:
                asked = asyncio.create_task(sio.call("ask", "ok?", to=sid, timeout=10))
                consumed = sio.kafka.stats.records_consumed
                await wait_until(lambda: sio.kafka.stats.records_consumed > consumed, 10, "ask")
                for n in range(3, 3 + BURST):  # outruns the hold of 20
                    await sio.emit("news", n, to=sid)
                await wait_until(
                    lambda: sio.kafka.stats.records_consumed > consumed + BURST, 10, "burst"
                )
            finally:
                paused.go.set()
            assert await asked == "yes"
            await wait_until(lambda: len(client.of("/")) == 4 + BURST, 10, "all of it")
            news = [("news", n) for n in range(3 + BURST)]
            assert client.of("/") == [*news[:3], ("ask", "ok?"), *news[3:]]
            assert sio.kafka.stats.replays_outrun == 1
            assert client.client.connected
        finally:
            await client.client.disconnect()
