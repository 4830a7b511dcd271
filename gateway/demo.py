"""``socketio-kafka demo``: a local Kafka, N gateway nodes, and clients talking across them.

With a JWT secret (``--jwt-secret-file``, or the ``SOCKETIO_KAFKA_JWT_*`` variables the
nodes read too), the demo is its own issuer: it signs tokens for its clients and for the
demo page's URLs with the nodes' secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import jwt

from socketio_kafka.adapter import AsyncRecoveringClient

from .errors import InvalidSettings
from .settings import Settings, _secret

__all__ = ["ROOM", "DemoOptions", "DemoTokens", "page_urls", "run_demo"]

_READY_TIMEOUT_S = 60.0
#: The room the demo's clients and its page talk in.
ROOM = "lobby"


@dataclass(frozen=True, slots=True)
class DemoOptions:
    kafka: str
    nodes: int = 3
    base_port: int = 8001
    channel: str = "demo"
    once: bool = False
    #: Given to the nodes; the environment's ``SOCKETIO_KAFKA_JWT_*`` reach them anyway.
    jwt_secret_file: str | None = None


@dataclass(frozen=True, slots=True)
class DemoTokens:
    """Tokens signed with the nodes' own secret, for the demo's clients and page.

    Example::

        tokens = DemoTokens.from_settings(settings)  # None: the nodes check no tokens
        tokens.mint("alice")  # may join and publish in the demo's room for a day
    """

    secret: str = field(repr=False)
    algorithm: str
    audience: str | None = None
    issuer: str | None = None
    lifetime_s: float = 24 * 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DemoTokens | None:
        """The nodes' HMAC secret and checks; raises `InvalidSettings` for a public key,
        whose private half the demo does not have."""
        verifier = settings.token_verifier
        if verifier is None:
            return None
        secret = settings.jwt_secret or _secret("jwt_secret_file", settings.jwt_secret_file)
        if secret is None:
            raise InvalidSettings(
                "the demo signs its tokens with the nodes' secret (--jwt-secret-file):"
                " with a public key, tokens come from the issuer holding the private key"
            )
        return cls(secret, verifier.algorithms[0], verifier.audience, verifier.issuer)

    def mint(self, subject: str) -> str:
        now = time.time()
        claims: dict[str, Any] = {
            "sub": subject,
            "iat": int(now),
            "exp": int(now + self.lifetime_s),
            "rooms": [ROOM],
            "publish": [ROOM],
        }
        claims |= {"aud": self.audience} if self.audience else {}
        claims |= {"iss": self.issuer} if self.issuer else {}
        return jwt.encode(claims, self.secret, algorithm=self.algorithm)

    def auth(self, subject: str) -> dict[str, str]:
        """A CONNECT auth payload carrying a fresh token for ``subject``."""
        return {"token": self.mint(subject)}


def page_urls(urls: list[str], tokens: DemoTokens | None) -> list[str]:
    """The demo page on each node, listing every node (its own first, then the others it
    moves to on reconnects); with tokens, one per page as ``#token=``, which browsers do
    not send to servers, so it stays out of their logs."""
    pages = []
    for i, url in enumerate(urls):
        nodes = ",".join(urls[i:] + urls[:i])
        page = f"{url}/?{urlencode({'nodes': nodes, 'room': ROOM}, safe=':/,')}"
        if tokens is not None:
            page += f"#token={quote(tokens.mint(f'guest-{i + 1}'))}"
        pages.append(page)
    return pages


def run_demo(options: DemoOptions, tokens: DemoTokens | None = None) -> int:
    """Start the nodes, show a cross-node exchange, then serve until Ctrl-C (or exit, with
    once); ``tokens`` for nodes that check JWTs (`DemoTokens.from_settings`)."""
    with _nodes(options) as urls:
        asyncio.run(_wait_ready(urls))
        asyncio.run(_exchange(urls, tokens))
        if not options.once:
            print("\nnodes are serving; Ctrl-C stops them:")
            for url in urls:
                print(f"  {url}   (/healthz /readyz /metrics, Socket.IO at /socket.io/)")
            print("the demo page, in a browser (one per node; a reconnect moves to the next):")
            for page in page_urls(urls, tokens):
                print(f"  {page}")
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
            if options.jwt_secret_file is not None:
                command += ["--jwt-secret-file", options.jwt_secret_file]
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
async def _client(url: str, auth: dict[str, str] | None) -> AsyncIterator[AsyncRecoveringClient]:
    client = AsyncRecoveringClient(reconnection=False)
    await client.connect(url, transports=["websocket"], auth=auth)
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


def _auth(tokens: DemoTokens | None, name: str) -> dict[str, str] | None:
    return None if tokens is None else tokens.auth(name)


async def _exchange(urls: list[str], tokens: DemoTokens | None) -> None:
    names = ["alice", "bob", "carol", "dave", "erin"]
    async with contextlib.AsyncExitStack() as stack:
        clients: list[tuple[str, AsyncRecoveringClient, _Inbox]] = []
        for i, url in enumerate(urls):
            name, inbox = names[i % len(names)], _Inbox()
            client = await stack.enter_async_context(_client(url, _auth(tokens, name)))
            client.on("chat", inbox.on_chat)
            await client.call("join", {"room": ROOM})
            print(f"{name} connected to node {i + 1} ({url}) and joined 'lobby'")
            clients.append((name, client, inbox))
        (sender, alice, _), *others = clients
        sent = time.perf_counter()
        reply = await _say(alice, sender, "hello")
        print(f"{sender} published to 'lobby' through Kafka: {reply}")
        for name, _, inbox in others:
            await inbox.wait(1)
            print(f"  {name} received it after {(inbox.arrived[0] - sent) * 1000:.1f} ms")
        await _show_recovery(urls, alice, others[0], tokens)


async def _show_recovery(
    urls: list[str],
    alice: AsyncRecoveringClient,
    away: tuple[str, AsyncRecoveringClient, _Inbox],
    tokens: DemoTokens | None,
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
    target = urls[-1] if len(urls) > 2 else urls[0]  # not its own node (the second)
    await client.connect(target, transports=["websocket"], auth=_auth(tokens, name))
    await inbox.wait(4)
    print(
        f"{name} reconnected to {target}: recovered={client.recovered['/']}, "
        f"missed messages delivered in order: {inbox.lines[1:]}"
    )


async def _say(client: AsyncRecoveringClient, sender: str, text: str) -> object:
    payload = {"room": ROOM, "event": "chat", "data": {"from": sender, "text": text}}
    return await client.call("publish", payload)
