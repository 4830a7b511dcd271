"""The node's bound on unfinished messages (`gateway/inbound.py`): past it, the connections
that began theirs longest ago are closed, and counted; quick senders are served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from benchmarks import flood
from socketio_kafka.gateway.accept import Holds, gated_http
from socketio_kafka.gateway.inbound import InboundBudget
from socketio_kafka.gateway.limits import INBOUND_BYTES
from socketio_kafka.gateway.websocket import CoalescingWebSocketProtocol

from .support.rawclient import close_code
from .support.server import run_server
from .support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

Refusal = tuple[str, str | None]


@dataclass(eq=False)
class _Holder:
    client: tuple[str, int] | None
    cut: bool = False

    def cut_inbound(self) -> None:
        self.cut = True


@dataclass
class _Refusals:
    seen: list[Refusal] = field(default_factory=list)

    def __call__(self, limit: str, peer: str | None) -> None:
        self.seen.append((limit, peer))


def test_past_the_limit_the_oldest_holders_are_cut_until_the_rest_fit() -> None:
    refused = _Refusals()
    budget = InboundBudget(1000, refused)
    first, second, third = (_Holder(("10.0.0.1", port)) for port in (1, 2, 3))
    budget.hold(first, 300)
    budget.hold(second, 300)
    budget.hold(first, 400)  # more of the same message: still the oldest
    budget.hold(third, 300)
    assert (budget.bytes, len(budget)) == (1000, 3)  # at the limit is within it
    assert not any(holder.cut for holder in (first, second, third))
    budget.hold(third, 800)  # 1,500: the two oldest must go for the rest to fit
    assert (first.cut, second.cut, third.cut) == (True, True, False)
    assert (budget.bytes, len(budget)) == (800, 1)
    assert refused.seen == [(INBOUND_BYTES, "10.0.0.1")] * 2
    budget.hold(third, 0)  # its message is whole
    budget.hold(first, 0)  # a cut holder's close: nothing left to release
    assert (budget.bytes, len(budget)) == (0, 0)


def test_a_holder_over_the_limit_alone_is_cut() -> None:
    refused = _Refusals()
    budget = InboundBudget(100, refused)
    alone = _Holder(None)
    budget.hold(alone, 101)
    assert alone.cut
    assert (budget.bytes, refused.seen) == (0, [(INBOUND_BYTES, None)])
    with pytest.raises(ValueError, match="limit must be >= 1"):
        InboundBudget(0, refused)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """WebSocket: accepted, each message answered with its length. HTTP: the body read, then
    its length answered; on ``/early``, 413 before the body is read."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] != "websocket.disconnect":
            await send({"type": "websocket.send", "text": str(len(message["text"]))})
        return
    if scope["path"] == "/early":  # answered before its body is read, as Engine.IO
        headers = [(b"content-length", b"0")]  # answers a request over its payload limit
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    length = 0
    while True:
        message = await receive()
        length += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    answer = str(length).encode()
    headers = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, InboundBudget, _Refusals]]:
    """A server whose connections may hold 1 MB of unfinished messages in all."""
    refused = _Refusals()
    budget = InboundBudget(1_000_000, refused)
    http = gated_http(lambda peer: True, Holds(), 30.0, refused, budget)
    ws = CoalescingWebSocketProtocol.gated(lambda *request: True, budget)
    async with run_server(_app, ws=ws, http=http) as url:
        yield int(url.rsplit(":", 1)[1]), budget, refused


async def test_the_connections_that_began_longest_ago_are_closed_and_quick_ones_served(
    server: tuple[int, InboundBudget, _Refusals],
) -> None:
    """A WebSocket message and a POST body left unfinished hold their bytes; a third
    unfinished message takes the node past its bound, and the two begun first are closed
    (the WebSocket with 1013, try again later), and counted. The third, finished, is
    answered; so is a whole message of 900 kB sent at once. What was held is released."""
    port, budget, refused = server
    oldest = await flood.upgrade("127.0.0.1", port, "127.0.0.1")
    assert oldest.status == 101
    oldest.writer.write(flood.frame_header(400_000) + b"4" * 399_999)  # all but its last byte
    await wait_until(lambda: budget.bytes >= 399_999, 10, "the first message held")
    post_reader, post_writer = await asyncio.open_connection("127.0.0.1", port)
    post_writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 400000\r\n\r\n")
    post_writer.write(b"b" * 300_000)
    await wait_until(lambda: budget.bytes >= 699_999, 10, "the body held")
    newest = await flood.upgrade("127.0.0.1", port, "127.0.0.1")
    quick = await flood.upgrade("127.0.0.1", port, "127.0.0.1")
    try:
        assert refused.seen == []
        newest.writer.write(flood.frame_header(800_000) + b"4" * 799_999)
        assert await close_code(oldest.reader) == 1013
        async with asyncio.timeout(10):
            assert await post_reader.read(-1) == b""  # closed, unanswered
        assert refused.seen == [(INBOUND_BYTES, "127.0.0.1")] * 2
        await wait_until(lambda: budget.bytes == 799_999, 10, "the newest's message held")
        newest.writer.write(b"4")
        assert await _text(newest.reader) == b"800000"
        quick.writer.write(flood.frame_header(900_000) + b"4" * 900_000)
        assert await _text(quick.reader) == b"900000"
        assert (budget.bytes, len(budget), len(refused.seen)) == (0, 0, 2)
    finally:
        post_writer.close()
        for up in (oldest, newest, quick):
            up.writer.transport.abort()


async def _text(reader: asyncio.StreamReader) -> bytes:
    """The payload of the next (unmasked, short) text frame the server sends."""
    async with asyncio.timeout(10):
        first, length = await reader.readexactly(2)
        assert (first, length < 126) == (0x81, True)
        return await reader.readexactly(length)


async def test_a_large_message_sent_slowly_but_steadily_is_served_alone(
    server: tuple[int, InboundBudget, _Refusals],
) -> None:
    """Holding is not refused by itself: one connection's 900 kB message, sent in pieces
    over a second, stays within the bound and is answered."""
    port, budget, refused = server
    up = await flood.upgrade("127.0.0.1", port, "127.0.0.1")
    try:
        up.writer.write(flood.frame_header(900_000))
        for _ in range(9):
            up.writer.write(b"4" * 100_000)
            await up.writer.drain()
            await asyncio.sleep(0.1)
        assert await _text(up.reader) == b"900000"
        assert (budget.bytes, refused.seen) == (0, [])
    finally:
        up.writer.transport.abort()


async def test_a_body_sent_on_after_its_answer_holds_nothing(
    server: tuple[int, InboundBudget, _Refusals],
) -> None:
    """uvicorn drops a body the app answered before reading: 1.5 MB of it, more than the
    node may hold in all, costs nothing of the bound, and the next request is served."""
    port, budget, refused = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 1500000\r\n\r\n")
        async with asyncio.timeout(10):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 413")
        writer.write(b"b" * 1_500_000)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        async with asyncio.timeout(10):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(1) == b"3"
        assert (budget.bytes, refused.seen) == (0, [])
    finally:
        writer.close()
