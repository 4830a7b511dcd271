"""A node drained by SIGTERM under load exits within its deadline, and its clients, moved
to other nodes, recover every event once and in order."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import sys
import time
from typing import Any

import httpx

from socketio_kafka.adapter import AsyncRecoveringClient
from socketio_kafka.gateway.app import create_app
from socketio_kafka.gateway.settings import Settings

from .support.clients import Recorder
from .support.cluster import FAST_PUBLISHER, free_port, gateway_cluster
from .support.jsclient import JsClient
from .support.waiting import wait_until

DRAIN_TIMEOUT_S = 10
RATE = 300  # events a second


class _MovingClient(AsyncRecoveringClient):  # type: ignore[misc]  # untyped base
    """Reconnects to the other nodes, as through a balancer that took the drained one out."""

    def __init__(self, elsewhere: list[str]) -> None:
        super().__init__(reconnection_delay=0.2, reconnection_delay_max=1.0)
        self._elsewhere = itertools.cycle(elsewhere)
        self.got: list[int] = []
        self.on("n", self.got.append)

    async def connect(self, *args: Any, **kwargs: Any) -> None:
        if self._reconnect_task is not None:  # python-socketio's reconnection loop
            args = (next(self._elsewhere), *args[1:])
        await super().connect(*args, **kwargs)


async def test_a_draining_node_is_unready_refuses_clients_and_says_so() -> None:
    app = create_app(Settings(), "kafka://127.0.0.1:1")  # never started: no Kafka needed
    await app.state.node.sio.drain()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
        ready = await http.get("/readyz")
        handshake = await http.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
        metrics = (await http.get("/metrics")).text
    assert (ready.status_code, ready.json()) == (503, {"ready": False, "reasons": ["draining"]})
    assert (handshake.status_code, handshake.json()) == (401, {"message": "draining"})
    assert "socketio_kafka_draining 1.0" in metrics


async def test_sigterm_under_load_moves_clients_with_nothing_lost(
    kafka_url: str, channel: str, js: JsClient
) -> None:
    flags = ["--drain-timeout", str(DRAIN_TIMEOUT_S), *FAST_PUBLISHER]
    async with gateway_cluster(kafka_url, channel, nodes=3, extra_args=flags) as nodes:
        drained, others = nodes[0], [node.url for node in nodes[1:]]
        clients = [_MovingClient(others) for _ in range(4)]
        for client in clients:
            await client.connect(drained.url, transports=["websocket"])
            assert await client.call("join", {"room": "r"}) == {"ok": True}
        # The official client, reconnecting through a balancer that sends it to node 2.
        await js.connect(drained.url, reconnectionDelay=300)
        assert await js.call("join", {"room": "r"}) == {"ok": True}
        await js.send("retarget", url=nodes[1].url)
        publisher = Recorder(nodes[2].url)
        await publisher.connect()
        stop = asyncio.Event()
        sent: list[asyncio.Future[Any]] = []
        publishing = asyncio.create_task(_publish(publisher, sent, stop))

        await wait_until(lambda: all(len(c.got) >= RATE // 2 for c in clients), 30, "events")
        started = time.monotonic()
        await asyncio.to_thread(drained.stop, signal.SIGTERM, 3 * DRAIN_TIMEOUT_S)
        took = time.monotonic() - started
        assert drained.process is not None
        assert drained.process.returncode == -signal.SIGTERM, drained.log()  # not the watchdog
        assert took < DRAIN_TIMEOUT_S, drained.log()
        await wait_until(
            lambda: all(c.connected and c.connection_url in others for c in clients),
            30,
            "every client on another node",
        )
        moved_at = len(sent)
        await wait_until(lambda: len(sent) >= moved_at + RATE, 30, "a second more of events")
        stop.set()
        await publishing
        replies = await asyncio.gather(*sent)
        assert all(reply["ok"] for reply in replies)
        for client in clients:
            await wait_until(lambda c=client: len(c.got) >= len(sent), 60, "every event")
            assert client.got == list(range(len(sent)))  # none lost, none twice, in order
            assert client.recovered["/"] is True
        assert await js.wait_count("n", len(sent)) == list(range(len(sent)))
        assert js.connects()[-1]["recovered"] is True
        for client in clients:
            await client.disconnect()
        await publisher.close()


_STUCK_NODE = """
import asyncio, contextlib, sys
import uvicorn
from starlette.applications import Starlette
from socketio_kafka.gateway.drain import DrainingServer

class Stuck:  # clients that never close, and a shutdown (a Kafka flush) that never ends
    async def drain(self):
        await asyncio.Event().wait()

@contextlib.asynccontextmanager
async def lifespan(app):
    yield
    await asyncio.Event().wait()

config = uvicorn.Config(Starlette(lifespan=lifespan), port=int(sys.argv[1]), log_level="info")
DrainingServer(config, Stuck(), timeout_s=1.0).run()
"""


async def test_a_drain_that_cannot_finish_still_exits_by_its_deadline() -> None:
    port = free_port()
    node = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _STUCK_NODE,
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient() as http:

            async def up() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    await http.get(f"http://127.0.0.1:{port}/")
                    return True
                return False

            deadline = time.monotonic() + 30
            while not await up():
                assert time.monotonic() < deadline, "the stuck node never answered"
                await asyncio.sleep(0.05)
        node.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):  # its deadline is 1 s
            status = await node.wait()
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
    assert node.stdout is not None
    log = (await node.stdout.read()).decode()
    assert status == 1, log  # the watchdog's status, not SIGTERM's
    assert "drain did not finish within 1.0s" in log


async def _publish(
    publisher: Recorder, sent: list[asyncio.Future[Any]], stop: asyncio.Event
) -> None:
    """Publish numbered events at about `RATE` a second, acks collected in ``sent``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not stop.is_set():
        payload = {"room": "r", "event": "n", "data": len(sent)}
        sent.append(asyncio.ensure_future(publisher.ask("publish", payload, timeout=30)))
        await asyncio.sleep(max(0.0, start + len(sent) / RATE - loop.time()))
