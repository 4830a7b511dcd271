"""Exactly-once client publish: a client-chosen ``id`` is produced once per session, on
whichever node the session is recovered (after a transport drop or its node's SIGKILL),
and `AsyncRecoveringClient` resends what was not acked after it recovers."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import uuid
from typing import Any

import pytest
import socketio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from socketio_kafka.adapter import AsyncKafkaManager, RecoveringAsyncServer
from socketio_kafka.gateway.protocol import register

from .support.clients import Recorder
from .support.cluster import FAST_PUBLISHER, gateway_cluster
from .support.jsclient import JsClient
from .support.recovering import RecoveringRecorder
from .support.server import run_server
from .support.waiting import wait_until
from .test_metrics import sample, scrape_until

pytestmark = [pytest.mark.kafka]

ROOM = "R"


async def _ids_on_topic(bootstrap: str, topic: str, prefix: str) -> collections.Counter[str]:
    """How many records of the topic, to its end now, carry each ``sio.cid`` of ``prefix``:
    read by a plain consumer, as any Kafka reader sees the topic."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    counts: collections.Counter[str] = collections.Counter()
    try:
        partitions = consumer.partitions_for_topic(topic)
        assert partitions
        end = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        read = {tp: 0 for tp in end}
        async with asyncio.timeout(30):
            while any(read[tp] < end[tp] for tp in end):
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    for record in records:
                        read[tp] = record.offset + 1
                        cid = dict(record.headers).get("sio.cid", b"").decode()
                        if cid.startswith(prefix) and record.offset < end[tp]:
                            counts[cid] += 1
    finally:
        await consumer.stop()
    return counts


async def _member(url: str) -> Recorder:
    member = await Recorder(url).connect()
    assert await member.ask("join", {"room": ROOM}) == {"ok": True}
    return member


async def _publisher(url: str) -> RecoveringRecorder:
    publisher = await RecoveringRecorder().connect(url)
    assert await publisher.client.call("join", {"room": ROOM}) == {"ok": True}
    return publisher


def _said(seq: int, prefix: str) -> dict[str, Any]:
    return {"room": ROOM, "event": "said", "data": seq, "id": f"{prefix}{seq}"}


@pytest.mark.timeout(60)
async def test_a_repeat_is_acked_as_one_and_delivered_once(
    kafka_url: str, kafka_bootstrap: str, channel: str
) -> None:
    prefix = f"{uuid.uuid4().hex[:6]}-"
    async with gateway_cluster(kafka_url, channel, 2, FAST_PUBLISHER) as nodes:
        member = await _member(nodes[1].url)
        sender = await _member(nodes[0].url)
        first = await sender.ask("publish", _said(0, prefix))
        again = await sender.ask("publish", _said(0, prefix))
        assert first == {"ok": True, "id": f"{prefix}0", "repeat": False}
        assert again == {"ok": True, "id": f"{prefix}0", "repeat": True}
        # Both at once: the second waits for the first, and is its repeat.
        both = await asyncio.gather(*(sender.ask("publish", _said(1, prefix)) for _ in "ab"))
        assert sorted(reply["repeat"] for reply in both) == [False, True]
        # Another session's same id is its own publish.
        other = await _member(nodes[0].url)
        assert (await other.ask("publish", _said(0, prefix)))["repeat"] is False
        # Without an id nothing is checked: each is produced.
        plain = {"room": ROOM, "event": "said", "data": "plain"}
        assert (await sender.ask("publish", plain))["repeat"] is False
        assert await member.wait_for("said", 4) == [0, 1, 0, "plain"]
        counts = await _ids_on_topic(kafka_bootstrap, f"{channel}.events", prefix)
        assert counts == {f"{prefix}0": 2, f"{prefix}1": 1}  # the two sessions' own
        assert member.events("said") == [0, 1, 0, "plain"]  # nothing more arrived
        scraped = await scrape_until(
            nodes[0].url,
            lambda found: sample(found, "socketio_kafka_publish_ids") == 3,  # read from Kafka
            "the three publish ids read",
        )
        assert sample(scraped, "socketio_kafka_publish_repeats_total", outcome="acked") == 2
        for client in (member, sender, other):
            await client.client.disconnect()


@pytest.mark.timeout(60)
async def test_a_repeat_on_the_node_a_session_recovers_on_is_acked_as_one(
    kafka_url: str, kafka_bootstrap: str, channel: str
) -> None:
    prefix = f"{uuid.uuid4().hex[:6]}-"
    async with gateway_cluster(kafka_url, channel, 3, FAST_PUBLISHER) as nodes:
        member = await _member(nodes[2].url)
        publisher = await _publisher(nodes[0].url)
        assert (await publisher.client.publish(ROOM, "said", 0, id=f"{prefix}0"))["repeat"] is False
        await member.wait_for("said", 1)
        await publisher.drop_transport()
        await _wait_disconnected(publisher)
        await publisher.client.connect(nodes[1].url, transports=["websocket"])
        assert publisher.client.recovered["/"] is True
        reply = await publisher.client.publish(ROOM, "said", 0, id=f"{prefix}0")
        assert reply == {"ok": True, "id": f"{prefix}0", "repeat": True}
        # Its node killed: the next one still knows the ids it accepted.
        assert (await publisher.client.publish(ROOM, "said", 1, id=f"{prefix}1"))["repeat"] is False
        nodes[1].stop(signal.SIGKILL)
        await _wait_disconnected(publisher)
        await publisher.client.connect(nodes[0].url, transports=["websocket"])
        assert publisher.client.recovered["/"] is True
        for seq in (0, 1):
            assert (await publisher.client.publish(ROOM, "said", seq, id=f"{prefix}{seq}"))[
                "repeat"
            ] is True
        assert (await publisher.client.publish(ROOM, "said", 2, id=f"{prefix}2"))["repeat"] is False
        assert await member.wait_for("said", 3) == [0, 1, 2]
        counts = await _ids_on_topic(kafka_bootstrap, f"{channel}.events", prefix)
        assert counts == {f"{prefix}{seq}": 1 for seq in range(3)}
        assert member.events("said") == [0, 1, 2]
        await publisher.close()
        await member.client.disconnect()


@pytest.mark.timeout(60)
async def test_a_publish_handled_after_its_session_left_is_refused_and_its_resend_goes_once(
    kafka_url: str, kafka_bootstrap: str, channel: str
) -> None:
    """python-socketio runs each event's handler in a task of its own: a publish read just
    before its connection dropped can be handled after the node wrote the session "left".
    It is refused, not produced under the socket's sid, which the resend its client makes
    once recovered would not be known by: both went out, and members got both (CI of
    session 43: ten publishes twice)."""
    manager = AsyncKafkaManager(kafka_url, channel=channel)
    sio = RecoveringAsyncServer(
        client_manager=manager, async_mode="asgi", connection_state_recovery={}
    )
    register(sio)
    handler = sio.handlers["/"]["publish"]
    started, go = asyncio.Event(), asyncio.Event()
    late: list[Any] = []

    async def held_back(sid: str, *args: Any) -> Any:
        started.set()
        await go.wait()
        late.append(await handler(sid, *args))
        return late[-1]

    sio.handlers["/"]["publish"] = held_back
    prefix = f"{uuid.uuid4().hex[:6]}-"
    async with manager, run_server(socketio.ASGIApp(sio)) as url:
        member = await _member(url)
        publisher = await RecoveringRecorder().connect(url)
        sid = publisher.sid
        try:
            first = asyncio.create_task(publisher.client.publish(ROOM, "said", 0, id=f"{prefix}0"))
            await asyncio.wait_for(started.wait(), 15)
            await publisher.drop_transport()
            await wait_until(lambda: not manager.is_connected(sid, "/"), 15, "the session left")
            sio.handlers["/"]["publish"] = handler
            go.set()
            await wait_until(lambda: bool(late), 15, "the late handler")
            assert late == [{"ok": False, "error": "broker: the connection is closed"}]
            await _wait_disconnected(publisher)
            await publisher.client.connect(url, transports=["websocket"])
            assert (publisher.client.recovered["/"], publisher.sid) == (True, sid)
            assert (await asyncio.wait_for(first, 15))["repeat"] is False  # resent, produced
            assert (await publisher.client.publish(ROOM, "said", 1, id=f"{prefix}1"))["ok"]
            assert await member.wait_for("said", 2) == [0, 1]
            counts = await _ids_on_topic(kafka_bootstrap, f"{channel}.events", prefix)
            assert counts == {f"{prefix}0": 1, f"{prefix}1": 1}
            assert member.events("said") == [0, 1]
        finally:
            await publisher.close()
            await member.close()


async def _wait_disconnected(publisher: RecoveringRecorder) -> None:
    """Until the client has let its connection go, its HTTP session closed too: Engine.IO
    closes it late, and a connection made before then loses its session to that close."""
    eio = publisher.client.eio
    await wait_until(
        lambda: not publisher.client.connected and eio.state == "disconnected" and eio.http is None,
        15,
        "the connection let go",
    )


@pytest.mark.timeout(90)
async def test_resent_publishes_reach_every_member_once_through_drops_and_a_kill(
    kafka_url: str, kafka_bootstrap: str, channel: str
) -> None:
    """200 publishes, at most 40 in flight; every 50 the connection goes: a transport drop
    back to the same node, its node SIGKILLed, a drop to a third node. Unacked ones are
    resent after each recovery. Members on the other nodes get each once, in order, and
    the events topic holds each once."""
    total, every = 200, 50
    prefix = f"{uuid.uuid4().hex[:6]}-"
    async with gateway_cluster(kafka_url, channel, 3, FAST_PUBLISHER) as nodes:
        members = [await _member(nodes[1].url), await _member(nodes[2].url)]
        publisher = await _publisher(nodes[0].url)
        window = asyncio.Semaphore(40)

        async def publish(seq: int) -> Any:
            async with window:
                return await publisher.client.publish(ROOM, "said", seq, id=f"{prefix}{seq}")

        replies: list[asyncio.Task[Any]] = []
        for seq in range(total):
            replies.append(asyncio.create_task(publish(seq)))
            if seq % every != every - 1 or seq == total - 1:
                continue
            # Let some go out, not all be acked, then lose the connection.
            await asyncio.sleep(0)
            cut = seq // every
            if cut == 1:
                nodes[0].stop(signal.SIGKILL)
                await _wait_disconnected(publisher)
            else:
                await publisher.drop_transport()
                await _wait_disconnected(publisher)
            await publisher.client.connect(nodes[cut].url, transports=["websocket"])
            assert publisher.client.recovered["/"] is True
        acks = await asyncio.wait_for(asyncio.gather(*replies), 60)
        assert all(ack["ok"] for ack in acks), [a for a in acks if not a["ok"]]
        for member in members:
            assert await member.wait_for("said", total, timeout=30) == list(range(total))
        counts = await _ids_on_topic(kafka_bootstrap, f"{channel}.events", prefix)
        assert counts == {f"{prefix}{seq}": 1 for seq in range(total)}
        for member in members:
            assert member.events("said") == list(range(total))  # nothing more arrived
            await member.client.disconnect()
        await publisher.close()


@pytest.mark.timeout(60)
async def test_a_publish_written_twice_reaches_members_once_live_and_replayed(
    kafka_url: str, kafka_bootstrap: str, channel: str
) -> None:
    """The race no check closes (an old node's record Kafka takes after the resend went
    elsewhere): both copies on the topic, the first in the partition's order delivered."""
    async with gateway_cluster(kafka_url, channel, 2, FAST_PUBLISHER) as nodes:
        live = [await _member(nodes[0].url), await _member(nodes[1].url)]
        away = await _publisher(nodes[1].url)
        await away.drop_transport()
        await _wait_disconnected(away)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for data, pub_id in (("twice", "x-1"), ("twice", "x-1"), ("other", "x-2")):
                value = {"v": 1, "method": "emit", "event": "said", "data": [data], "room": ROOM}
                headers = [
                    ("sio.v", b"1"),
                    ("sio.method", b"emit"),
                    ("sio.ns", b"/"),
                    ("sio.room", ROOM.encode()),
                    ("sio.cid", pub_id.encode()),
                    ("sio.pub", b"0123456789abcdef"),
                ]
                await producer.send_and_wait(
                    f"{channel}.events",
                    json.dumps(value).encode(),
                    key=f"/#{ROOM}".encode(),
                    headers=headers,
                )
        finally:
            await producer.stop()
        for member in live:
            assert await member.wait_for("said", 2) == ["twice", "other"]
        await away.client.connect(nodes[0].url, transports=["websocket"])
        assert away.client.recovered["/"] is True
        assert await away.wait_count("said", 2) == ["twice", "other"]
        # A marker behind them in the room's partition: nothing more came before it.
        assert (await away.client.publish(ROOM, "said", "end"))["ok"] is True
        for member in live:
            assert await member.wait_for("said", 3) == ["twice", "other", "end"]
        assert away.events("said") == ["twice", "other"]
        for node in nodes:  # the second copy, dropped when read (replays do not count)
            await scrape_until(
                node.url,
                lambda found: (
                    sample(found, "socketio_kafka_publish_repeats_total", outcome="dropped") == 1
                ),
                "the second copy dropped",
            )
        for member in live:
            await member.client.disconnect()
        await away.close()


@pytest.mark.timeout(60)
async def test_the_js_clients_own_retries_publish_once_across_nodes(
    kafka_url: str, kafka_bootstrap: str, channel: str, js: JsClient
) -> None:
    """The official client, its ``retries`` on: what it resends after a drop (recovered on
    another node) is acked as a repeat where it got through, and delivered once."""
    total, every = 60, 20
    prefix = f"{uuid.uuid4().hex[:6]}-"
    async with gateway_cluster(kafka_url, channel, 3, FAST_PUBLISHER) as nodes:
        members = [await _member(nodes[1].url), await _member(nodes[2].url)]
        await js.connect(nodes[0].url, retries=20, ackTimeout=3000, reconnectionDelay=200)
        assert await js.call("join", {"room": ROOM}) == {"ok": True}
        for seq in range(total):
            await js.send("emitRetried", id=10_000 + seq, event="publish", data=_said(seq, prefix))
            if seq % every == every - 1 and seq != total - 1:
                await js.send("drop", url=nodes[(seq // every + 1) % 3].url)
                await js.wait_connects(seq // every + 2)
        await wait_until(lambda: len(_js_replies(js)) == total, 45, f"{total} JS acks")
        assert all(reply["ok"] for reply in _js_replies(js))
        assert [c["recovered"] for c in js.connects()] == [False, True, True]
        for member in members:
            assert await member.wait_for("said", total, timeout=30) == list(range(total))
        counts = await _ids_on_topic(kafka_bootstrap, f"{channel}.events", prefix)
        assert counts == {f"{prefix}{seq}": 1 for seq in range(total)}
        for member in members:
            assert member.events("said") == list(range(total))
            await member.client.disconnect()


def _js_replies(js: JsClient) -> list[Any]:
    return [r["reply"] for r in js.reports if r["type"] == "reply" and r["id"] >= 10_000]
