"""The worst records we know of, on both topics of a running 3-node cluster: every node
skips each one, counts it, and goes on delivering (issue 8: one record on either topic
used to stop delivery on every node while ``/readyz`` said 200)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import aiokafka.codec
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from socketio_kafka.gateway.app import create_app
from socketio_kafka.gateway.settings import Settings

from .support.clients import Recorder
from .support.cluster import gateway_cluster
from .support.harness import Harness
from .support.server import run_server
from .support.unparsable import write_unparsable
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

_DEEP = 5000


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _emit(**fields: object) -> bytes:
    record = {"v": 1, "method": "emit", "event": "poison", "data": [1], "namespace": "/"}
    record.update(fields)
    return json.dumps(record).encode()


#: (key, value) on ``<channel>.events``; every one is refused by the codec.
EVENTS: list[tuple[bytes | None, bytes | None]] = [
    (b"/#r", None),
    (b"/#r", b""),
    (None, b"\xff\xfe\x00not utf-8"),
    (b"\xff\xfe", b"not json"),
    (b"/#r", b"[1, 2]"),
    (b"/#r", b'"a string"'),
    (b"/#r", b"1e400"),
    (b"/#r", b"9" * 5000),
    (b"/#r", _nested(_DEEP).encode()),
    (b"/#r", _nested(100_000).encode()),
    (b"/#r", b'{"v": 1, "method": "emit", "event": "x", "data": ' + _nested(_DEEP).encode() + b"}"),
    (b"/#r", _emit(data=json.loads("[" * 900 + "1" + "]" * 900))),
    (b"/#r", _emit(binary=True, data=[{"_placeholder": True, "num": 0}, "not base64!"])),
    (b"/#r", _emit(binary=True, data=[{"_placeholder": True, "num": 7}, "AA=="])),
    (b"/#r", _emit(room=[1, 2])),
    (b"/#r", _emit(callback=["sid", "/", "not an int"])),
    (b"/#r", _emit(namespace=5)),
    (b"/#r", b'{"v": 1, "method": "nonsense"}'),
    (b"/#r", b'{"v": 1, "method": "disconnect", "sid": ["a"]}'),
    (b"/#r", b'{"v": 1, "method": "callback", "sid": "s", "id": true, "args": [], "host_id": "h"}'),
]

_GOOD = json.dumps(
    {"v": 1, "method": "emit", "event": "poison", "data": [1], "namespace": "/", "room": "r"}
).encode()
_ROUTE = [("sio.v", b"1"), ("sio.method", b"emit"), ("sio.ns", b"/")]
_CLOSE = json.dumps(
    {"v": 1, "method": "close_room", "room": "r", "namespace": "/", "host_id": "elsewhere"}
).encode()
_CLOSE_ROUTE = [
    ("sio.v", b"1"),
    ("sio.method", b"close_room"),
    ("sio.ns", b"/"),
    ("sio.room", b"r"),
    ("sio.host", b"elsewhere"),
]

#: (key, value, headers) on ``<channel>.events``: a value every node would deliver, under
#: routing headers that are refused (a record refused by its headers is never decoded).
HEADED: list[tuple[bytes, bytes, list[tuple[str, bytes | None]]]] = [
    (b"/#r", _GOOD, [("sio.v", b"1")]),
    (b"/#r", _GOOD, [*_ROUTE, ("sio.room", b"\xff\xfe")]),
    (b"/#r", _GOOD, [*_ROUTE, ("sio.room", None)]),
    (b"/#r", _GOOD, [*_ROUTE, ("sio.ns", b"/")]),
    (b"/#r", _GOOD, [("sio.v", b"1"), ("sio.method", b"nonsense"), ("sio.ns", b"/")]),
    (b"/#r", _GOOD, [("sio.v", b"1"), ("sio.method", b"disconnect"), ("sio.ns", b"/")]),
    (b"/#r", _GOOD, [*_ROUTE, ("sio.ack", b"yes")]),
    # Applied, these would take every receiver out of the room before the good events.
    (b"/#r", _CLOSE, [*_CLOSE_ROUTE, ("sio.after", b"0:x")]),
    (b"/#r", _CLOSE, [*_CLOSE_ROUTE, ("sio.after", None)]),
]

#: (key, value) on ``<channel>.sessions``.
SESSIONS: list[tuple[bytes | None, bytes | None]] = [
    (b"__node__:\xff\xfe", b"{}"),
    (b"\xff\xfe", b"{}"),
    (b"\xff\xfe", None),
    (b"", b"{}"),  # (a compacted topic refuses a record without a key)
    (b"__epoch__", b"not json"),
    (b"__epoch__", b'{"epoch": 5}'),
    (b"pid-1", b"not json"),
    (b"pid-2", _nested(_DEEP).encode()),
    (b"pid-3", json.dumps({"v": 1, "pid": "pid-3", "sid": "s", "namespace": "/"}).encode()),
    *(
        (
            f"pid-{field}".encode(),
            json.dumps(
                {
                    "v": 1,
                    "pid": f"pid-{field}",
                    "sid": "s",
                    "namespace": "/",
                    "rooms": [],
                    "data": None,
                    "start": [0] * 6,
                    "epoch": "e",
                    "owner": "o",
                    "disconnected_at": None,
                    field: bad,
                }
            ).encode(),
        )
        for field, bad in [
            ("rooms", "abc"),
            ("rooms", 5),
            ("start", "x"),
            ("start", None),
            ("start", [True]),
            ("disconnected_at", "yesterday"),
            ("disconnected_at", [1]),
        ]
    ),
]


@pytest.fixture
async def harness(kafka_url: str, channel: str) -> AsyncIterator[Harness]:
    async with gateway_cluster(kafka_url, channel, nodes=3) as gateways, Harness(gateways) as h:
        yield h


async def _inject(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes | None, bytes | None]],
    headed: list[tuple[bytes, bytes, list[tuple[str, bytes | None]]]] | None = None,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
        for key, value, headers in headed or ():
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def test_poison_on_both_topics_then_1000_good_events_reach_every_receiver(
    harness: Harness, kafka_bootstrap: str, channel: str
) -> None:
    receivers = await harness.clients_on([0, 1, 2])
    for receiver in receivers:
        assert await receiver.ask("join", {"room": "r"}) == {"ok": True}
    await _inject(kafka_bootstrap, f"{channel}.sessions", SESSIONS)
    await _inject(kafka_bootstrap, f"{channel}.events", EVENTS, HEADED)
    harness.external_records += len(EVENTS) + len(HEADED)
    await harness.settle()

    await harness.control(0, "burst", event="good", tag="g", count=1000, room="r")
    for receiver in receivers:
        got = await receiver.wait_for("good", 1000, timeout=60)
        assert [e["seq"] for e in got] == list(range(1000))
    await harness.barrier(receivers)
    for receiver in receivers:
        assert len(receiver.events("good")) == 1000
        assert receiver.events("poison") == []
        assert receiver.client.connected

    stats = await harness.stats()
    assert [s["records_skipped"] for s in stats] == [len(EVENTS) + len(HEADED)] * 3
    # Every malformed sessions record but the valid-looking epoch (5 is not a string).
    assert all(s["session_records_skipped"] >= len(SESSIONS) - 1 for s in stats)
    async with httpx.AsyncClient() as http:
        for gateway in harness.gateways:
            ready = await http.get(f"{gateway.url}/readyz")
            assert ready.status_code == 200, ready.text
            assert gateway.process is not None
            assert gateway.process.poll() is None
            assert "Traceback" not in gateway.log()


async def test_a_record_aiokafka_cannot_parse_is_skipped_and_delivery_goes_on(
    harness: Harness, kafka_bootstrap: str, channel: str
) -> None:
    """A header key that is not UTF-8: aiokafka refused the fetch that held it at every
    retry (and dropped the records parsed before it): no node delivered anything again."""
    receivers = await harness.clients_on([0, 1, 2])
    for receiver in receivers:
        assert await receiver.ask("join", {"room": "r"}) == {"ok": True}
    for topic, key in ((f"{channel}.sessions", "pid-x"), (f"{channel}.events", "/#r")):
        await write_unparsable(kafka_bootstrap, topic, key)
    harness.external_records += 3

    for receiver in receivers:
        assert await receiver.wait_for("good", 2, timeout=60) == [0, 1]
    await harness.control(0, "burst", event="after", tag="a", count=10, room="r")
    for receiver in receivers:
        assert [e["seq"] for e in await receiver.wait_for("after", 10)] == list(range(10))
    await harness.barrier(receivers)
    for receiver in receivers:
        assert receiver.events("good") == [0, 1]
        assert receiver.events("poison") == []
    stats = await harness.stats()
    assert [s["records_skipped"] for s in stats] == [1] * 3
    assert all(s["session_records_skipped"] >= 1 for s in stats)

    await harness.restart_all()  # each node reads the sessions topic from its start
    assert all(s["session_records_skipped"] >= 1 for s in await harness.stats())
    late = await harness.client(1)
    assert await late.ask("join", {"room": "r"}) == {"ok": True}
    await harness.control(2, "emit", event="after-restart", data=1, room="r")
    assert await late.wait_for("after-restart", 1) == [1]


async def test_batches_another_producer_compressed_reach_every_receiver(
    harness: Harness, kafka_bootstrap: str, channel: str
) -> None:
    """Java and other clients compress with lz4, snappy or zstd; a node without the codec
    could read none of them."""
    receivers = await harness.clients_on([0, 1, 2])
    for receiver in receivers:
        assert await receiver.ask("join", {"room": "r"}) == {"ok": True}
    codecs = ["gzip", "lz4", "snappy", "zstd"]
    for seq, codec in enumerate(codecs):
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type=codec)
        await producer.start()
        try:
            packed = {"v": 1, "method": "emit", "event": "packed", "data": [seq], "room": "r"}
            await producer.send_and_wait(f"{channel}.events", json.dumps(packed).encode(), b"/#r")
        finally:
            await producer.stop()
    harness.external_records += len(codecs)
    for receiver in receivers:
        assert await receiver.wait_for("packed", len(codecs)) == list(range(len(codecs)))
    assert [s["records_skipped"] for s in await harness.stats()] == [0] * 3


async def test_a_batch_in_a_codec_a_node_lacks_is_skipped_and_every_other_event_delivered(
    kafka_bootstrap: str, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka refused every fetch that held it, after it had drained the other
    partitions' records: those were lost, and the batch's partition stopped, for good,
    while ``/readyz`` said 200."""
    app = create_app(Settings(channel=channel), f"kafka://{kafka_bootstrap}")
    manager = app.state.node.manager
    rooms = [f"r{n}" for n in range(12)]
    async with run_server(app) as url:
        await manager.start()
        client = await Recorder(url).connect()
        try:
            for room in rooms:
                assert await client.ask("join", {"room": room}) == {"ok": True}
            # A node without lz4; the record is written by a process that has it.
            monkeypatch.setattr(aiokafka.codec, "has_lz4", lambda: False)
            await _write_lz4(kafka_bootstrap, f"{channel}.events", b"/#r0")
            for seq in range(10):
                for room in rooms:
                    await manager.emit("e", {"room": room, "seq": seq}, room=room)
            got = await client.wait_for("e", 10 * len(rooms), timeout=30)
            for room in rooms:
                assert [e["seq"] for e in got if e["room"] == room] == list(range(10))
            await wait_until(lambda: manager.stats.records_skipped == 1, 15, "the skip")
            assert manager.health().ready
        finally:
            await client.close()
            await manager.stop()


async def _write_lz4(bootstrap: str, topic: str, key: bytes) -> None:
    script = (
        "import asyncio, sys\n"
        "from aiokafka import AIOKafkaProducer\n"
        "async def main():\n"
        "    producer = AIOKafkaProducer(bootstrap_servers=sys.argv[1], compression_type='lz4')\n"
        "    await producer.start()\n"
        "    try:\n"
        "        await producer.send_and_wait(sys.argv[2], b'{}', key=sys.argv[3].encode())\n"
        "    finally:\n"
        "        await producer.stop()\n"
        "asyncio.run(main())\n"
    )
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, bootstrap, topic, key.decode()
    )
    assert await asyncio.wait_for(writer.wait(), 60) == 0
