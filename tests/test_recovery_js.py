"""Connection state recovery with the official socket.io JS client, unmodified."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from .support.cluster import GatewayProcess, gateway_cluster
from .support.harness import Harness
from .support.jsclient import JsClient
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

ROOM = "R"


@pytest.fixture
async def harness(cluster: list[GatewayProcess]) -> AsyncIterator[Harness]:
    async with Harness(cluster) as h:
        yield h


async def _join(js: JsClient, url: str, **options: object) -> str:
    connected = await js.connect(url, **options)
    assert connected["recovered"] is False
    assert await js.call("join", {"room": ROOM}) == {"ok": True}
    return str(connected["id"])


async def _check_recovered(harness: Harness, js: JsClient, sid: str, node: int) -> None:
    await js.wait_connects(2)
    assert js.connects()[-1] == {"type": "connect", "id": sid, "recovered": True}
    for event, count in (("room-ev", 1000), ("sid-ev", 100), ("all-ev", 100)):
        events = await js.wait_count(event, count)
        assert [e["seq"] for e in events] == list(range(count)), event
    # Every event carried its offset as the last argument (the client keeps the last one).
    assert all(isinstance(args[-1], str) and len(args) == 2 for args in js.event_args("room-ev"))
    await harness.control(node, "burst", event="room-ev", tag="r", count=5, room=ROOM)
    events = await js.wait_count("room-ev", 1005)
    assert [e["seq"] for e in events[1000:]] == list(range(5))
    await harness.settle()
    token = uuid.uuid4().hex
    await harness.control(node, "emit", event="barrier", data=token, room=sid)
    await wait_until(
        lambda: (
            [token] in js.event_args("barrier")
            or any(a[0] == token for a in js.event_args("barrier"))
        ),
        15,
        "barrier",
    )
    assert len(js.event_args("room-ev")) == 1005
    assert len(js.event_args("sid-ev")) == 100
    assert len(js.event_args("all-ev")) == 100


async def test_js_transport_loss_recovers_everything_on_the_same_node(
    harness: Harness, js: JsClient
) -> None:
    sid = await _join(js, harness.gateways[0].url)
    await harness.control(1, "emit", event="warmup", data=0, room=ROOM)
    await js.wait_count("warmup", 1)
    await js.send("drop")  # reconnects by itself 5 s later
    await harness.wait_gone(0, sid)
    await harness.gap_traffic(1, sid, ROOM)
    await _check_recovered(harness, js, sid, node=2)


async def test_js_node_killed_client_recovers_on_another(harness: Harness, js: JsClient) -> None:
    sid = await _join(js, harness.gateways[0].url, reconnectionDelay=3000)
    await js.send("drop", url=harness.gateways[1].url)
    await harness.wait_gone(0, sid)
    harness.gateways[0].stop(signal.SIGKILL)
    await harness.gap_traffic(2, sid, ROOM)
    await _check_recovered(harness, js, sid, node=2)


async def test_js_all_nodes_restarted_during_the_gap(harness: Harness, js: JsClient) -> None:
    sid = await _join(js, harness.gateways[0].url, reconnectionDelay=2000)
    await js.send("drop")
    await harness.wait_gone(0, sid)
    await harness.gap_traffic(1, sid, ROOM)
    await harness.restart_all()
    await _check_recovered(harness, js, sid, node=2)


async def test_js_client_back_after_the_window_gets_a_fresh_session(
    kafka_url: str, channel: str, js: JsClient
) -> None:
    async with (
        gateway_cluster(kafka_url, channel, 2, ["--recovery-window", "1"]) as gateways,
        Harness(gateways) as harness,
    ):
        sid = await _join(js, gateways[0].url, reconnectionDelay=3000)
        await js.send("drop")
        await harness.wait_gone(0, sid)
        await harness.control(1, "burst", event="room-ev", tag="r", count=10, room=ROOM)
        await js.wait_connects(2)
        fresh = js.connects()[-1]
        assert fresh["recovered"] is False
        assert fresh["id"] != sid
        assert fresh["id"] in (await harness.control(0, "stats"))["connects"]
        assert js.event_args("room-ev") == []


async def test_js_client_that_never_got_an_event_recovers(harness: Harness, js: JsClient) -> None:
    sid = await _join(js, harness.gateways[1].url, reconnectionDelay=3000)
    await js.send("drop")
    await harness.wait_gone(1, sid)
    await harness.gap_traffic(0, sid, ROOM)
    await _check_recovered(harness, js, sid, node=0)


async def test_js_client_with_garbage_auth_gets_a_fresh_session(
    harness: Harness, js: JsClient
) -> None:
    connected = await js.connect(
        harness.gateways[0].url, auth={"pid": "x" * 5000, "offset": {"forged": [1, 2]}}
    )
    assert connected["recovered"] is False
    assert await js.call("join", {"room": ROOM}) == {"ok": True}


async def test_js_replay_of_ten_thousand_missed_events(harness: Harness, js: JsClient) -> None:
    count = 10_000
    sid = await _join(js, harness.gateways[0].url, reconnection=False)
    await js.send("drop")
    await harness.wait_gone(0, sid)
    await asyncio.gather(
        *(
            harness.control(n, "burst", event="room-ev", tag=f"n{n}", count=count // 2, room=ROOM)
            for n in (1, 2)
        )
    )
    started = time.perf_counter()
    await js.send("reconnect")
    await js.wait_connects(2)
    events = await js.wait_count("room-ev", count, timeout=120)
    elapsed = time.perf_counter() - started
    assert js.connects()[-1]["recovered"] is True
    for tag in ("n1", "n2"):
        assert [e["seq"] for e in events if e["tag"] == tag] == list(range(count // 2))
    print(f"\nJS client: replay of {count} missed events in {elapsed:.3f}s")


async def test_js_graceful_shutdown_sends_clients_elsewhere_with_their_sessions(
    harness: Harness, js: JsClient
) -> None:
    sid = await _join(js, harness.gateways[0].url, reconnectionDelay=1000)
    await js.send("retarget", url=harness.gateways[1].url)  # as a load balancer would
    stopping = asyncio.create_task(asyncio.to_thread(harness.gateways[0].stop))
    await wait_until(
        lambda: any(r["type"] == "disconnect" for r in js.reports), 15, "the node's goodbye"
    )
    await harness.gap_traffic(2, sid, ROOM)
    await stopping
    await _check_recovered(harness, js, sid, node=2)
