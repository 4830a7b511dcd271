"""``socketio-kafka demo``: a local Kafka, N gateway nodes, and clients talking across them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp

from socketio_kafka.adapter import AsyncRecoveringClient

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
async def _client(url: str) -> AsyncIterator[AsyncRecoveringClient]:
    client = AsyncRecoveringClient(reconnection=False)
    await client.connect(url, transports=["websocket"])
    try:
        yield client
    finally:
        await client.disconnect()
        await client.shutdown()


class _Inbox:
    """One demo client's received chat lines, with a way to wait for the n-th."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.arrived: list[float] = []
        self._changed = asyncio.Event()

    async def on_chat(self, message: dict[str, str]) -> None:
        self.lines.append(message["text"])
        self.arrived.append(time.perf_counter())
        self._changed.set()

    async def wait(self, count: int) -> None:
        async with asyncio.timeout(15):
            while len(self.lines) < count:
                self._changed.clear()
                await self._changed.wait()


async def _exchange(urls: list[str]) -> None:
    names = ["alice", "bob", "carol", "dave", "erin"]
    async with contextlib.AsyncExitStack() as stack:
        clients: list[tuple[str, AsyncRecoveringClient, _Inbox]] = []
        for i, url in enumerate(urls):
            name, inbox = names[i % len(names)], _Inbox()
            client = await stack.enter_async_context(_client(url))
            client.on("chat", inbox.on_chat)
            await client.call("join", {"room": "lobby"})
            print(f"{name} connected to node {i + 1} ({url}) and joined 'lobby'")
            clients.append((name, client, inbox))
        (sender, alice, _), *others = clients
        sent = time.perf_counter()
        reply = await _say(alice, sender, "hello")
        print(f"{sender} published to 'lobby' through Kafka: {reply}")
        for name, _, inbox in others:
            await inbox.wait(1)
            print(f"  {name} received it after {(inbox.arrived[0] - sent) * 1000:.1f} ms")
        await _show_recovery(urls, alice, others[0])


async def _show_recovery(
    urls: list[str], alice: AsyncRecoveringClient, away: tuple[str, AsyncRecoveringClient, _Inbox]
) -> None:
    name, client, inbox = away
    dropped = asyncio.Event()
    client.on("disconnect", lambda *_: dropped.set())
    await client.eio.ws.close()  # a network drop: no goodbye
    async with asyncio.timeout(15):
        await dropped.wait()
    print(f"\n{name} lost the connection; alice goes on talking:")
    for text in ("are you there?", "we ship on friday", "bring cake"):
        await _say(alice, "alice", text)
        print(f"  alice: {text}")
    target = urls[-1]
    await client.connect(target, transports=["websocket"])
    await inbox.wait(4)
    print(
        f"{name} reconnected to {target}: recovered={client.recovered['/']}, "
        f"missed messages delivered in order: {inbox.lines[1:]}"
    )


async def _say(client: AsyncRecoveringClient, sender: str, text: str) -> object:
    payload = {"room": "lobby", "event": "chat", "data": {"from": sender, "text": text}}
    return await client.call("publish", payload)
