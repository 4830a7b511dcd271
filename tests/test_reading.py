"""Bounds on reading a request (`gateway/reading.py`): a connection that does not send its
request in time, or whose head is too large, is closed and counted; others are served."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from benchmarks import flood
from socketio_kafka.gateway.accept import Holds, gated_http
from socketio_kafka.gateway.limits import READ_TIMEOUT, REQUEST_HEAD
from socketio_kafka.gateway.reading import MAX_HEAD_BYTES

from .support.server import run_server

pytestmark = pytest.mark.timeout(60)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """HTTP: the whole body read, then an answer, at once or after 1.5 s for ``/hold`` (as
    a long-polling GET waits for something to send). WebSocket: accepted, then read."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/hold":
        await asyncio.sleep(1.5)
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[tuple[str, str | None]]]]:
    """A server whose requests have 1 s to be read; yields its port and its refusals."""
    refused: list[tuple[str, str | None]] = []
    http = gated_http(lambda peer: True, Holds(), 1.0, lambda *refusal: refused.append(refusal))
    async with run_server(_app, http=http) as url:
        yield int(url.rsplit(":", 1)[1]), refused


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the server sent until it closed the connection, if it did within ``seconds``."""
    received = b""
    try:
        async with asyncio.timeout(seconds):
            while data := await reader.read(65536):
                received += data
            return received
    except TimeoutError:
        return None


async def test_a_request_not_sent_in_time_is_closed_and_a_held_response_is_not(
    server: tuple[int, list[tuple[str, str | None]]],
) -> None:
    """Nothing sent, half a request's headers, a body too slow: closed at the read timeout,
    and counted. A response held longer than it (a long-polling GET), a kept-alive
    connection idle between requests and a WebSocket are not."""
    port, refused = server
    began = time.monotonic()
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    (silent, _), (half, half_w), (slow, slow_w), (polling, polling_w) = connections
    half_w.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    slow_w.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
    polling_w.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    websocket = await flood.upgrade("127.0.0.1", port, "127.0.0.8")
    assert websocket.status == 101
    try:
        closed = await asyncio.gather(*(_closed_within(r, 5) for r in (silent, half, slow)))
        assert closed == [b"", b"", b""]
        assert time.monotonic() - began >= 1  # not before its time
        assert refused == [(READ_TIMEOUT, "127.0.0.1")] * 3
        # Answered after 1.5 s, and kept: idle after its response, as long as it likes.
        assert (await polling.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
        assert await _closed_within(polling, 1.5) is None
        polling_w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await polling.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
        assert await _closed_within(websocket.reader, 0.5) is None
        assert len(refused) == 3
    finally:
        for _, writer in connections:
            writer.close()
        websocket.writer.transport.abort()


async def test_a_request_head_past_its_bound_is_refused_and_a_large_body_is_not(
    server: tuple[int, list[tuple[str, str | None]]],
) -> None:
    """Headers without end, or one header without end, are answered 431 once past
    `MAX_HEAD_BYTES`, and counted; a head near the bound and a body far past it are served."""
    port, refused = server

    async def send(*chunks: bytes) -> Streams:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        return reader, writer

    many = [b"X-Filler: " + b"a" * 1000 + b"\r\n"] * 100  # 100 kB of headers, never ended
    one = [b"X-Filler: "] + [b"a" * 10_000] * 10  # one header of 100 kB, never ended
    near = b"X-Filler: " + b"a" * (MAX_HEAD_BYTES - 1024) + b"\r\n\r\n"
    body = b"b" * 500_000
    streams = [
        await send(b"GET / HTTP/1.1\r\nHost: x\r\n", *many),
        await send(b"GET / HTTP/1.1\r\nHost: x\r\n", *one),
        await send(b"GET / HTTP/1.1\r\nHost: x\r\n" + near),
        await send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n\r\n" + body),
    ]
    try:
        for reader, _ in streams[:2]:
            answer = await _closed_within(reader, 5)
            assert answer is not None
            assert answer.startswith(b"HTTP/1.1 431 "), answer
        for reader, _ in streams[2:]:
            assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
        assert refused == [(REQUEST_HEAD, "127.0.0.1")] * 2
    finally:
        for _, writer in streams:
            writer.close()
