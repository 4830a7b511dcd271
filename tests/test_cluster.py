"""Cross-node delivery through real Kafka: three gateway processes, real python-socketio clients."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from .support.cluster import REPO, GatewayProcess
from .support.control import OTHER
from .support.harness import Harness
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


@pytest.fixture
async def harness(cluster: list[GatewayProcess]) -> Harness:
    async with Harness(cluster) as h:
        yield h


async def test_broadcast_reaches_every_client_on_every_node_once(harness: Harness) -> None:
    clients = await harness.clients_on([0, 0, 1, 1, 2, 2])
    await harness.control(1, "emit", event="news", data={"n": 1})
    for client in clients:
        await client.wait_for("news", 1)
    await harness.barrier(clients)
    assert [c.events("news") for c in clients] == [[{"n": 1}]] * 6


async def test_room_emit_reaches_exactly_the_members(harness: Harness) -> None:
    members = await harness.clients_on([0, 1, 2])
    others = await harness.clients_on([0, 1, 2])
    for member in members:
        assert await member.ask("join", {"room": "r1"}) == {"ok": True}
    await harness.control(0, "emit", event="room-news", data="hi", room="r1")
    for member in members:
        assert await member.wait_for("room-news", 1) == ["hi"]
    await harness.barrier(members + others)
    assert [m.events("room-news") for m in members] == [["hi"]] * 3
    assert [o.events("room-news") for o in others] == [[]] * 3


async def test_skip_sid_skips_a_socket_on_another_node(harness: Harness) -> None:
    clients = await harness.clients_on([0, 1, 2])
    for client in clients:
        assert await client.ask("join", {"room": "r"}) == {"ok": True}
    skipped = clients[1]
    await harness.control(0, "emit", event="e", data=1, room="r", skip_sid=skipped.sid())
    await clients[0].wait_for("e", 1)
    await clients[2].wait_for("e", 1)
    await harness.barrier(clients)
    assert skipped.events("e") == []


async def test_namespaces_are_isolated(harness: Harness) -> None:
    main = await harness.clients_on([0, 1, 2])
    other = await harness.clients_on([0, 1, 2], namespaces=[OTHER])
    for client in main:
        await client.ask("join", {"room": "same"})
    for client in other:
        await client.ask("join", {"room": "same"}, namespace=OTHER)
    await harness.control(2, "emit", event="ns", data="other-only", room="same", namespace=OTHER)
    await harness.control(2, "emit", event="ns", data="to-all-other", namespace=OTHER)
    for client in other:
        await client.wait_for("ns", 2, namespace=OTHER)
    await harness.barrier(main)
    assert all(c.events("ns") == [] for c in main)
    assert all(sorted(c.events("ns", OTHER)) == ["other-only", "to-all-other"] for c in other)


async def test_binary_payloads_arrive_intact(harness: Harness) -> None:
    sender, *receivers = await harness.clients_on([0, 1, 2])
    blob = bytes(range(256)) * 64
    for client in (sender, *receivers):
        await client.ask("join", {"room": "bin"})
    reply = await sender.ask(
        "publish", {"room": "bin", "event": "blob", "data": {"name": "x", "raw": blob}}
    )
    assert reply["ok"] is True
    for receiver in receivers:
        (got,) = await receiver.wait_for("blob", 1)
        assert got == {"name": "x", "raw": blob}
    await harness.control(0, "emit", event="raw", data=blob[:100], room="bin")
    for client in (sender, *receivers):
        assert await client.wait_for("raw", 1) == [blob[:100]]


async def test_ack_requested_on_one_node_is_answered_by_a_client_on_another(
    harness: Harness,
) -> None:
    client = await harness.client(2)
    client.call_replies["question"] = {"answer": 42}
    reply = await harness.control(0, "call", event="question", data="?", sid=client.sid())
    assert reply["reply"] == {"answer": 42}
    assert client.events("question") == ["?"]


async def test_remote_disconnect(harness: Harness) -> None:
    victim, bystander = await harness.clients_on([1, 2])
    await harness.control(0, "disconnect_sid", sid=victim.sid())
    await wait_until(lambda: not victim.client.connected, 15, "remote disconnect")
    assert bystander.client.connected


async def test_remote_enter_and_leave_room(harness: Harness) -> None:
    client = await harness.client(1)
    sid = client.sid()
    await harness.control(0, "enter_room", sid=sid, room="vip")
    await _wait_rooms(harness, 1, sid, lambda rooms: "vip" in rooms)
    await harness.control(2, "emit", event="vip-news", data="for vip", room="vip")
    assert await client.wait_for("vip-news", 1) == ["for vip"]
    await harness.control(2, "leave_room", sid=sid, room="vip")
    await _wait_rooms(harness, 1, sid, lambda rooms: "vip" not in rooms)
    await harness.control(0, "emit", event="vip-news", data="again", room="vip")
    await harness.barrier([client])
    assert client.events("vip-news") == ["for vip"]


async def test_remote_enter_room_then_emit_keeps_order(harness: Harness) -> None:
    """enter_room and the emits to that room share a key, so the join is applied first."""
    client = await harness.client(2)
    await harness.control(0, "enter_room", sid=client.sid(), room="ordered")
    await harness.control(0, "emit", event="after-join", data=1, room="ordered")
    assert await client.wait_for("after-join", 1) == [1]


async def test_remote_close_room(harness: Harness) -> None:
    clients = await harness.clients_on([1, 2])
    for client in clients:
        await client.ask("join", {"room": "closing"})
    await harness.control(0, "close_room", room="closing")
    for node, client in zip((1, 2), clients, strict=True):
        await _wait_rooms(harness, node, client.sid(), lambda rooms: "closing" not in rooms)
    await harness.control(0, "emit", event="late", data=1, room="closing")
    await harness.barrier(clients)
    assert all(c.events("late") == [] for c in clients)


async def test_write_only_manager_in_another_process_reaches_every_node(
    harness: Harness, kafka_url: str, channel: str
) -> None:
    clients = await harness.clients_on([0, 1, 2])
    for client in clients:
        await client.ask("join", {"room": "from-worker"})
    script = textwrap.dedent(
        f"""
        import asyncio
        from socketio_kafka.adapter import AsyncKafkaManager

        async def main():
            async with AsyncKafkaManager({kafka_url!r}, channel={channel!r}, write_only=True) as m:
                await m.emit("job", {{"done": True}}, room="from-worker")
                await m.emit("job-bin", b"\\x00\\x01", room="from-worker")

        asyncio.run(main())
        """
    )
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
    for client in clients:
        assert await client.wait_for("job", 1) == [{"done": True}]
        assert await client.wait_for("job-bin", 1) == [b"\x00\x01"]


async def test_per_room_order_with_two_concurrent_senders(harness: Harness) -> None:
    count = 1000
    watchers = await harness.clients_on([2, 2])
    for watcher in watchers:
        await watcher.ask("join", {"room": "seq"})
    await asyncio.gather(
        harness.control(0, "burst", room="seq", event="n", tag="a", count=count),
        harness.control(1, "burst", room="seq", event="n", tag="b", count=count),
    )
    for watcher in watchers:
        events = await watcher.wait_for("n", 2 * count, timeout=60)
        for tag in ("a", "b"):
            assert [e["seq"] for e in events if e["tag"] == tag] == list(range(count))
    await harness.barrier(watchers)
    assert all(len(w.events("n")) == 2 * count for w in watchers)


async def test_gateway_protocol_end_to_end(harness: Harness) -> None:
    sender, *receivers = await harness.clients_on([0, 1, 2, 1])
    for client in (sender, *receivers):
        assert await client.ask("join", {"room": "chat"}) == {"ok": True}
    message = {"text": "hello", "n": [1, 2.5, None, True]}
    reply = await sender.ask("publish", {"room": "chat", "event": "msg", "data": message})
    assert reply["ok"] is True
    for receiver in receivers:
        assert await receiver.wait_for("msg", 1) == [message]
    await harness.barrier([sender, *receivers])
    assert sender.events("msg") == []
    assert all(r.events("msg") == [message] for r in receivers)
    assert await receivers[0].ask("leave", {"room": "chat"}) == {"ok": True}
    await sender.ask("publish", {"room": "chat", "event": "msg", "data": "second"})
    await receivers[1].wait_for("msg", 2)
    await harness.barrier(receivers)
    assert receivers[0].events("msg") == [message]


_MALFORMED = [
    ("join", "not-an-object", "expected one JSON object"),
    ("join", {}, "'room' must be a non-empty string"),
    ("join", {"room": 5}, "'room' must be a non-empty string"),
    ("join", {"room": "x" * 1000}, "longer than"),
    ("leave", [], "expected one JSON object"),
    ("publish", {"room": "r", "event": "e"}, "'data' is required"),
    ("publish", {"room": "r", "data": 1}, "'event' must be a non-empty string"),
    ("publish", {"room": "r", "event": "disconnect", "data": 1}, "reserved"),
    ("publish", None, "expected one JSON object"),
]


async def test_malformed_requests_get_error_acks_and_the_node_serves_on(harness: Harness) -> None:
    client, peer = await harness.clients_on([0, 1])
    for event, payload, error in _MALFORMED:
        reply = await client.ask(event, payload)
        assert reply["ok"] is False, (event, payload)
        assert error in reply["error"], (event, payload, reply)
    await peer.ask("join", {"room": "still"})
    assert (await client.ask("publish", {"room": "still", "event": "ok", "data": 1}))["ok"] is True
    assert await peer.wait_for("ok", 1) == [1]


async def test_poison_records_are_skipped_counted_and_delivery_goes_on(
    harness: Harness, kafka_bootstrap: str, channel: str
) -> None:
    client = await harness.client(1)
    await client.ask("join", {"room": "after-poison"})
    poison = [
        b"\xff\xfenot json",
        b'{"v": 99, "method": "emit"}',
        b'{"v": 1, "method": "emit"}',
        b"[1, 2]",
        b'{"v": 1, "method": "emit", "event": "x", "data": "not a list", "room": "r"}',
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for value in poison:
            await producer.send_and_wait(f"{channel}.events", value, key=b"/#after-poison")
    finally:
        await producer.stop()
    harness.external_records += len(poison)
    await harness.settle()
    assert [s["records_skipped"] for s in await harness.stats()] == [len(poison)] * 3
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{harness.gateways[2].url}/metrics")).text
    assert f"socketio_kafka_records_skipped_total {float(len(poison))}" in metrics
    await harness.control(0, "emit", event="alive", data=True, room="after-poison")
    assert await client.wait_for("alive", 1) == [True]


async def _wait_rooms(harness: Harness, node: int, sid: str, check: object) -> None:
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        rooms = (await harness.control(node, "rooms", sid=sid))["rooms"]
        if check(rooms):  # type: ignore[operator]
            return
        assert asyncio.get_running_loop().time() < deadline, f"rooms of {sid}: {rooms}"
        await asyncio.sleep(0.05)
