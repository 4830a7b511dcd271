"""The worst records we know of, on both topics of a running 3-node cluster: every node
skips each one, counts it, and goes on delivering (issue 8: one record on either topic
used to stop delivery on every node while ``/readyz`` said 200)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from .support.cluster import gateway_cluster
from .support.harness import Harness

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
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def test_poison_on_both_topics_then_1000_good_events_reach_every_receiver(
    harness: Harness, kafka_bootstrap: str, channel: str
) -> None:
    receivers = await harness.clients_on([0, 1, 2])
    for receiver in receivers:
        assert await receiver.ask("join", {"room": "r"}) == {"ok": True}
    await _inject(kafka_bootstrap, f"{channel}.sessions", SESSIONS)
    await _inject(kafka_bootstrap, f"{channel}.events", EVENTS)
    harness.external_records += len(EVENTS)
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
    assert [s["records_skipped"] for s in stats] == [len(EVENTS)] * 3
    # Every malformed sessions record but the valid-looking epoch (5 is not a string).
    assert all(s["session_records_skipped"] >= len(SESSIONS) - 1 for s in stats)
    async with httpx.AsyncClient() as http:
        for gateway in harness.gateways:
            ready = await http.get(f"{gateway.url}/readyz")
            assert ready.status_code == 200, ready.text
            assert gateway.process is not None
            assert gateway.process.poll() is None
            assert "Traceback" not in gateway.log()
