"""Connection state recovery over Kafka offsets: three real gateway nodes, real clients."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from socketio_kafka.adapter.sessions import decode_session

from .support.cluster import CROWD, GatewayProcess, gateway_cluster
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


async def _assert_all_once_in_order(client: RecoveringRecorder, room_count: int = 1000) -> None:
    for event, count in (("room-ev", room_count), ("sid-ev", 100), ("all-ev", 100)):
        events = await client.wait_count(event, count, timeout=60)
        assert [e["seq"] for e in events] == list(range(count)), event


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


async def _barrier(harness: Harness, client: RecoveringRecorder, node: int = 2) -> None:
    """Everything emitted so far has reached ``client`` (see Harness.barrier)."""
    await harness.settle()
    token = uuid.uuid4().hex
    await harness.control(node, "emit", event="barrier", data=token, room=client.sid)
    await wait_until(lambda: token in client.events("barrier"), 15, "barrier")


async def test_transport_loss_then_same_node_recovers_everything(harness: Harness) -> None:
    client = await _client_in_room(harness.gateways[0].url)
    try:
        sid = client.sid
        await client.drop_transport()
        started = time.monotonic()
        await harness.wait_gone(0, sid)
        await harness.gap_traffic(1, sid, ROOM)
        await asyncio.sleep(max(0.0, GAP_S - (time.monotonic() - started)))
        await _recover_and_check_live(harness, client, harness.gateways[0].url, sid)
    finally:
        await client.close()


async def test_node_killed_during_the_gap_client_recovers_on_another(harness: Harness) -> None:
    client = await _client_in_room(harness.gateways[0].url)
    try:
        sid = client.sid
        await client.drop_transport()
        await harness.wait_gone(0, sid)
        harness.gateways[0].stop(signal.SIGKILL)
        await harness.gap_traffic(2, sid, ROOM)
        await _recover_and_check_live(harness, client, harness.gateways[1].url, sid)
    finally:
        await client.close()


async def test_pid_without_offset_recovers(harness: Harness) -> None:
    client = await _client_in_room(harness.gateways[1].url)
    try:
        sid = client.sid
        assert client.client.offsets == {}
        await client.drop_transport()
        await harness.wait_gone(1, sid)
        await harness.gap_traffic(0, sid, ROOM)
        await _recover_and_check_live(harness, client, harness.gateways[2].url, sid)
    finally:
        await client.close()


async def test_all_nodes_restarted_during_the_gap(harness: Harness) -> None:
    client = await _client_in_room(harness.gateways[0].url)
    try:
        sid = client.sid
        await client.drop_transport()
        await harness.wait_gone(0, sid)
        await harness.gap_traffic(1, sid, ROOM)
        await harness.restart_all()
        await _recover_and_check_live(harness, client, harness.gateways[0].url, sid)
    finally:
        await client.close()


async def test_a_client_back_after_the_window_gets_a_clean_new_session(
    kafka_url: str, channel: str
) -> None:
    window = 2.0
    async with (
        gateway_cluster(kafka_url, channel, 2, ["--recovery-window", str(window)]) as gateways,
        Harness(gateways) as harness,
    ):
        client = await _client_in_room(gateways[0].url)
        try:
            sid = client.sid
            await client.drop_transport()
            await harness.wait_gone(0, sid)
            await harness.control(1, "burst", event="room-ev", tag="r", count=10, room=ROOM)
            await harness.control(1, "emit", event="sid-ev", data={"seq": 0}, room=sid)
            await asyncio.sleep(window + 1)  # let the window pass: the point of this test
            await client.client.connect(gateways[1].url, transports=["websocket"])
            assert client.client.recovered["/"] is False
            assert client.sid != sid
            stats = await harness.control(1, "stats")
            assert client.sid in stats["connects"]  # the app's connect handler ran
            await _barrier(harness, client, node=1)
            assert client.events("room-ev") == []
            assert client.events("sid-ev") == []
        finally:
            await client.close()


async def test_a_deliberate_disconnect_ends_the_session(harness: Harness) -> None:
    client = await _client_in_room(harness.gateways[0].url)
    sid, pid = client.sid, client.client.pids["/"]
    await client.client.disconnect()
    probe = socketio.AsyncClient(reconnection=False)
    try:
        await probe.connect(harness.gateways[1].url, transports=["websocket"], auth={"pid": pid})
        assert probe.get_sid("/") != sid
    finally:
        await probe.disconnect()
        await probe.shutdown()
        await client.close()


GARBAGE: list[Any] = [
    {"pid": 123, "offset": "x"},
    {"pid": "x" * 100_000},
    {"pid": "0" * 32, "offset": None},
    {"pid": None, "offset": ["a"]},
    {"pid": "nope", "offset": {"a": 1}},
    "just a string",
    [1, 2, 3],
]


async def test_garbage_and_forged_claims_get_fresh_sessions(harness: Harness) -> None:
    victim = await _client_in_room(harness.gateways[0].url)
    try:
        sid, pid = victim.sid, victim.client.pids["/"]
        await harness.control(1, "emit", event="seen", data=1, room=sid)
        await victim.wait_count("seen", 1)
        real = victim.client.offsets["/"]
        epoch, _, body = real.partition("~")
        forged = [
            {"pid": pid, "offset": "zz" + real},
            {"pid": pid, "offset": f"{epoch}~{body}.0"},
            {"pid": pid, "offset": f"{epoch}~" + ".".join(["zzzzzz"] * len(body.split(".")))},
            {"pid": pid, "offset": f"{epoch}~" + ".".join(["-1"] * len(body.split(".")))},
            {"pid": pid, "offset": "~" * 5000},
        ]
        await victim.drop_transport()
        await harness.wait_gone(0, sid)
        for auth in [*GARBAGE, *forged]:
            probe = socketio.AsyncClient(reconnection=False)
            try:
                await probe.connect(harness.gateways[2].url, transports=["websocket"], auth=auth)
                assert probe.get_sid("/") not in (None, sid), auth
            finally:
                await probe.disconnect()
                await probe.shutdown()
        # None of that hurt the nodes, nor the real session: it still recovers.
        await harness.control(1, "emit", event="seen", data=2, room=sid)
        await victim.client.connect(harness.gateways[1].url, transports=["websocket"])
        assert victim.client.recovered["/"] is True
        assert await victim.wait_count("seen", 2) == [1, 2]
    finally:
        await victim.close()


async def test_a_session_is_restored_once(harness: Harness) -> None:
    client = await _client_in_room(harness.gateways[0].url)
    try:
        sid, pid = client.sid, client.client.pids["/"]
        await client.drop_transport()
        await harness.wait_gone(0, sid)
        await harness.control(1, "burst", event="room-ev", tag="r", count=20, room=ROOM)
        claim = {"pid": pid, "offset": client.client.offsets.get("/")}
        await client.client.connect(harness.gateways[1].url, transports=["websocket"])
        assert client.client.recovered["/"] is True
        await client.wait_count("room-ev", 20)
        # The same claim again, on another node, while the session is live: a fresh one.
        thief = RecoveringRecorder()
        thief.client.pids["/"] = pid
        if claim["offset"] is not None:
            thief.client.offsets["/"] = claim["offset"]
        try:
            await thief.connect(harness.gateways[2].url)
            assert thief.client.recovered["/"] is False
            assert thief.sid != sid
            await _barrier(harness, thief)
            assert thief.events("room-ev") == []
        finally:
            await thief.close()
        await harness.control(2, "emit", event="room-ev", data={"seq": 20}, room=ROOM)
        events = await client.wait_count("room-ev", 21)
        assert [e["seq"] for e in events] == list(range(21))
    finally:
        await client.close()


async def test_replay_of_ten_thousand_missed_events(harness: Harness) -> None:
    count = 10_000
    client = await _client_in_room(harness.gateways[0].url)
    try:
        sid = client.sid
        await client.drop_transport()
        await harness.wait_gone(0, sid)
        await asyncio.gather(
            *(
                harness.control(
                    n, "burst", event="room-ev", tag=f"n{n}", count=count // 2, room=ROOM
                )
                for n in (1, 2)
            )
        )
        started = time.perf_counter()
        await client.client.connect(harness.gateways[0].url, transports=["websocket"])
        events = await client.wait_count("room-ev", count, timeout=120)
        elapsed = time.perf_counter() - started
        assert client.client.recovered["/"] is True
        for tag in ("n1", "n2"):
            assert [e["seq"] for e in events if e["tag"] == tag] == list(range(count // 2))
        print(f"\nreplay of {count} missed events: {elapsed:.3f}s from reconnect to the last")
    finally:
        await client.close()


async def test_a_drop_during_the_replay_is_recovered_again_without_gaps_or_repeats(
    harness: Harness,
) -> None:
    """The client's offset moves with each replayed event: lost again mid-replay, it claims
    from there (on another node) and gets the rest, each event once, in order."""
    count = 5_000
    client = await _client_in_room(harness.gateways[0].url)
    try:
        sid = client.sid
        await client.drop_transport()
        await harness.wait_gone(0, sid)
        await harness.control(1, "burst", event="room-ev", tag="b", count=count, room=ROOM)
        dropping: list[asyncio.Task[None]] = []

        async def record_then_drop(event: str, *args: Any) -> None:
            await client._record(event, *args)
            if len(client.events("room-ev")) == 100:  # mid-replay: drop the connection now
                dropping.append(asyncio.ensure_future(client.client.eio.ws.close()))

        client.client.on("*", record_then_drop)
        # The CONNECT reply comes before the replay, which the drop then cuts short.
        await client.client.connect(harness.gateways[0].url, transports=["websocket"])
        await wait_until(lambda: dropping and not client.client.connected, 60, "the second drop")
        got_first = len(client.events("room-ev"))
        await harness.wait_gone(0, sid)
        await client.client.connect(harness.gateways[2].url, transports=["websocket"])
        assert client.client.recovered["/"] is True
        assert client.sid == sid
        await client.wait_count("room-ev", count, timeout=120)
        await _barrier(harness, client, node=1)
        assert [e["seq"] for e in client.events("room-ev")] == list(range(count))
        print(f"\n{got_first} of {count} replayed events before the second drop")
    finally:
        await client.close()


async def test_plain_python_client_with_one_argument_handlers_opts_out(
    harness: Harness,
) -> None:
    plain = socketio.AsyncClient(reconnection=False)
    got: list[Any] = []

    async def on_news(item: Any) -> None:  # one argument, as an app would write it
        got.append(item)

    plain.on("news", on_news)
    await plain.connect(harness.gateways[1].url, transports=["websocket"], auth={"recovery": False})
    try:
        await plain.call("join", {"room": ROOM})
        await harness.control(0, "emit", event="news", data={"title": "hi"}, room=ROOM)
        await harness.control(0, "emit", event="news", data=[1, 2], room=ROOM)
        await wait_until(lambda: len(got) == 2, 15, "two news")
        assert got == [{"title": "hi"}, [1, 2]]
    finally:
        await plain.disconnect()
        await plain.shutdown()


async def _drop_then_kafka_deletes_the_gap(
    harness: Harness, kafka_bootstrap: str, channel: str
) -> tuple[RecoveringRecorder, str]:
    """A client in ROOM that got one event, dropped, missed ten; then Kafka deleted every
    record so far, as retention would in time: the log starts after what it missed."""
    client = await _client_in_room(harness.gateways[0].url)
    sid = client.sid
    await harness.control(1, "emit", event="room-ev", data={"seq": 0}, room=ROOM)
    await client.wait_count("room-ev", 1)
    await client.drop_transport()
    await harness.wait_gone(0, sid)
    await harness.control(1, "burst", event="room-ev", tag="r", count=10, room=ROOM)
    await harness.settle()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        topic = f"{channel}.events"
        partitions = [
            p["partition"] for p in (await admin.describe_topics([topic]))[0]["partitions"]
        ]
        await admin.delete_records(
            {TopicPartition(topic, p): RecordsToDelete(-1) for p in partitions}
        )
    finally:
        await admin.close()
    return client, sid


async def test_missed_events_deleted_by_kafka_mean_a_fresh_session(
    harness: Harness, kafka_bootstrap: str, channel: str
) -> None:
    """Where no node holds them either: restarted, each node's history starts afresh."""
    client, sid = await _drop_then_kafka_deletes_the_gap(harness, kafka_bootstrap, channel)
    try:
        await harness.restart_all()
        await client.client.connect(harness.gateways[1].url, transports=["websocket"])
        assert client.client.recovered["/"] is False
        assert client.sid != sid
        await _barrier(harness, client, node=1)
        assert len(client.events("room-ev")) == 1  # nothing partial pretends to be whole
    finally:
        await client.close()


async def test_missed_events_kafka_deleted_are_replayed_by_a_node_that_still_holds_them(
    harness: Harness, kafka_bootstrap: str, channel: str
) -> None:
    """The node's history (adapter/history.py) holds the whole gap: the recovery is whole."""
    client, sid = await _drop_then_kafka_deletes_the_gap(harness, kafka_bootstrap, channel)
    try:
        await client.client.connect(harness.gateways[1].url, transports=["websocket"])
        assert client.client.recovered["/"] is True
        assert client.sid == sid
        await _barrier(harness, client, node=1)
        assert len(client.events("room-ev")) == 11  # the one it had, the ten it missed
    finally:
        await client.close()


async def test_events_that_ask_for_an_ack_are_not_replayed(harness: Harness) -> None:
    client = await _client_in_room(harness.gateways[0].url)
    try:
        sid = client.sid
        await client.drop_transport()
        await harness.wait_gone(0, sid)
        await harness.control(1, "emit_with_ack", event="needs-ack", data=1, sid=sid)
        await harness.control(1, "emit", event="plain", data=2, room=sid)
        await client.client.connect(harness.gateways[2].url, transports=["websocket"])
        assert client.client.recovered["/"] is True
        assert await client.wait_count("plain", 1) == [2]
        await _barrier(harness, client)
        assert client.events("needs-ack") == []
    finally:
        await client.close()


async def test_node_killed_under_a_connected_client_it_recovers_on_another(
    harness: Harness, kafka_bootstrap: str, channel: str
) -> None:
    """The node dies before it can record anything: its heartbeat going quiet says enough."""
    client = await _client_in_room(harness.gateways[0].url)
    try:
        sid = client.sid
        await _session_saved_with_room(kafka_bootstrap, channel, sid)
        harness.gateways[0].stop(signal.SIGKILL)
        await wait_until(lambda: not client.client.connected, 15, "the client to notice")
        await harness.gap_traffic(2, sid, ROOM)
        await _recover_and_check_live(harness, client, harness.gateways[1].url, sid)
    finally:
        await client.close()


async def test_a_burst_of_joins_is_saved_for_every_socket(
    kafka_url: str, kafka_bootstrap: str, channel: str
) -> None:
    """Joins arriving together are written together; none is left out of the batch."""
    async with gateway_cluster(kafka_url, channel, 1, CROWD) as (node,):
        clients = await asyncio.gather(*(RecoveringRecorder().connect(node.url) for _ in range(40)))
        try:
            replies = await asyncio.gather(
                *(c.client.call("join", {"room": ROOM}) for c in clients)
            )
            assert replies == [{"ok": True}] * len(clients)
            await _session_saved_with_room(kafka_bootstrap, channel, *(c.sid for c in clients))
        finally:
            await asyncio.gather(*(c.close() for c in clients))


async def _session_saved_with_room(bootstrap: str, channel: str, *sids: str) -> None:
    """Wait until the sessions topic holds each of ``sids``' sessions with its room in it."""
    waiting = set(sids)
    consumer = AIOKafkaConsumer(
        f"{channel}.sessions", bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(15):
            async for record in consumer:
                if record.value and not record.key.startswith(b"__"):
                    session = decode_session(record.value)
                    if ROOM in session.rooms:
                        waiting.discard(session.sid)
                        if not waiting:
                            return
    finally:
        await consumer.stop()
