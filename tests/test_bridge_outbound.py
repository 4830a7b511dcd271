"""Outbound routes end to end, on real Kafka: client publishes through gateway nodes,
``socketio-kafka bridge FILE`` in a process of its own (SIGKILLed mid-stream), and a plain
read_committed consumer of the outbound topic, as a backend service reads it."""

from __future__ import annotations

import asyncio
import collections
import json
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from socketio_kafka.adapter import codec, routing
from socketio_kafka.gateway.bridge import (
    BadRecord,
    BridgeConfigError,
    OutboundRoute,
    parse,
    publish_record,
)

from .support.bridges import BridgeProcess
from .support.clients import Recorder
from .support.cluster import FAST_PUBLISHER, free_port, gateway_cluster
from .support.recovering import RecoveringRecorder
from .support.waiting import wait_until
from .test_bridge import _create_topics
from .test_exactly_once import _wait_disconnected

ROOM, OTHER = "chat:1", "lobby"
_ROUTE = '[[outbound]]\nname = "chat"\ntopic = "chat.out"\n'


def test_outbound_tables_are_read_and_mistakes_named() -> None:
    config = parse(
        '[kafka]\nchannel = "c"\n'
        + _ROUTE
        + 'rooms = ["chat:*", "support"]\nevents = "said"\nwindow = 300\n'
    )
    assert config.inbound == ()
    assert config.outbound == (
        OutboundRoute(
            name="chat",
            topic="chat.out",
            rooms=("chat:*", "support"),
            events=("said",),
            group="socketio-kafka-outbound.chat",
            window_s=300.0,
        ),
    )
    cases = {
        _ROUTE: "outbound[0]: rooms, events or both are needed",
        _ROUTE.replace('name = "chat"\n', "") + 'rooms = ["*"]\n': "outbound[0].name: missing",
        _ROUTE.replace("chat.out", "chat out") + 'rooms = ["*"]\n': "outbound[0].topic",
        _ROUTE + "rooms = [3]\n": "outbound[0].rooms: a pattern or a list",
        _ROUTE + 'events = [""]\n': "outbound[0].events",
        _ROUTE + 'rooms = ["*"]\nnamespace = "x"\n': "outbound[0].namespace: must start",
        _ROUTE + 'rooms = ["*"]\nstart = "now"\n': "outbound[0].start",
        _ROUTE + 'rooms = ["*"]\nwindow = 0\n': "outbound[0].window: seconds",
        _ROUTE + 'rooms = ["*"]\nwindow = inf\n': "outbound[0].window: seconds",
        _ROUTE + 'rooms = ["*"]\nwindow = 1e10\n': "outbound[0].window: seconds",
        _ROUTE + 'rooms = ["*"]\nroom = "x"\n': "outbound[0].room: unknown key",
        _ROUTE + 'rooms = ["*"]\n' + _ROUTE + 'rooms = ["*"]\n': "names must differ",
        "outbound = 3\n": "outbound: write [[outbound]] tables",
    }
    for text, message in cases.items():
        with pytest.raises(BridgeConfigError, match=message.replace("[", r"\[")):
            parse(text)
    # One name space with the inbound bridges: names label their metrics.
    inbound = '[[inbound]]\nname = "chat"\ntopics = "t"\nroom = "r"\nevent = "e"\n'
    with pytest.raises(BridgeConfigError, match="names must differ"):
        parse(inbound + _ROUTE + 'rooms = ["*"]\n')


def _event(
    room: str | list[str] | None, event: str, data: Any, cid: str | None, **extra: Any
) -> ConsumerRecord[bytes, bytes]:
    """An events-topic record as the manager writes it (a gateway publish with ``cid``)."""
    message = codec.emit_message(
        event, data, namespace="/", room=room, skip_sid="s1", callback=None, host_id="h"
    )
    value = codec.encode({**message, **extra})
    headers = routing.headers_for(message, cid, "0123456789abcdef" if cid else None, "bob")
    return ConsumerRecord(
        "c.events", 0, 7, 1_700_000_000_000, 0, codec.record_key(message), value, None,
        0, len(value), tuple(headers),
    )  # fmt: skip


def test_only_the_routes_publishes_map_and_into_the_documented_json() -> None:
    route = parse('[[outbound]]\nname = "o"\ntopic = "out"\nrooms = "chat:*"\n').outbound[0]
    out = publish_record(route, _event("chat:1", "said", {"n": 1}, "p-1"))
    assert out is not None
    topic, key, value, headers = out
    assert (topic, key) == ("out", b"chat:1")
    assert headers == [("sio.cid", b"p-1"), ("sio.pub", b"0123456789abcdef")]
    assert value is not None
    assert json.loads(value) == {
        **{"v": 1, "id": "p-1", "namespace": "/", "room": "chat:1", "event": "said"},
        **{"data": {"n": 1}, "sid": "s1", "subject": "bob", "publisher": "0123456789abcdef"},
        "timestamp": 1_700_000_000_000,
    }
    # No publish: a server's emit (no correlation id), another room, several rooms.
    for record in (
        _event("chat:1", "said", 1, None),
        _event("lobby", "said", 1, "p-2"),
        _event(["chat:1", "chat:2"], "said", 1, "p-3"),
    ):
        assert publish_record(route, record) is None
    for record, kind in (
        (_event("chat:1", "said", b"\x00", "p-4"), "binary"),
        (_event("chat:1", "said", (1, 2), "p-5"), "arguments"),
        (_event("chat:1", "said", 1, "p-6", v=2), "not_json"),
    ):
        with pytest.raises(BadRecord) as refused:
            publish_record(route, record)
        assert refused.value.kind == kind


class OutboundReader:
    """A plain read_committed consumer of the outbound topic, no group: what a Java or Go
    service coded against docs/wire-format.md sees."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        self.records: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for record in self.consumer:
            self.records.append(record)

    def ids(self) -> list[str]:
        return [json.loads(r.value)["id"] for r in self.records]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.consumer.stop()


SECRET = "outbound-test-secret-" + "z" * 43  # 64 bytes


@pytest.fixture
async def bridged(
    request: pytest.FixtureRequest,
    kafka_url: str,
    kafka_bootstrap: str,
    channel: str,
    tmp_path: Path,
) -> AsyncIterator[tuple[list[Any], BridgeProcess, OutboundReader]]:
    """Gateway nodes (checking tokens when parametrized ``secure``), the bridge
    process with one outbound route, and a reader of its topic."""
    flags: list[str] = [*FAST_PUBLISHER]
    nodes = 2
    if getattr(request, "param", "") == "secure":
        (tmp_path / "secret").write_text(SECRET + "\n")
        flags, nodes = [*flags, "--jwt-secret-file", str(tmp_path / "secret")], 1
    topic = f"{channel}.out"
    await _create_topics(kafka_bootstrap, (topic, 3, {}))
    config = tmp_path / "bridges.toml"
    config.write_text(
        f'[kafka]\nchannel = "{channel}"\n\n[[outbound]]\nname = "chat"\n'
        f'topic = "{topic}"\nrooms = ["chat:*"]\nevents = ["said", "end"]\n'
        f'group = "{channel}.outbound"\n'  # a group of its own: static members linger
    )
    reader = OutboundReader(kafka_bootstrap, topic)
    async with gateway_cluster(kafka_url, channel, nodes, flags) as gateways:
        bridge = BridgeProcess(config, kafka_url, metrics_port=free_port())
        bridge.start()
        await reader.start()
        try:
            yield gateways, bridge, reader
        finally:
            bridge.stop()
            await reader.stop()
            print(bridge.log())  # shown when the test fails
            bridge.log_path.unlink(missing_ok=True)


@pytest.mark.kafka
@pytest.mark.timeout(90)
async def test_each_publish_reaches_the_outbound_topic_once_through_drops_and_sigkills(
    bridged: tuple[list[Any], BridgeProcess, OutboundReader], kafka_bootstrap: str, channel: str
) -> None:
    """1,000 publishes with ids, at most 40 in flight; every 100 the transport drops and the
    session recovers on the other node, resending what was not acked; the bridge is
    SIGKILLed twice meanwhile. A copy of two publishes' records written again to the
    events topic (the race only consumption closes), once while the bridge runs and once
    while it is down, goes out once too; publishes to rooms or events no route names
    and a record that is no publish's do not go out. Room members on both nodes receive
    each publish once, in order, as the outbound topic's reader does."""
    nodes, bridge, reader = bridged
    total, every = 1000, 100
    prefix = f"{uuid.uuid4().hex[:6]}-"
    began = int(time.time() * 1000)
    members = [await Recorder(node.url).connect() for node in nodes]
    for member in members:
        assert await member.ask("join", {"room": ROOM}) == {"ok": True}
    publisher = await RecoveringRecorder().connect(nodes[0].url)
    sids = {publisher.sid}
    window = asyncio.Semaphore(40)

    async def publish(room: str, event: str, data: Any, pub_id: str) -> Any:
        async with window:
            return await publisher.client.publish(room, event, data, id=pub_id)

    replies: list[asyncio.Task[Any]] = []
    written = 0  # out when the bridge was last killed
    for seq in range(total):
        replies.append(asyncio.create_task(publish(ROOM, "said", seq, f"{prefix}{seq}")))
        if seq % 10 == 0:  # neither goes out: another room, another event
            replies.append(asyncio.create_task(publish(OTHER, "said", seq, f"{prefix}o{seq}")))
            replies.append(asyncio.create_task(publish(ROOM, "typing", seq, f"{prefix}t{seq}")))
        if seq % every != every - 1 or seq == total - 1:
            continue
        await asyncio.sleep(0)  # some go out, not all are acked
        cut = seq // every
        if cut in (3, 7):  # mid-stream: once it (restarted) wrote some out
            more = partial(lambda before: len(reader.records) > before + 10, written)
            await wait_until(more, 30, "the bridge writing")
            written = len(reader.records)
            bridge.kill()
            bridge.start()
        await publisher.drop_transport()
        await _wait_disconnected(publisher)
        await publisher.client.connect(nodes[(cut + 1) % 2].url, transports=["websocket"])
        assert publisher.client.recovered["/"] is True
        sids.add(publisher.sid)
    acks = await asyncio.wait_for(asyncio.gather(*replies), 60)
    assert all(ack["ok"] for ack in acks), [a for a in acks if not a["ok"]]

    events = await _records(kafka_bootstrap, f"{channel}.events")
    copies = [events[f"{prefix}3"], events[f"{prefix}4"]]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await _resend(producer, copies[0], channel)  # the bridge running
        # A marker behind it in the room's partition: once out, the copy was read.
        assert (await publisher.client.publish(ROOM, "end", 0, id=f"{prefix}mark"))["ok"]
        await wait_until(lambda: f"{prefix}mark" in reader.ids(), 30, "the marker")
        bridge.kill()
        await _resend(producer, copies[1], channel)  # the bridge down: a restart reads back
        # A record with a correlation id but no events-topic value: skipped, counted.
        junk = [("sio.v", b"1"), ("sio.method", b"emit"), ("sio.ns", b"/")]
        junk += [("sio.room", ROOM.encode()), ("sio.cid", b"junk")]
        await producer.send_and_wait(
            f"{channel}.events", b"{not json", key=f"/#{ROOM}".encode(), headers=junk
        )
        bridge.start()
    finally:
        await producer.stop()
    assert (await publisher.client.publish(ROOM, "end", None, id=f"{prefix}end"))["ok"]
    await wait_until(lambda: f"{prefix}end" in reader.ids(), 30, "the end marker")

    for member in members:
        await member.wait_for("end", 2, timeout=30)  # the marker, then the end: all read
        assert member.events("said") == list(range(total))
        await member.close()
    said = [r for r in reader.records if json.loads(r.value)["event"] == "said"]
    counts = collections.Counter(json.loads(r.value)["id"] for r in reader.records)
    assert counts == {f"{prefix}{seq}": 1 for seq in [*range(total), "mark", "end"]}
    assert [json.loads(r.value)["data"] for r in said] == list(range(total))  # in order
    for record in said:
        value = json.loads(record.value)
        assert record.key == ROOM.encode()
        assert set(value) == {
            *("v", "id", "namespace", "room", "event", "data"),
            *("sid", "subject", "publisher", "timestamp"),
        }
        assert (value["v"], value["namespace"], value["room"]) == (1, "/", ROOM)
        assert value["sid"] in sids
        assert value["subject"] is None  # a gateway that checks no tokens
        assert len(value["publisher"]) == 16
        assert began <= value["timestamp"] <= time.time() * 1000
        assert dict(record.headers) == {
            "sio.cid": value["id"].encode(),
            "sio.pub": value["publisher"].encode(),
        }
    # Counted since its last start: the junk, and the copy written while it was down.
    skipped = await _scrape(bridge, "socketio_kafka_bridge_records_skipped_total")
    assert skipped == {("chat", "not_json"): 1.0}
    assert await _scrape(bridge, "socketio_kafka_bridge_repeats_total") == {("chat",): 1.0}
    await publisher.close()


@pytest.mark.kafka
@pytest.mark.timeout(60)
@pytest.mark.parametrize("bridged", ["secure"], indirect=True)
async def test_the_secure_gateways_subject_goes_out_and_so_does_a_publish_without_id(
    bridged: tuple[list[Any], BridgeProcess, OutboundReader],
) -> None:
    [node], _, reader = bridged
    claims = {"sub": "alice", "publish": ["chat:*"], "exp": time.time() + 300}
    alice = Recorder(node.url)
    await alice.client.connect(
        node.url,
        transports=["websocket"],
        auth={"recovery": False, "token": jwt.encode(claims, SECRET, "HS256")},
    )
    own = await alice.ask("publish", {"room": ROOM, "event": "said", "data": 1, "id": "a-1"})
    made = await alice.ask("publish", {"room": ROOM, "event": "said", "data": {"n": 2}})
    assert own["ok"]
    assert made["ok"]
    await wait_until(lambda: len(reader.records) == 2, 30, "both publishes out")
    values = [json.loads(r.value) for r in reader.records]
    assert [v["subject"] for v in values] == ["alice", "alice"]
    assert [(v["id"], v["data"], v["sid"]) for v in values] == [
        ("a-1", 1, alice.sid()),
        (made["id"], {"n": 2}, alice.sid()),
    ]
    # Without a client-chosen id, no publisher: nothing to tell a repeat by.
    assert values[1]["publisher"] is None
    assert [dict(r.headers) for r in reader.records][1] == {"sio.cid": made["id"].encode()}
    await alice.close()


@pytest.mark.kafka
@pytest.mark.timeout(90)
async def test_a_route_down_longer_than_its_window_still_knows_a_repeat_after_it(
    kafka_bootstrap: str, kafka_url: str, channel: str, tmp_path: Path
) -> None:
    """A route resumes by reading a window of publish ids before where it stopped. The
    window was measured back from the clock: a route down longer than it read nothing
    back, and a resend written meanwhile (an hour's old records here, one second apart)
    went out a second time."""
    events, topic = f"{channel}.events", f"{channel}.out"
    await _create_topics(kafka_bootstrap, (events, 1, {}), (topic, 1, {}))
    config = tmp_path / "bridges.toml"
    config.write_text(
        f'[kafka]\nchannel = "{channel}"\n\n[[outbound]]\nname = "chat"\n'
        f'topic = "{topic}"\nrooms = ["chat:*"]\nwindow = 60\ngroup = "{channel}.out"\n'
    )
    hour_ago = int(time.time() * 1000) - 3_600_000
    first, mark = _event(ROOM, "said", 1, "x-1"), _event(ROOM, "said", 2, "x-2")
    reader = OutboundReader(kafka_bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    bridge = BridgeProcess(config, kafka_url, metrics_port=free_port())
    await reader.start()
    await producer.start()
    try:
        await _write(producer, events, first, hour_ago)
        with bridge.running():
            await wait_until(lambda: "x-1" in reader.ids(), 30, "the publish out")
        await _write(producer, events, first, hour_ago + 1000)  # its resend, a second later
        await _write(producer, events, mark, hour_ago + 2000)
        with bridge.running():
            await wait_until(lambda: "x-2" in reader.ids(), 30, "the mark out")
        assert reader.ids() == ["x-1", "x-2"]
    finally:
        await producer.stop()
        await reader.stop()


async def _write(producer: AIOKafkaProducer, topic: str, record: Any, at: int) -> None:
    """``record`` (key, value, headers) to ``topic``, timestamped ``at`` (ms)."""
    headers = list(record.headers)
    await producer.send_and_wait(topic, record.value, record.key, headers=headers, timestamp_ms=at)


async def _records(bootstrap: str, topic: str) -> dict[str, Any]:
    """The topic's records to its end now, by correlation id (the first of each)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found: dict[str, Any] = {}
    try:
        partitions = consumer.partitions_for_topic(topic)
        assert partitions
        end = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        read = dict.fromkeys(end, 0)
        async with asyncio.timeout(30):
            while any(read[tp] < end[tp] for tp in end):
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    for record in records:
                        read[tp] = record.offset + 1
                        cid = dict(record.headers).get("sio.cid")
                        if cid is not None:
                            found.setdefault(cid.decode(), record)
    finally:
        await consumer.stop()
    return found


async def _resend(producer: AIOKafkaProducer, record: Any, channel: str) -> None:
    """The record again, as it was: key, value, headers (``sio.pub`` last)."""
    await producer.send_and_wait(
        f"{channel}.events", record.value, key=record.key, headers=list(record.headers)
    )


async def _scrape(bridge: BridgeProcess, name: str) -> dict[tuple[str, ...], float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{bridge.metrics_port}/metrics")).text
    return {
        tuple(sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }
