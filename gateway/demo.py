"""``socketio-kafka demo``: a local Kafka, N gateway nodes, and clients talking across them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import aiohttp
import socketio

__all__ = ["DemoOptions", "run_demo"]

_READY_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class DemoOptions:
    kafka: str
    nodes: int = 3
    base_port: int = 8001
    channel: str = "demo"
    once: bool = False


def run_demo(options: DemoOptions) -> int:
    """Start the nodes, show a cross-node exchange, then serve until Ctrl-C (or exit, with once)."""
    with _nodes(options) as urls:
        asyncio.run(_wait_ready(urls))
        asyncio.run(_exchange(urls))
        if not options.once:
            print("\nnodes are serving; Ctrl-C stops them:")
            for url in urls:
                print(f"  {url}   (/healthz /readyz /metrics, Socket.IO at /socket.io/)")
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    return 0


@contextlib.contextmanager
def _nodes(options: DemoOptions) -> Iterator[list[str]]:
    processes: list[subprocess.Popen[bytes]] = []
    ports = [options.base_port + i for i in range(options.nodes)]
    try:
        for port in ports:
            command = [
                sys.executable, "-m", "socketio_kafka.gateway", "serve", "--port", str(port),
                "--kafka", options.kafka, "--channel", options.channel, "--log-level", "warning",
            ]  # fmt: skip
            processes.append(subprocess.Popen(command, env=os.environ.copy()))
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


async def _wait_ready(urls: list[str]) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        for url in urls:
            while not await _is_ready(http, url):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not become ready in {_READY_TIMEOUT_S}s")
                await asyncio.sleep(0.2)
    print(f"{len(urls)} gateway nodes ready: {', '.join(urls)}")


async def _is_ready(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(f"{url}/readyz") as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


@contextlib.asynccontextmanager
async def _client(url: str) -> AsyncIterator[socketio.AsyncClient]:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(url, transports=["websocket"])
    try:
        yield client
    finally:
        await client.disconnect()
        await client.shutdown()


async def _exchange(urls: list[str]) -> None:
    names = ["alice", "bob", "carol", "dave", "erin"]
    got: dict[str, asyncio.Future[float]] = {}
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for i, url in enumerate(urls):
            name = names[i % len(names)]
            client = await stack.enter_async_context(_client(url))
            got[name] = asyncio.get_running_loop().create_future()
            client.on("chat", _receiver(got[name]))
            await client.call("join", {"room": "lobby"})
            print(f"{name} connected to node {i + 1} ({url}) and joined 'lobby'")
            clients.append((name, client))
        sender, client = clients[0]
        sent = time.perf_counter()
        reply = await client.call(
            "publish", {"room": "lobby", "event": "chat", "data": {"from": sender, "text": "hello"}}
        )
        print(f"{sender} published to 'lobby' through Kafka: {reply}")
        for name, _ in clients[1:]:
            arrived = await asyncio.wait_for(got[name], 15)
            print(f"  {name} received it after {(arrived - sent) * 1000:.1f} ms")


def _receiver(future: asyncio.Future[float]) -> Callable[[object], Awaitable[None]]:
    async def on_chat(_: object) -> None:
        if not future.done():
            future.set_result(time.perf_counter())

    return on_chat
