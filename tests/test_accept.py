"""The accept gate's holds: a refused connection waits unread, then is reset; bounded."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest

from benchmarks import flood
from socketio_kafka.gateway.accept import Holds, gated_http
from socketio_kafka.gateway.websocket import CoalescingWebSocketProtocol

from .support.server import run_server
from .support.waiting import wait_until

_FLOODER = "127.0.0.7"


async def _websocket_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


def _refuses_flooder(peer: str | None) -> bool:
    return peer != _FLOODER


def _gated(holds: Holds, gate: Any = _refuses_flooder) -> Any:
    return gated_http(gate, holds, 30, lambda limit, peer: None)


@pytest.mark.timeout(60)
async def test_a_refused_connection_is_held_unread_then_reset_while_others_are_served() -> None:
    holds = Holds(seconds=1.5, per_address=1, total=8)
    async with run_server(_websocket_app, http=_gated(holds)) as url:
        port = int(url.rsplit(":", 1)[1])
        began = time.monotonic()
        held = asyncio.create_task(flood.upgrade("127.0.0.1", port, _FLOODER))
        await wait_until(lambda: holds.held[_FLOODER] == 1, 5, "the first refusal held")
        # Past the address's bound: reset at once, while the first is still held.
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await flood.upgrade("127.0.0.1", port, _FLOODER)
        # Another address is served meanwhile.
        served = await flood.upgrade("127.0.0.1", port, "127.0.0.8")
        served.writer.transport.abort()
        assert served.status == 101
        assert not held.done()
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await held
        assert time.monotonic() - began >= holds.seconds / 2  # never answered sooner
        await wait_until(lambda: not holds.held, 5, "the hold released")


@pytest.mark.timeout(60)
async def test_without_a_hold_a_refused_connection_is_reset_at_once() -> None:
    holds = Holds(seconds=0)
    async with run_server(_websocket_app, http=_gated(holds)) as url:
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            async with asyncio.timeout(5):
                await flood.upgrade("127.0.0.1", port, _FLOODER)
        assert not holds.held


def _protocols() -> list[object]:
    """The HTTP and WebSocket protocol objects alive in this process."""
    return [
        o for o in gc.get_objects()
        if type(o).__name__ in ("BoundedHTTPProtocol", "CoalescingWebSocketProtocol")
    ]  # fmt: skip


@pytest.mark.timeout(60)
async def test_a_closed_websocket_leaves_no_cycle_for_the_collector() -> None:
    """Reference counting frees a WebSocket's protocols, accepted or refused: a churn of
    connections left each one's HTTP parser and abort handle in cycles, and the collector's
    pauses grew with them (gateway/collector.py)."""

    def refuse_one(peer: str | None, path: str, forwarded_for: str | None) -> bool:
        return peer != _FLOODER

    gc.collect()
    gc.disable()
    try:
        ws = CoalescingWebSocketProtocol.gated(refuse_one)
        http = _gated(Holds(), lambda peer: True)
        async with run_server(_websocket_app, ws=ws, http=http) as url:
            port = int(url.rsplit(":", 1)[1])
            for source, status in [("127.0.0.8", 101), (_FLOODER, 403)] * 3:
                up = await flood.upgrade("127.0.0.1", port, source)
                assert up.status == status
                up.writer.transport.abort()
            await wait_until(lambda: not _protocols(), 10, "the protocols freed")
    finally:
        gc.enable()


def test_holds_are_bounded_per_address_and_in_all() -> None:
    holds = Holds(seconds=1, per_address=2, total=3)
    assert [holds.take("a") for _ in range(3)] == [True, True, False]
    assert [holds.take("b") for _ in range(2)] == [True, False]  # the total reached
    holds.release("a")
    assert holds.take("b")
    with pytest.raises(ValueError, match="must be >= 0"):
        Holds(seconds=-1)
