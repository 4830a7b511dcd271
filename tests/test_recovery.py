"""Connection state recovery over Kafka offsets: three real gateway nodes, real clients."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from .support.cluster import GatewayProcess
from .support.control import CONTROL
from .support.harness import Harness
from .support.recovering import RecoveringRecorder
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

ROOM, GAP_S = "R", 5.0


@pytest.fixture
async def harness(cluster: list[GatewayProcess]) -> AsyncIterator[Harness]:
    async with Harness(cluster) as h:
        yield h


async def _client_in_room(url: str) -> RecoveringRecorder:
    client = await RecoveringRecorder().connect(url)
    assert await client.client.call("join", {"room": ROOM}) == {"ok": True}
    return client


async def _send_gap_traffic(harness: Harness, node: int, sid: str, room_count: int = 1000) -> None:
    await asyncio.gather(
        harness.control(node, "burst", event="room-ev", tag="r", count=room_count, room=ROOM),
        harness.control(node, "burst", event="sid-ev", tag="s", count=100, room=sid),
        harness.control(node, "burst", event="all-ev", tag="a", count=100),
    )


async def _assert_all_once_in_order(client: RecoveringRecorder, room_count: int = 1000) -> None:
    for event, count in (("room-ev", room_count), ("sid-ev", 100), ("all-ev", 100)):
        events = await client.wait_count(event, count, timeout=60)
        assert [e["seq"] for e in events] == list(range(count)), event


async def _sessions_saved(harness: Harness, node: int, sid: str) -> None:
    """Wait until the node has processed the drop (the socket is gone there)."""

    async def gone() -> bool:
        reply = await harness.controls[node].ask("rooms", {"sid": sid}, namespace=CONTROL)
        return reply["ok"] is False

    deadline = time.monotonic() + 15
    while not await gone():
        assert time.monotonic() < deadline, "the node never saw the transport drop"
        await asyncio.sleep(0.05)


async def _recover_and_check_live(
    harness: Harness, client: RecoveringRecorder, url: str, old_sid: str
) -> None:
    await client.client.connect(url, transports=["websocket"])
    assert client.client.recovered["/"] is True
    assert client.sid == old_sid
    await _assert_all_once_in_order(client)
    await harness.control(2, "burst", event="room-ev", tag="r", count=5, room=ROOM)
    events = await client.wait_count("room-ev", 1005)
    assert [e["seq"] for e in events[1000:]] == list(range(5))
    await _barrier(harness, client)
    assert len(client.events("room-ev")) == 1005
    assert len(client.events("sid-ev")) == 100
    assert len(client.events("all-ev")) == 100


async def _barrier(harness: Harness, client: RecoveringRecorder) -> None:
    """Everything emitted so far has reached ``client`` (see Harness.barrier)."""
    await harness.settle()
    token = uuid.uuid4().hex
    await harness.control(2, "emit", event="barrier", data=token, room=client.sid)
    await wait_until(lambda: token in client.events("barrier"), 15, "barrier")


async def test_transport_loss_then_same_node_recovers_everything(harness: Harness) -> None:
    client = await _client_in_room(harness.gateways[0].url)
    try:
        sid = client.sid
        await client.drop_transport()
        started = time.monotonic()
        await _sessions_saved(harness, 0, sid)
        await _send_gap_traffic(harness, 1, sid)
        await asyncio.sleep(max(0.0, GAP_S - (time.monotonic() - started)))
        await _recover_and_check_live(harness, client, harness.gateways[0].url, sid)
    finally:
        await client.close()


async def test_node_killed_during_the_gap_client_recovers_on_another(harness: Harness) -> None:
    client = await _client_in_room(harness.gateways[0].url)
    try:
        sid = client.sid
        await client.drop_transport()
        await _sessions_saved(harness, 0, sid)
        harness.gateways[0].stop(signal.SIGKILL)
        await _send_gap_traffic(harness, 2, sid)
        await _recover_and_check_live(harness, client, harness.gateways[1].url, sid)
    finally:
        await client.close()


async def test_pid_without_offset_recovers(harness: Harness) -> None:
    client = await _client_in_room(harness.gateways[1].url)
    try:
        sid = client.sid
        assert client.client.offsets == {}
        await client.drop_transport()
        await _sessions_saved(harness, 1, sid)
        await _send_gap_traffic(harness, 0, sid)
        await _recover_and_check_live(harness, client, harness.gateways[2].url, sid)
    finally:
        await client.close()
