"""A connection closed while the app's connect handler runs leaves no socket behind.

python-socketio's disconnect found the socket not connected yet and did nothing; the
handler then returned and the socket was registered, in its rooms, counted as connected,
for good. Over long-polling, where the CLOSE is a POST of its own; the gateway's node,
with recovery on and off (the same server class either way)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from socketio_kafka.gateway.app import create_app
from socketio_kafka.gateway.settings import Settings

from .support.rawclient import engineio_url
from .support.server import run_server
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(60)]


@pytest.mark.parametrize("recovery", [True, False])
async def test_a_connection_closed_while_it_connects_leaves_no_socket(
    kafka_url: str, channel: str, recovery: bool
) -> None:
    app = create_app(Settings(channel=channel, recovery=recovery), kafka_url)
    sio, manager = app.state.node.sio, app.state.node.manager
    entered, go = asyncio.Event(), asyncio.Event()
    left: list[str] = []

    @sio.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        await sio.enter_room(sid, "lobby")
        entered.set()
        await go.wait()  # a database lookup, say

    @sio.on("disconnect")
    async def disconnect(sid: str, reason: str) -> None:
        left.append(sid)

    async with manager, run_server(app) as url, httpx.AsyncClient(timeout=10) as http:
        handshake = await http.get(engineio_url(url, "polling"))
        eio_sid = json.loads(handshake.text[1:])["sid"]
        polling = engineio_url(url, "polling", eio_sid)
        # The CONNECT is handled in its own task (adapter/lanes.py): the POST returns.
        connecting = asyncio.create_task(http.post(polling, content="40"))
        await asyncio.wait_for(entered.wait(), 10)
        # Engine.IO's CLOSE: its disconnect waits for the CONNECT (5 s at most, then goes on).
        await http.post(polling, content="1")
        await wait_until(lambda: eio_sid not in sio.environ, 10, "the close handled")
        go.set()
        await connecting
        await wait_until(lambda: len(left) == 1, 10, "the app's disconnect handler")
        assert list(manager.get_participants("/", None)) == []
        assert list(manager.get_participants("/", "lobby")) == []
        assert sio._live == {}
        assert not manager.plain_sids
