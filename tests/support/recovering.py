"""A python client doing the client side of recovery, with a transport it can drop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import socketio

from socketio_kafka.adapter import AsyncKafkaManager, AsyncRecoveringClient, RecoveringAsyncServer

from .waiting import wait_until


class RecoveringRecorder:
    """Records every event (offset argument already taken off by the client)."""

    def __init__(self, auth: dict[str, Any] | None = None) -> None:
        self.auth = auth
        self.client = AsyncRecoveringClient(reconnection=False)
        self.received: list[tuple[str, Any]] = []
        self.client.on("*", self._record)

    async def _record(self, event: str, *args: Any) -> None:
        self.received.append((event, args[0] if len(args) == 1 else list(args)))

    async def connect(self, url: str) -> RecoveringRecorder:
        await self.client.connect(url, transports=["websocket"], auth=self.auth)
        return self

    @property
    def sid(self) -> str:
        return str(self.client.get_sid("/"))

    def events(self, event: str) -> list[Any]:
        return [args for name, args in self.received if name == event]

    async def drop_transport(self) -> None:
        """Lose the connection without saying goodbye, as a dead network would."""
        await self.client.eio.ws.close()
        # Until Engine.IO's client has closed its HTTP session: python-engineio 4.15 sets
        # it to None after awaiting the close, and a connect made meanwhile gets its new
        # session dropped unclosed (a ResourceWarning on Python 3.13).
        await wait_until(
            lambda: not self.client.connected and self.client.eio.http is None,
            15,
            "transport drop",
        )

    async def wait_count(self, event: str, count: int, timeout: float = 30) -> list[Any]:
        await wait_until(
            lambda: len(self.events(event)) >= count,
            timeout,
            f"{count} {event!r} events (got {len(self.events(event))})",
        )
        return self.events(event)

    async def close(self) -> None:
        if self.client.connected:
            await self.client.disconnect()
        await self.client.shutdown()


@contextlib.contextmanager
def first_claim_held(manager: AsyncKafkaManager) -> Iterator[tuple[asyncio.Event, asyncio.Event]]:
    """The first claim judged in the block waits in the session store's ``find`` (the
    claim's round trip to Kafka): ``judging`` is set when it comes, it goes on once
    ``judged`` is set (at the latest when the block ends)."""
    real_find = manager.store.find
    judging, judged = asyncio.Event(), asyncio.Event()

    async def held_find(pid: str, wait: float = 3.0) -> Any:
        if not judging.is_set():
            judging.set()
            await judged.wait()
        return await real_find(pid, wait)

    manager.store.find = held_find  # type: ignore[method-assign]
    try:
        yield judging, judged
    finally:
        judged.set()
        manager.store.find = real_find  # type: ignore[method-assign]


async def claimed_by_a_connection_that_goes_while_judged(
    sio: RecoveringAsyncServer, url: str, owner: RecoveringRecorder, sid: str, room: str
) -> None:
    """``owner``'s session (``sid``, its transport dropped) claimed by a connection that
    closes while the claim is judged (the session store's ``find`` held meanwhile), then
    claimed again: the second claim recovers it, with what ``room`` was sent meanwhile."""
    manager = sio.kafka
    gave_up, again = RecoveringRecorder(owner.auth), RecoveringRecorder(owner.auth)
    try:
        await wait_until(lambda: not manager.is_connected(sid, "/"), 10, "the drop noticed")
        for claimant in (gave_up, again):
            claimant.client.pids.update(owner.client.pids)
            claimant.client.offsets.update(owner.client.offsets)
        with first_claim_held(manager) as (judging, judged):
            claiming = asyncio.create_task(gave_up.connect(url))
            await wait_until(judging.is_set, 10, "the claim being judged")
            (eio_sid,) = (e for e, s in sio.eio.sockets.items() if not (s.closing or s.closed))
            await manager.close_transport(eio_sid, "transport close")
            judged.set()
            await wait_until(lambda: sio.recoveries["failed", ""] == 1, 10, "judged, too late")
        claiming.cancel()  # the client has not noticed yet: it does not matter here
        with contextlib.suppress(asyncio.CancelledError, socketio.exceptions.ConnectionError):
            await claiming
        assert not manager.is_connected(sid, "/")
        await sio.emit("news", 1, to=room)
        await again.connect(url)
        assert (again.client.recovered["/"], again.sid) == (True, sid)
        assert await again.wait_count("news", 1) == [1]
    finally:
        for claimant in (gave_up, again):
            await claimant.close()


def joining_server(kafka_url: str, channel: str, **kwargs: Any) -> RecoveringAsyncServer:
    """A recovering node whose ``join`` puts the socket in the room it names; ``kwargs``
    are the server's (its heartbeat, say)."""
    server = RecoveringAsyncServer(
        client_manager=AsyncKafkaManager(kafka_url, channel=channel),
        async_mode="asgi",
        connection_state_recovery={},
        **kwargs,
    )

    async def join(sid: str, room: str) -> bool:
        await server.enter_room(sid, room)
        return True

    server.on("join", join)
    return server


@contextlib.contextmanager
def replays_paused(sio: RecoveringAsyncServer) -> Iterator[tuple[asyncio.Event, asyncio.Event]]:
    """Replays begun in the block wait: ``replaying`` is set when one comes, they go on
    once ``go`` is set (at the latest when the block ends)."""
    replay = sio._replay
    replaying, go = asyncio.Event(), asyncio.Event()

    async def paused(*args: Any) -> int:
        replaying.set()
        await go.wait()
        return await replay(*args)

    sio._replay = paused  # type: ignore[method-assign]
    try:
        yield replaying, go
    finally:
        go.set()
