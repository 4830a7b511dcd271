"""Outbound routes: client publishes out of ``<channel>.events`` into topics backend
services read, as documented JSON (docs/wire-format.md, "Outbound topics"), exactly once.

A gateway ``publish`` is told apart from a server's emit by its ``sio.cid`` header (only
the gateway's publish writes one, `protocol.py`); a record without it is passed over. A
publish written twice to the events topic (a client's resend that raced its old node:
`adapter/publishes.py`) goes out once: the first of its ``(sio.pub, sio.cid)`` pair in
the partition's order, as nodes deliver it. The pump reads the events topic in the
inbound bridges' transactional loop (`transactional.py`), so a publish goes out exactly
when its offset is committed. What the loop's memory of publish ids would lose in a
restart it reads again: a partition taken is read from a window before the first record
it handles, those records only noted (`OutboundPump._look_back`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from socketio_kafka.adapter import codec, fastjson
from socketio_kafka.adapter.errors import RecordDecodeError
from socketio_kafka.adapter.options import KafkaOptions
from socketio_kafka.adapter.publishes import PublishLedger
from socketio_kafka.adapter.routing import CORRELATION_ID, PUBLISHER, SUBJECT, Headers

from .config import OutboundRoute
from .mapping import BadRecord
from .transactional import BridgeStats, Record, Send, Skipped, TransactionalPump

__all__ = ["FORMAT_VERSION", "OutboundPump", "publish_record"]

#: The ``v`` of an outbound value: a consumer refuses a version it does not know.
FORMAT_VERSION = 1


class OutboundPump(TransactionalPump):
    """Runs one outbound route until cancelled. Example::

    pump = OutboundPump(route, options, ["broker:9092"], "socketio.events", instance="a")
    supervisor.start(f"bridge:{route.name}", pump.run)
    """

    bridge: OutboundRoute
    #: The publish ids read, built by each `run`: a restart reads the window again.
    _ledger: PublishLedger

    def __init__(
        self,
        route: OutboundRoute,
        options: KafkaOptions,
        bootstrap: list[str],
        events_topic: str,
        instance: str | None = None,
    ) -> None:
        super().__init__(route, [events_topic], [route.topic], options, bootstrap, instance)

    async def run(self) -> None:
        self._ledger = _ledger(self.bridge)
        #: Partitions taken at a committed offset, until their first record is read.
        self._resumed: set[TopicPartition] = set()
        await super().run()

    async def _positioned(
        self, consumer: AIOKafkaConsumer, committed: dict[TopicPartition, int]
    ) -> None:
        self._resumed.update(committed)

    async def _transfer(self, tp: TopicPartition, records: Sequence[Record]) -> None:
        if tp in self._resumed and records:
            self._resumed.discard(tp)
            if await self._look_back(tp, records[0]):
                return  # read again once the window before it is
        await super()._transfer(tp, records)

    async def _look_back(self, tp: TopicPartition, first: Record) -> bool:
        """Seek ``tp`` back a window before the first record it resumes at, for the publish
        ids written there: a repeat of one of them is known as one. The window is the
        records', not the clock's: a pump down longer than it once looked back from now,
        saw nothing, and wrote a repeat out again. True when it sought back."""
        assert self._consumer is not None
        since = first.timestamp - int(self.bridge.window_s * 1000)
        found = (await self._consumer.offsets_for_times({tp: since})).get(tp)
        if found is None or found.offset >= first.offset:
            return False
        self._consumer.seek(tp, found.offset)
        return True

    def _seen_before(self, record: Record) -> None:
        self._ledger.first(record.partition, record.offset, record.headers)

    def _outputs(self, record: Record, done: BridgeStats) -> list[Send]:
        if not self._ledger.first(record.partition, record.offset, record.headers):
            done.repeats += 1
            return []
        out = self._map(record, done, lambda r: publish_record(self.bridge, r))
        if isinstance(out, Skipped):
            return out.sends
        if out is None:
            done.passed += 1
            return []
        done.events += 1
        return [out]


def _ledger(route: OutboundRoute) -> PublishLedger:
    """Only its memory of ids read (`PublishLedger.first`) is used: the pump publishes
    nothing itself, so it never waits to catch up."""

    async def never(partitions: object) -> None:
        raise AssertionError("an outbound pump never publishes through its ledger")

    return PublishLedger(never, window_s=route.window_s)


def publish_record(route: OutboundRoute, record: Record) -> Send | None:
    """The outbound record of a gateway publish the route matches; None for any other
    record of the events topic. Raises `BadRecord` for a publish that cannot be written
    as JSON (binary data) or a record that is not one of the events topic's."""
    headers = _headers(record.headers)
    cid = headers.get(CORRELATION_ID)
    if cid is None or headers.get("sio.method", "emit") != "emit":
        return None  # not a client's publish: a server's emit, a bridge's, a room change
    try:
        message = codec.decode(record.value)
    except RecordDecodeError as exc:
        raise BadRecord("not_json", f"not an events-topic record: {exc}") from exc
    room, event = message.get("room"), message["event"]
    if message["method"] != "emit" or not isinstance(room, str):
        return None  # a publish goes to one room
    if message["namespace"] != route.namespace or not _matches(route, room, event):
        return None
    if message.get("binary"):
        raise BadRecord("binary", "binary data has no JSON form")
    data = message["data"]
    if len(data) > 1:  # one argument; none when the client's data was null
        raise BadRecord("arguments", f"{len(data)} arguments, not a publish's one")
    skip = message.get("skip_sid")
    publisher = headers.get(PUBLISHER)
    value = {
        "v": FORMAT_VERSION,
        "id": cid,
        "namespace": message["namespace"],
        "room": room,
        "event": event,
        "data": data[0] if data else None,
        "sid": skip if isinstance(skip, str) else None,
        "subject": headers.get(SUBJECT),
        "publisher": publisher,
        "timestamp": record.timestamp,
    }
    out = [(CORRELATION_ID, cid.encode())]
    if publisher is not None:
        out.append((PUBLISHER, publisher.encode()))
    return route.topic, room.encode(), fastjson.dumpb(value), out


def _matches(route: OutboundRoute, room: str, event: str) -> bool:
    rooms = not route.rooms or any(fnmatch.fnmatchcase(room, p) for p in route.rooms)
    events = not route.events or any(fnmatch.fnmatchcase(event, p) for p in route.events)
    return rooms and events


def _headers(raw: Headers) -> dict[str, str]:
    """The ``sio.`` headers as text (the first of a repeated one); others are not read."""
    found: dict[str, str] = {}
    for name, value in raw:
        if name.startswith("sio.") and value is not None and name not in found:
            try:
                found[name] = value.decode()
            except UnicodeDecodeError as exc:
                raise BadRecord("not_utf8", f"header {name!r} is not UTF-8") from exc
    return found
