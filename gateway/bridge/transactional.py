"""The transactional loop both kinds of bridge run: records in, records out, exactly once.

A read_committed consumer group reads the source topics. For each source partition the
pump holds a transactional producer whose ``transactional.id`` names that partition
(``<group>.<topic>.<partition>``): each batch of the partition's records is mapped, the
records it maps to written (and bad ones to the dead-letter topic) and its consumed
offset committed, in one Kafka transaction. Whoever reads the written topics
read_committed sees a batch's records exactly when its offsets are committed: never
twice, never lost.

Why a producer per source partition (docs/decisions.md): aiokafka commits offsets
without the consumer group's generation (KIP-447), so the group cannot fence a bridge
that lost a partition and still writes. The partition's transactional id can: whoever
takes the partition next starts a producer with the same id, which aborts the old
owner's open transaction and fences its producer, and only then reads where to resume.

What a record becomes is the subclass's `TransactionalPump._outputs`: an inbound bridge's
emits (`pump.Pump`), an outbound route's publishes (`outbound.OutboundPump`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, TypeVar

from aiokafka import (
    AIOKafkaClient,
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import CoordinationType
from aiokafka.coordinator.protocol import ConsumerProtocol
from aiokafka.errors import (
    CorruptRecordException,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    UnknownMemberIdError,
    for_code,
)
from aiokafka.protocol.admin import DescribeGroupsRequest
from aiokafka.protocol.group import LeaveGroupRequest

from socketio_kafka.adapter.options import KafkaOptions
from socketio_kafka.adapter.skips import UNREADABLE, log_unreadable, read_past_unreadable
from socketio_kafka.adapter.stopping import stop_consumer

from .mapping import BadRecord

__all__ = [
    "BridgeStats",
    "MissingTopic",
    "Record",
    "Send",
    "Skipped",
    "Source",
    "TransactionalPump",
]

logger = logging.getLogger("socketio_kafka.bridge")
#: What a dead-letter copy leaves to a record batch's own bytes under ``max_record_bytes``:
#: a topic made with Kafka's default ``max.message.bytes`` (1 MiB and 12 bytes) takes it.
_DEAD_LETTER_HEADROOM = 1024
#: What Kafka answers for a record it refuses for what it is, at every try: written again,
#: it would fail its batch's transaction for ever. The record is skipped as bad instead.
#: (Not InvalidTimestampError: the bridge stamps no record, so that one is its host's clock
#: off, and every record would be skipped until it is mended.)
_REFUSED: dict[type[KafkaError], str] = {
    MessageSizeTooLargeError: "too_large",
    RecordListTooLargeError: "too_large",
    CorruptRecordException: "refused",
}

_POLL_MS = 1000
_BATCH = 500
Record: TypeAlias = ConsumerRecord[bytes, bytes]
#: A record to write: topic, key, value, headers.
Send: TypeAlias = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]
_Mapped = TypeVar("_Mapped")


@dataclass(frozen=True, slots=True)
class _Output:
    """A source record, what it becomes, and what it counts once committed."""

    record: Record
    sends: list[Send]
    done: BridgeStats


class MissingTopic(RuntimeError):
    """A topic the bridge writes to does not exist (it creates none: the events topic's
    partition count must be the gateways'); the supervisor retries with backoff."""


class Source(Protocol):
    """What the loop reads of a bridge's configuration (`InboundBridge`, `OutboundRoute`)."""

    @property
    def name(self) -> str: ...
    @property
    def group(self) -> str: ...
    @property
    def start(self) -> str: ...
    @property
    def dead_letter(self) -> str | None: ...


@dataclass
class BridgeStats:
    """What one bridge did, counted when its transaction committed."""

    records: int = 0  # source records consumed and committed
    events: int = 0  # records written: emits to the events topic, or publishes out
    tombstones_passed: int = 0  # tombstones that became nothing
    passed: int = 0  # outbound: records that are no publish of its rooms and events
    repeats: int = 0  # outbound: a publish written twice to the events topic, out once
    bad: int = 0  # records that mapped to nothing (skipped)
    dead_lettered: int = 0  # of those, copied to the dead-letter topic
    transactions: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Skipped:
    """A record `TransactionalPump._map` skipped as bad: what it sends instead (its
    dead-letter copy, or nothing)."""

    sends: list[Send]


class TransactionalPump:
    """Runs one bridge until cancelled; each `run` starts from what Kafka has committed,
    so the supervisor can restart it at any point."""

    def __init__(
        self,
        bridge: Source,
        topics: Sequence[str],
        writes: Sequence[str],
        options: KafkaOptions,
        bootstrap: list[str],
        instance: str | None = None,
    ) -> None:
        self.bridge = bridge
        self.stats = BridgeStats()
        self._topics = list(topics)
        self._writes = [*writes, *filter(None, [bridge.dead_letter])]
        self._options = options
        self._bootstrap = bootstrap
        self._instance = instance
        # Names the instance's member in the group's description (`_leave_if_resubscribed`).
        self._client_id = f"{options.client_id}.{instance}" if instance else options.client_id
        self._producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self._next: dict[TopicPartition, int] = {}  # the first offset not yet committed
        self._lock = asyncio.Lock()  # a rebalance waits for the batch in flight
        self._consumer: AIOKafkaConsumer | None = None
        # aiokafka logs and forgets what a rebalance listener raises: kept, to be raised.
        self._failure: BaseException | None = None

    # -- what a subclass says ------------------------------------------------------------

    def _outputs(self, record: Record, done: BridgeStats) -> list[Send]:
        """The records one source record becomes (none: passed over, counted in ``done``)."""
        raise NotImplementedError

    async def _positioned(
        self, consumer: AIOKafkaConsumer, committed: dict[TopicPartition, int]
    ) -> None:
        """Taken partitions were sought to their committed offsets: a subclass may read
        from earlier (`_seen_before` gets the records below them)."""

    def _seen_before(self, record: Record) -> None:
        """A record below the committed offset, read again after `_positioned`."""

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        self._failure = None
        await self._require_topics()
        await self._leave_if_resubscribed()
        consumer = AIOKafkaConsumer(**self._consumer_kwargs())
        self._consumer = consumer
        consumer.subscribe(self._topics, listener=_Rebalance(self))
        try:
            await consumer.start()  # stopped below if even this fails: no consumer left open
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=_POLL_MS, max_records=_BATCH)
                except UNREADABLE:
                    await self._read_past_unreadable(consumer)
                    continue
                if self._failure is not None:
                    raise self._failure
                async with self._lock, asyncio.TaskGroup() as group:
                    for tp, records in batches.items():
                        group.create_task(self._transfer(tp, records))
        finally:
            await stop_consumer(consumer)
            await self._drop(list(self._producers))

    def _consumer_kwargs(self) -> dict[str, Any]:
        kwargs = self._options.consumer_kwargs(self._bootstrap)
        return {
            **kwargs,
            "client_id": self._client_id,
            "group_id": self.bridge.group,
            # A restarted bridge of the same instance takes its partitions back at once
            # (static membership), instead of waiting out the dead one's session.
            "group_instance_id": self._instance,
            "auto_offset_reset": self.bridge.start,
            "isolation_level": "read_committed",
            "enable_auto_commit": False,
        }

    async def _require_topics(self) -> None:
        admin = AIOKafkaAdminClient(**self._options.common_kwargs(self._bootstrap))
        await admin.start()
        try:
            for topic in await admin.describe_topics(self._writes):
                if topic["error_code"] or not topic["partitions"]:
                    raise MissingTopic(
                        f"topic {topic['topic']!r} does not exist: a gateway node creates the"
                        " events topic; create the others yourself"
                    )
        finally:
            await admin.close()

    async def _leave_if_resubscribed(self) -> None:
        """Take this instance's static member out of the group if it joined with other
        topics (the bridge's were changed): the broker would hand its rejoin the old
        assignment, which aiokafka refuses (a topic no longer read) or keeps (a topic
        added goes unread), until the member's session runs out (docs/decisions.md)."""
        if self._instance is None:
            return
        group = self.bridge.group
        client = AIOKafkaClient(**self._options.common_kwargs(self._bootstrap))
        await client.bootstrap()
        try:
            node = await client.coordinator_lookup(CoordinationType.GROUP, group)
            (described,) = (await client.send(node, DescribeGroupsRequest([group]))).groups
            error, _group, _state, _type, _protocol, members, *_ = described
            if error:
                raise for_code(error)(f"describing group {group!r}")
            # A member's metadata is its subscription; described only in a Stable group
            # (a rebalance under way takes the rejoin's subscription anyway).
            for member_id, client_id, _host, metadata, *_ in members:
                if client_id != self._client_id or not metadata:
                    continue
                joined = ConsumerProtocol.METADATA.decode(metadata).subscription
                if set(joined) == set(self._topics):
                    continue
                logger.warning(
                    "bridge %s: instance %s joined group %s with topics %s, now %s:"
                    " leaving it to join afresh",
                    *(self.bridge.name, self._instance, group, sorted(joined), self._topics),
                )
                left = await client.send(node, LeaveGroupRequest(group, member_id))
                if left.error_code and left.error_code != UnknownMemberIdError.errno:
                    raise for_code(left.error_code)(f"leaving group {group!r}")
        finally:
            await client.close()

    # -- partitions: taken and given up ---------------------------------------------------

    async def _take(self, assigned: Sequence[TopicPartition]) -> None:
        """Fence the partitions' previous owners, then resume where they committed."""
        consumer = self._consumer
        assert consumer is not None
        consumer.pause(*assigned)
        try:
            await self._fence_and_seek(consumer, assigned)
        except Exception as exc:  # the partitions stay paused: the run raises it
            self._failure = exc
            raise

    async def _fence_and_seek(
        self, consumer: AIOKafkaConsumer, assigned: Sequence[TopicPartition]
    ) -> None:
        async with self._lock:
            started: dict[TopicPartition, asyncio.Task[AIOKafkaProducer]] = {}
            try:
                async with asyncio.TaskGroup() as group:  # an InitProducerId round trip each
                    for tp in assigned:
                        if tp not in self._producers:
                            started[tp] = group.create_task(self._start_producer(tp))
            finally:  # those started are kept even if one failed: the run's end stops them
                for tp, task in started.items():
                    if task.done() and not task.cancelled() and task.exception() is None:
                        self._producers[tp] = task.result()
            resumed: dict[TopicPartition, int] = {}
            for tp in assigned:
                # Read only now: an old owner's commit in flight is done or aborted.
                committed = await consumer.committed(tp)
                if committed is not None:
                    consumer.seek(tp, committed)
                    self._next[tp] = resumed[tp] = committed
                else:
                    self._next[tp] = await self._commit_start(consumer, tp)
            await self._positioned(consumer, resumed)
            consumer.resume(*assigned)

    async def _commit_start(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
        """Where the group's start (earliest, latest) puts a partition the group never
        committed, committed at once: else a restart resolves "latest" anew, past what was
        written meanwhile, and a seek back (`_read_past_unreadable`) has nowhere to go."""
        start: int = await consumer.position(tp)
        async with self._producers[tp].transaction():
            await self._producers[tp].send_offsets_to_transaction({tp: start}, self.bridge.group)
        return start

    async def _give_up(self, revoked: Sequence[TopicPartition]) -> None:
        async with self._lock:  # the batch in flight commits first
            await self._drop(revoked)

    async def _start_producer(self, tp: TopicPartition) -> AIOKafkaProducer:
        kwargs = self._options.producer_kwargs(self._bootstrap)
        producer = AIOKafkaProducer(
            **kwargs, transactional_id=f"{self.bridge.group}.{tp.topic}.{tp.partition}"
        )
        await producer.start()
        try:
            # InitProducerId: bumps the id's epoch (fencing the old owner's producer) and
            # ends its open transaction. begin_transaction is where aiokafka awaits it.
            await producer.begin_transaction()
            await producer.abort_transaction()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def _drop(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            self._next.pop(tp, None)
            producer = self._producers.pop(tp, None)
            if producer is not None:
                await producer.stop()

    # -- records -------------------------------------------------------------------------

    async def _transfer(self, tp: TopicPartition, records: Sequence[Record]) -> None:
        start = self._next.get(tp)
        if tp not in self._producers or start is None:
            return  # given up meanwhile: its next owner reads them
        for record in records:
            if record.offset < start:
                self._seen_before(record)
        outputs = []
        for record in records:
            if record.offset >= start:  # mapped once: `_outputs` may remember what it read
                done = BridgeStats()
                outputs.append(_Output(record, self._outputs(record, done), done))
        if not outputs:
            return
        try:
            await self._commit(tp, outputs)
        except tuple(_REFUSED):
            await self._commit_each(tp, outputs)

    async def _commit_each(self, tp: TopicPartition, outputs: Sequence[_Output]) -> None:
        """Kafka refused a record of the batch: each in a transaction of its own, and the
        one refused skipped as bad, so that the partition goes on past it."""
        await self._renew(tp)
        for output in outputs:
            try:
                await self._commit(tp, [output])
            except tuple(_REFUSED) as exc:
                await self._renew(tp)
                record, done = output.record, BridgeStats()
                reason = f"refused by Kafka: {exc}"
                sends = self._bad(record, _REFUSED.get(type(exc), "refused"), reason, done)
                await self._commit(tp, [_Output(record, sends, done)])

    async def _renew(self, tp: TopicPartition) -> None:
        """A new producer for ``tp``: the refused batch left a gap in the old one's sequence
        numbers, which Kafka would refuse every later batch for."""
        await self._producers.pop(tp).stop()
        self._producers[tp] = await self._start_producer(tp)

    async def _commit(self, tp: TopicPartition, outputs: Sequence[_Output]) -> None:
        producer = self._producers[tp]
        async with producer.transaction():
            sent = [
                await producer.send(topic, value, key, headers=headers)
                for output in outputs
                for topic, key, value, headers in output.sends
            ]
            await asyncio.gather(*sent)
            end = outputs[-1].record.offset + 1
            await producer.send_offsets_to_transaction({tp: end}, self.bridge.group)
        self._next[tp] = end
        for output in outputs:
            self._add(output.done)
        self._add(BridgeStats(records=len(outputs), transactions=1))

    def _map(
        self, record: Record, done: BridgeStats, mapping: Callable[[Record], _Mapped]
    ) -> _Mapped | Skipped:
        """``mapping(record)``, or the record skipped as bad (`_bad`): bad input, or a bug
        in the mapping, logged with its traceback, never a stuck bridge."""
        try:
            return mapping(record)
        except BadRecord as exc:
            return Skipped(self._bad(record, exc.kind, str(exc), done))
        except Exception:
            logger.exception(
                "bridge %s: record %s[%d]@%d raised while mapped",
                *(self.bridge.name, record.topic, record.partition, record.offset),
            )
            return Skipped(self._bad(record, "error", "mapping raised", done))

    def _bad(self, record: Record, kind: str, reason: str, done: BridgeStats) -> list[Send]:
        logger.warning(
            "bridge %s: skipping record %s[%d]@%d: %s",
            *(self.bridge.name, record.topic, record.partition, record.offset, reason),
        )
        done.bad += 1
        done.bad_by_reason[kind] = done.bad_by_reason.get(kind, 0) + 1
        if self.bridge.dead_letter is None:
            return []
        done.dead_lettered += 1
        limit = self._options.max_record_bytes - _DEAD_LETTER_HEADROOM
        return [_dead_letter(self.bridge.dead_letter, record, reason, limit)]

    def _add(self, done: BridgeStats) -> None:
        stats = self.stats
        stats.records += done.records
        stats.events += done.events
        stats.tombstones_passed += done.tombstones_passed
        stats.passed += done.passed
        stats.repeats += done.repeats
        stats.bad += done.bad
        stats.dead_lettered += done.dead_lettered
        stats.transactions += done.transactions
        for kind, count in done.bad_by_reason.items():
            stats.bad_by_reason[kind] = stats.bad_by_reason.get(kind, 0) + count

    async def _read_past_unreadable(self, consumer: AIOKafkaConsumer) -> None:
        """aiokafka cannot parse a record (a header key not UTF-8, a bad CRC), and refuses
        every fetch that holds it: read on one record at a time, each its own transaction,
        and commit past the unreadable one."""
        passed: dict[TopicPartition, int] = {}

        def skip(tp: TopicPartition, offset: int, exc: Exception) -> None:
            log_unreadable(logger, tp, offset, exc)
            self._add(BridgeStats(bad=1, bad_by_reason={"unreadable": 1}))
            passed[tp] = offset + 1

        async with self._lock:
            for tp, start in self._next.items():
                consumer.seek(tp, start)
            await read_past_unreadable(consumer, list(self._next), self._take_one, skip)
            for tp, end in passed.items():
                producer = self._producers.get(tp)
                if producer is not None and self._next.get(tp, end) <= end:
                    async with producer.transaction():
                        await producer.send_offsets_to_transaction({tp: end}, self.bridge.group)
                    self._next[tp] = end

    async def _take_one(self, tp: TopicPartition, records: list[Record]) -> None:
        await self._transfer(tp, records)


def _dead_letter(topic: str, record: Record, reason: str, limit: int) -> Send:
    """The source record as it was, and where it came from and why it was refused; past
    ``limit`` bytes its value, then its key, then its headers are left out, their sizes
    said: a copy Kafka refuses fails its batch's transaction on every retry, and stops
    the bridge's partition."""
    ours = [
        ("bridge.error", reason.encode()),
        ("bridge.topic", record.topic.encode()),
        ("bridge.partition", str(record.partition).encode()),
        ("bridge.offset", str(record.offset).encode()),
    ]
    theirs = [(name, value) for name, value in record.headers if value is not None]
    key, value = record.key, record.value
    parts = (
        ("value", len(value or b"")),
        ("key", len(key or b"")),
        ("headers", sum(len(name) + len(v) for name, v in theirs)),
    )
    size = sum(n for _, n in parts) + sum(len(name) + len(v) for name, v in ours)
    dropped = set()
    for part, part_size in parts:
        if size <= limit:
            break
        if part_size:
            ours.append((f"bridge.{part}-bytes", str(part_size).encode()))
            size -= part_size
            dropped.add(part)
    return (
        topic,
        None if "key" in dropped else key,
        None if "value" in dropped else value,
        ours if "headers" in dropped else theirs + ours,
    )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, pump: TransactionalPump) -> None:
        self._pump = pump

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._pump._give_up(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self._pump._take(assigned)
