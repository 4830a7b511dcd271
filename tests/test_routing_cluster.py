"""Routing without decoding, on a real 3-node cluster: a node decodes only the records
one of its sockets (or its pending acks) wants, old records without headers are still
delivered, and a replay reads only the partitions of what its client missed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from .support.cluster import GatewayProcess
from .support.harness import Harness
from .support.recovering import RecoveringRecorder
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


@pytest.fixture
async def harness(cluster: list[GatewayProcess]) -> AsyncIterator[Harness]:
    async with Harness(cluster) as h:
        yield h


def _decoded(stats: dict[str, Any]) -> int:
    return int(stats["records_consumed"] - stats["records_passed"])


async def _counts(harness: Harness) -> list[tuple[int, int]]:
    """(decoded, passed) per node, once every node has read everything produced."""
    await harness.settle()
    return [(_decoded(s), s["records_passed"]) for s in await harness.stats()]


async def test_a_node_without_recipients_decodes_nothing_yet_every_operation_works(
    harness: Harness,
) -> None:
    """Node 2 has no socket in "/": it writes every operation and decodes none of them."""
    member, other = await harness.clients_on([0, 1])
    assert await member.ask("join", {"room": "r"}) == {"ok": True}
    before = await _counts(harness)

    await harness.control(2, "burst", event="e", tag="t", count=200, room="r")
    assert [e["seq"] for e in await member.wait_for("e", 200)] == list(range(200))
    # An ack across nodes: node 0 asks a socket of node 1, whose answer comes back to node 0.
    other.call_replies["question"] = {"answer": 42}
    reply = await harness.control(0, "call", event="question", data="?", sid=other.sid())
    assert reply["reply"] == {"answer": 42}
    await harness.control(2, "enter_room", sid=other.sid(), room="vip")
    await harness.control(2, "emit", event="vip-news", data=1, room="vip")
    assert await other.wait_for("vip-news", 1) == [1]
    await harness.control(2, "emit", event="all", data=2)
    assert await member.wait_for("all", 1) == [2]
    assert await other.wait_for("all", 1) == [2]
    await harness.control(2, "disconnect_sid", sid=other.sid())
    await wait_until(lambda: not other.client.connected, 15, "remote disconnect")

    after = await _counts(harness)
    (d0, _), (d1, p1), (d2, p2) = (
        (a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)
    )
    written = 200 + 2 + 1 + 1 + 1 + 1  # emits, call and its answer, join, emits, disconnect
    assert (d2, p2) == (0, written)
    assert p1 >= 200  # the room "r" is on node 0 only
    assert d0 >= 200 + 2  # what its socket received, and the answer to its ask
    assert d1 >= 4  # what its socket received, the operations on it


async def _inject(bootstrap: str, topic: str, records: list[tuple[bytes, Any, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value, headers in records:
            value = json.dumps(value).encode()
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def test_records_without_routing_headers_are_still_delivered(
    harness: Harness, kafka_bootstrap: str, channel: str
) -> None:
    """As an older node, or a producer following docs/wire-format.md, writes them."""
    member = await harness.client(1)
    before = await _counts(harness)
    join = {"v": 1, "method": "enter_room", "sid": member.sid(), "room": "old", "namespace": "/"}
    emit = {"v": 1, "method": "emit", "event": "news", "data": ["plain"], "room": "old"}
    future = {**emit, "data": ["future"]}  # a routing version this node does not know
    await _inject(
        kafka_bootstrap,
        f"{channel}.events",
        [
            (b"/#old", {**join, "host_id": "an-older-node"}, None),
            (b"/#old", emit, None),
            (b"/#old", future, [("sio.v", b"2"), ("sio.ns", b"/elsewhere")]),
        ],
    )
    harness.external_records += 3
    assert await member.wait_for("news", 2) == ["plain", "future"]
    after = await _counts(harness)
    assert [a[0] - b[0] for a, b in zip(after, before, strict=True)] == [3, 3, 3]
    assert [a[1] - b[1] for a, b in zip(after, before, strict=True)] == [0, 0, 0]


async def test_a_recovery_in_a_busy_topic_takes_only_its_own_records(harness: Harness) -> None:
    """100 of its own events among 2,000 to 50 other rooms: the node it comes back to still
    holds the gap, takes its records by room, decodes only them, delivers them in order."""
    client = await RecoveringRecorder().connect(harness.gateways[0].url)
    try:
        assert await client.client.call("join", {"room": "mine"}) == {"ok": True}
        sid = client.sid
        await client.drop_transport()
        await harness.wait_gone(0, sid)
        others = [f"other-{n}" for n in range(50)]
        await asyncio.gather(
            *(harness.control(2, "burst", event="other", tag=r, count=40, room=r) for r in others)
        )
        await harness.gap_traffic(1, sid, "mine", room_count=100)
        await harness.settle()
        before = (await harness.stats())[2]

        await client.client.connect(harness.gateways[2].url, transports=["websocket"])
        assert client.client.recovered["/"] is True
        for event, count in (("room-ev", 100), ("sid-ev", 100), ("all-ev", 100)):
            events = await client.wait_count(event, count)
            assert [e["seq"] for e in events] == list(range(count)), event
        after = (await harness.stats())[2]
        read = after["replay_records_read"] - before["replay_records_read"]
        decoded = after["replay_records_decoded"] - before["replay_records_decoded"]
        reused = after["replay_records_reused"] - before["replay_records_reused"]
        # The node still holds the gap (adapter/history.py): its own records are taken by
        # room from memory, nothing is read from Kafka and only they are decoded.
        assert (read, reused, decoded) == (0, 300, 300)
        assert client.events("other") == []
    finally:
        await client.close()
