"""Records a bridge must get past, and positions it must keep, on real Kafka: the pumps run
in-process (`Pump.run`, `OutboundPump.run`), as the bridge command's supervisor runs them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from socketio_kafka.adapter import KafkaOptions, codec, routing
from socketio_kafka.gateway.bridge import parse
from socketio_kafka.gateway.bridge.outbound import OutboundPump
from socketio_kafka.gateway.bridge.pump import Pump
from socketio_kafka.gateway.bridge.transactional import TransactionalPump

from .support.unparsable import write_unparsable
from .support.waiting import wait_until
from .test_bridge import _create_topics, _partition, _read

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(60)]

#: What ``serve --max-payload-bytes 65536`` makes the events topic take (max.message.bytes).
_SMALL_EVENTS = {"max.message.bytes": str(KafkaOptions(max_record_bytes=152917).max_message_bytes)}


@contextlib.asynccontextmanager
async def _running(pump: TransactionalPump) -> AsyncIterator[Callable[[], bool]]:
    """``pump.run`` in a task; yields a predicate true once the run ended (a failure)."""
    task = asyncio.create_task(pump.run())
    try:
        yield task.done
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(ended: Callable[[], bool], done: Callable[[], bool], what: str) -> None:
    await wait_until(lambda: ended() or done(), timeout=30, what=what)
    assert not ended(), f"the bridge's run ended before {what}"


def _inbound(bootstrap: str, channel: str, source: str, **extra: str) -> Pump:
    lines = [f'[kafka]\nchannel = "{channel}"\n[[inbound]]\nname = "b"\ntopics = ["{source}"]']
    lines += [
        'room = "user:{key}"\nevent = "e"',
        *(f"{k} = {json.dumps(v)}" for k, v in extra.items()),
    ]
    bridge = parse("\n".join(lines) + "\n").inbound[0]
    return Pump(bridge, KafkaOptions(), [bootstrap], f"{channel}.events")


async def test_a_record_the_events_topic_refuses_is_dead_lettered_and_its_partition_goes_on(
    kafka_bootstrap: str, channel: str
) -> None:
    """A record under the bridge's own size check but over the events topic's
    max.message.bytes failed its batch's transaction at every restart, for ever."""
    source, events, dead = f"{channel}-src", f"{channel}.events", f"{channel}-dead"
    await _create_topics(
        kafka_bootstrap, (source, 1, {}), (events, 1, _SMALL_EVENTS), (dead, 1, {})
    )
    big = json.dumps({"x": "a" * 300_000}).encode()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=2**20)
    await producer.start()
    try:
        for value in (b'{"n": 0}', big, b'{"n": 1}'):
            await producer.send_and_wait(source, value, key=b"u1")
    finally:
        await producer.stop()
    pump = _inbound(kafka_bootstrap, channel, source, dead_letter=dead)
    async with _running(pump) as ended:
        await _until(ended, lambda: pump.stats.records == 3, "three records committed")
    assert (pump.stats.events, pump.stats.bad_by_reason) == (2, {"too_large": 1})
    emitted = await _read(kafka_bootstrap, events, 2, settle=0.5)
    assert [codec.decode(value)["data"] for _, value in emitted] == [[{"n": 0}], [{"n": 1}]]
    ((key, value),) = await _read(kafka_bootstrap, dead, 1, settle=0.5)
    assert (key, value) == (b"u1", big)


async def test_a_publish_the_outbound_topic_refuses_is_skipped_and_the_next_goes_out(
    kafka_bootstrap: str, channel: str
) -> None:
    events, out = f"{channel}.events", f"{channel}.out"
    limit = {"max.message.bytes": str(512 * 1024)}
    await _create_topics(kafka_bootstrap, (events, 1, {}), (out, 1, limit))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=2**20)
    await producer.start()
    try:
        for data, cid in (("x" * 600_000, "big"), ("hello", "small")):
            message = codec.emit_message(
                "said", [data], namespace="/", room="chat:1", skip_sid="s1", callback=None,
                host_id="h",
            )  # fmt: skip
            headers = list(routing.headers_for(message, cid, "0123456789abcdef", "bob"))
            value, key = codec.encode(message), codec.record_key(message)
            await producer.send_and_wait(events, value, key, headers=headers)
    finally:
        await producer.stop()
    text = f'[kafka]\nchannel = "{channel}"\n[[outbound]]\nname = "o"\ntopic = "{out}"\n'
    route = parse(text + 'rooms = ["chat:*"]\n').outbound[0]
    pump = OutboundPump(route, KafkaOptions(), [kafka_bootstrap], events)
    async with _running(pump) as ended:
        await _until(ended, lambda: pump.stats.records == 2, "two records committed")
    assert (pump.stats.events, pump.stats.bad_by_reason) == (1, {"too_large": 1})
    ((_, value),) = await _read(kafka_bootstrap, out, 1, settle=0.5)
    assert json.loads(value)["id"] == "small"


async def test_latest_keeps_what_a_quiet_partition_got_while_the_bridge_was_down(
    kafka_bootstrap: str, channel: str
) -> None:
    """A partition the group never committed was put at its end again by each run ("latest"),
    past whatever was written to it meanwhile."""
    source, events = f"{channel}-src", f"{channel}.events"
    await _create_topics(kafka_bootstrap, (source, 2, {}), (events, 1, {}))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        pump = _inbound(kafka_bootstrap, channel, source, start="latest", payload="text")
        async with _running(pump) as ended:  # partition 1 quiet: never committed
            await _mark(producer, source, pump, ended)
        await producer.send_and_wait(source, b"while-down", key=b"k", partition=1)
        pump = _inbound(kafka_bootstrap, channel, source, start="latest", payload="text")
        async with _running(pump) as ended:
            await _mark(producer, source, pump, ended)
            await producer.send_and_wait(source, b"after", key=b"k", partition=1)
            emitted = await _read_until(kafka_bootstrap, events, b"after")
    finally:
        await producer.stop()
    assert sum(b"while-down" in value for value in emitted) == 1


async def _mark(
    producer: AIOKafkaProducer, source: str, pump: Pump, ended: Callable[[], bool]
) -> None:
    """Marks written to partition 0 until one is bridged: the run's positions are taken."""
    for _ in range(30):
        await producer.send_and_wait(source, b"mark", key=b"k", partition=0)
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: ended() or pump.stats.events > 0, timeout=1)
            break
    assert pump.stats.events > 0, "no mark bridged"
    assert not ended(), "the bridge's run ended"


async def _read_until(bootstrap: str, topic: str, needle: bytes) -> list[bytes]:
    """The committed values of ``topic`` from its start up to one holding ``needle``."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    found: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while not found or needle not in found[-1]:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [record.value or b"" for record in records]
    finally:
        await consumer.stop()
    return found


async def test_an_unreadable_record_loses_no_other_partitions_records(
    kafka_bootstrap: str, channel: str
) -> None:
    """aiokafka drains a fetch's good partition, then raises for another's unreadable record:
    a partition the group never committed was not sought back, its records lost."""
    source, events = f"{channel}-src", f"{channel}.events"
    await _create_topics(kafka_bootstrap, (source, 2, {}), (events, 1, {}))
    key = next(k for k in (f"u{n}" for n in range(100)) if _partition(k.encode(), 2) == 1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for n in range(20):
            value = json.dumps({"n": n}).encode()
            await producer.send_and_wait(source, value, key=b"u0", partition=0)
    finally:
        await producer.stop()
    await write_unparsable(kafka_bootstrap, source, key)
    pump = _inbound(kafka_bootstrap, channel, source)
    async with _running(pump) as ended:
        await _until(ended, lambda: pump.stats.records == 22, "22 good records committed")
    assert (pump.stats.events, pump.stats.bad_by_reason) == (22, {"unreadable": 1})
    assert len(await _read(kafka_bootstrap, events, 22, settle=0.5)) == 22
