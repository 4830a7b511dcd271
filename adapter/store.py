"""`SessionStore`: the compacted ``<channel>.sessions`` topic as one node reads and writes it.

It holds the node's table of sessions (`SessionTable`), agrees on the events topic's
epoch at start, says the node is alive every second, ends sessions past the recovery
window, and answers the questions a recovery asks: what is this pid's session now, did my
claim of it win. The manager reads the topic with its live consumer and hands each record
here; writes go through the manager's publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from .errors import BrokerUnavailable, PublishError, RecordDecodeError
from .publisher import Publisher
from .sessions import EPOCH_KEY, NODE_PREFIX, Session, SessionTable, encode_session
from .skips import UNREADABLE, log_skipped, log_unexpected, log_unreadable, read_past_unreadable
from .turns import Turns
from .watermarks import Watermarks

if TYPE_CHECKING:
    from .manager import ManagerStats

__all__ = ["NODE_STALE_S", "SessionStore"]

# Short: a session whose node died is claimable once its heartbeat is stale (3 beats).
_HEARTBEAT_S = 1.0
#: How long after its last heartbeat a node counts as gone.
NODE_STALE_S = 3 * _HEARTBEAT_S
_EXPIRY_EVERY_S = 5.0
#: Tombstones per produce call in a sweep: the loop (and the heartbeat) runs in between.
_EXPIRY_CHUNK = 500
#: Sessions looked at in one turn of the loop when a dead node's are looked for.
_SCAN_CHUNK = 20_000
_EPOCH_WAIT_S = 5.0
#: How long a claim waits to be read back. Under a mass reconnect a node's live consumer
#: falls seconds behind: at 3 s, 546 claims of 500 clients were closed for a retry, which
#: each client made a second later (last client recovered at 23.7 s; at 10 s: no retry,
#: 8.1 s, a third of the CPU; benchmarks/mass_recovery.py).
_CLAIM_WAIT_S = 10.0
_POLL_TIMEOUT_MS = 1000


class SessionStore:
    """One node's view of the sessions topic, and its writes to it.

    ``publisher`` waits for the manager to be ready and returns its `Publisher`;
    ``offsets`` is the consumer kept for offset requests (None before it is connected);
    ``on_rejected`` is told of a live session of this node's whose record another node's
    claim followed (it must be written again: see `SessionTable.apply`).
    ``max_record_bytes``: the largest record Kafka takes from this node (`write`).
    """

    def __init__(
        self,
        topic: str,
        host_id: str,
        stats: ManagerStats,
        publisher: Callable[[], Awaitable[Publisher]],
        watermarks: Watermarks,
        logger: Callable[[], logging.Logger],
        max_record_bytes: int,
    ) -> None:
        self.topic = topic
        self.table = SessionTable()
        self.partitions = 0
        #: Recovery window in seconds: sessions left longer ago are ended.
        self.window = 0.0
        #: Whether this node created the topic (it then writes the epoch at once).
        self.created = False
        self.on_rejected: Callable[[str, str], None] | None = None
        self._host_id = host_id
        self._stats = stats
        self._publisher = publisher
        self._watermarks = watermarks
        self._logger = logger
        self._max_record_bytes = max_record_bytes
        #: Next offset to read, per partition.
        self._positions: dict[int, int] = {}
        self._read = asyncio.Condition()  # notified as records are applied
        #: A pid's records reach Kafka in the order they were written here (`_send`).
        self._turns = Turns()

    @property
    def epoch(self) -> str:
        """The events topic's epoch, once agreed ("" before)."""
        return self.table.epoch or ""

    # -- reading -----------------------------------------------------------------------

    def apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Fold one record in; a bad one is counted, logged with its position, skipped."""
        self._positions[record.partition] = record.offset + 1
        kept: Session | None = None
        try:
            kept = self.table.apply(record.key, record.value, record.timestamp, record.offset)
        except RecordDecodeError as exc:
            self._stats.session_records_skipped += 1
            log_skipped(self._logger(), record, exc)
        except Exception:  # a bug, not bad input: still one record, never the loop
            self._stats.session_records_skipped += 1
            log_unexpected(self._logger(), record)
        if kept is not None and kept.owner == self._host_id and self.on_rejected is not None:
            self.on_rejected(kept.sid, kept.namespace)

    async def applied(self) -> None:
        """Wake whoever waits for records read up to some offset."""
        async with self._read:
            self._read.notify_all()

    def resume(self, consumer: AIOKafkaConsumer) -> None:
        """Position ``consumer`` after the last record applied (a restarted read loop)."""
        for p in range(self.partitions):
            consumer.seek(TopicPartition(self.topic, p), self._positions.get(p, 0))

    async def load(self, consumer: AIOKafkaConsumer, publisher: Publisher) -> None:
        """Read the topic to its end from the beginning, and agree on the events topic's
        epoch: the topic's creator writes it; the others wait for it, and write one only
        if it never comes. (``publisher`` is the starting manager's: it is not ready yet.)"""
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        await consumer.seek_to_beginning(*tps)
        consumer.resume(*tps)  # the manager's consumer starts paused
        await self._read_to_end(consumer, tps)
        if self.table.epoch is None and not self.created:
            deadline = time.monotonic() + _EPOCH_WAIT_S
            while self.table.epoch is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                await self._read_to_end(consumer, tps)
        if self.table.epoch is None:
            value = json.dumps({"epoch": uuid.uuid4().hex[:12]}).encode()
            await publisher.send_many(self.topic, [(EPOCH_KEY, value)])
            await self._read_to_end(consumer, tps)
        assert self.table.epoch is not None

    async def _read_to_end(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        end = await consumer.end_offsets(tps)
        while await _behind(consumer, end):
            try:
                batches = await consumer.getmany(*tps, timeout_ms=_POLL_TIMEOUT_MS)
            except UNREADABLE:  # else no node could start again: the topic is compacted
                for tp in tps:
                    await self._seek_after_applied(consumer, tp)
                await read_past_unreadable(consumer, tps, self._apply_all, self.skipped)
                continue
            for records in batches.values():
                for record in records:
                    self.apply(record)

    async def _seek_after_applied(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        if tp.partition in self._positions:
            consumer.seek(tp, self._positions[tp.partition])
        else:
            await consumer.seek_to_beginning(tp)

    async def _apply_all(
        self, _: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
    ) -> None:
        for record in records:
            self.apply(record)
        await self.applied()

    def skipped(self, tp: TopicPartition, offset: int, exc: Exception) -> None:
        """A record of this topic aiokafka could not parse: counted, logged, read past."""
        self._positions[tp.partition] = offset + 1
        self._stats.session_records_skipped += 1
        log_unreadable(self._logger(), tp, offset, exc)

    # -- what a recovery asks ----------------------------------------------------------

    async def find(self, pid: str, wait: float = 3.0) -> Session | None:
        """The session of ``pid`` as the topic says now.

        The topic is read up to its end first, even for a session known here: a record
        written a moment ago on another node (the session restored there) decides a claim.
        """
        if not self._watermarks.available:
            return self.table.sessions.get(pid)
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        end = await self._watermarks.end(tps)

        def read_to_end() -> bool:
            return all(self._positions.get(tp.partition, 0) >= end[tp] for tp in tps)

        async with self._read:
            with contextlib.suppress(TimeoutError):
                # Past the wait, judged on what is read: the consumer is stuck or far behind.
                await asyncio.wait_for(self._read.wait_for(read_to_end), wait)
        return self.table.sessions.get(pid)

    async def arrival(self, pid: str, wait: float) -> Session | None:
        """The session of ``pid`` once its first record (or its end) is read, if within
        ``wait`` seconds: a session minted moments ago on another node may not be in Kafka
        yet."""
        table = self.table
        if wait > 0:
            async with self._read:
                with contextlib.suppress(TimeoutError):
                    read = self._read.wait_for(
                        lambda: pid in table.sessions or table.ended_lately(pid)
                    )
                    await asyncio.wait_for(read, wait)
        return table.sessions.get(pid)

    async def claim(self, claim: Session, wait: float = _CLAIM_WAIT_S) -> bool:
        """Whether ``claim`` won its session, as every node's table judges it.

        The claim is written, then this node waits until its table has applied it:
        first by offset after the record it names wins. `PublishError` when Kafka did
        not tell within ``wait`` (the claim may or may not stand).
        """
        [written] = await self._send([(claim.pid.encode(), encode_session(claim))])
        partition: int = written.partition
        offset: int = written.offset

        def applied() -> bool:
            return self._positions.get(partition, 0) > offset

        async with self._read:
            try:
                await asyncio.wait_for(self._read.wait_for(applied), wait)
            except TimeoutError as exc:
                raise PublishError(f"claim not read back within {wait}s") from exc
        return self.table.offsets.get(claim.pid) == offset

    def node_alive(self, host_id: str) -> bool:
        return host_id == self._host_id or self.table.node_alive(host_id, NODE_STALE_S)

    # -- writing -----------------------------------------------------------------------

    async def write(self, records: Mapping[str, Session | None]) -> None:
        """Session records by pid, None ending a session, all at once: a burst of joins,
        or a sweep's tombstones, is durable in one round trip."""
        values = [(pid.encode(), self._encode(session)) for pid, session in records.items()]
        await self._send(values)

    def _encode(self, session: Session | None) -> bytes | None:
        """A session's record, within what Kafka takes: one Kafka refuses is refused on
        every retry, and would leave the session's last word unwritten. Its data goes
        first; a session whose rooms alone are too many for a record is ended (its client
        gets a fresh session, and is told so)."""
        if session is None:
            return None
        value = encode_session(session)
        limit = self._max_record_bytes
        if len(value) <= limit:
            return value
        if session.data is not None:
            self._stats.session_data_dropped += 1
            self._logger().warning(
                "session of %s: its record of %d bytes is over max_record_bytes=%d; "
                "kept without its data",
                session.sid,
                len(value),
                limit,
            )
            value = encode_session(replace(session, data=None))
            if len(value) <= limit:
                return value
        self._stats.sessions_too_large += 1
        self._logger().error(
            "session of %s: its record of %d bytes is over max_record_bytes=%d without its "
            "data (%d rooms); ended: it cannot be recovered",
            session.sid,
            len(value),
            limit,
            len(session.rooms),
        )
        return None

    async def _send(self, values: list[tuple[bytes, bytes | None]]) -> list[Any]:
        """Write these records, each after every record of its pid written before it here.

        The turns are taken before the first ``await``, so in the order the records were
        made: a session's "connected, no rooms" record once waited in aiokafka's metadata
        loop while its "left, in room r" record went first, and became the session's last
        word (the client recovered into no room; `Publisher`).
        """
        turns = [self._turns.turn(key) for key, _ in values]
        async with contextlib.AsyncExitStack() as held:
            # Each turn ends with the write, begun or not: a write cancelled while it
            # waited for one once left the rest taken for good, and every later write of
            # their pids waiting behind them.
            for turn in turns:
                held.callback(turn.end)
            for turn in turns:
                await turn.begin()
            publisher = await self._publisher()
            delivery = await publisher.enqueue(self.topic, values, publisher.deadline())
        return await publisher.confirm(delivery)

    async def heartbeat(self) -> None:
        """Say this node is alive, every second, whatever else the node is doing."""
        key = NODE_PREFIX + self._host_id.encode()
        while True:
            try:
                await (await self._publisher()).send_many(self.topic, [(key, b"{}")])
            except (PublishError, BrokerUnavailable) as exc:
                self._logger().debug("heartbeat not written: %s", exc)
            await asyncio.sleep(_HEARTBEAT_S)

    async def expire(self) -> None:
        """End sessions nobody can claim any more; apart from the heartbeat, so a sweep
        after a large node died never makes this node's own heartbeat late."""
        while True:
            await asyncio.sleep(_EXPIRY_EVERY_S)
            try:
                await self._end_expired()
            except (PublishError, BrokerUnavailable) as exc:
                self._logger().debug("expired sessions not ended yet: %s", exc)

    async def _end_expired(self) -> None:
        table, stale, now = self.table, NODE_STALE_S, time.time()
        window = self.window + stale
        # Its owner ends it; any node does once the owner is gone (tombstones are
        # idempotent, so several nodes doing it is harmless).
        pids = [
            pid
            for pid, owner in table.left_past(now, window)
            if owner == self._host_id or not self.node_alive(owner)
        ]
        if dead := table.dead_owners(now, window, stale):
            # Every session is looked at, a chunk a turn: a node keeps the cluster's.
            every = list(table.sessions)
            for first in range(0, len(every), _SCAN_CHUNK):
                pids += table.connected_of(dead, every[first : first + _SCAN_CHUNK])
                await asyncio.sleep(0)
        for first in range(0, len(pids), _EXPIRY_CHUNK):
            chunk = pids[first : first + _EXPIRY_CHUNK]
            await self.write(dict.fromkeys(chunk))
            self._stats.sessions_expired += len(chunk)
        # Once a dead node's sessions have ended, its heartbeat ends too.
        gone = [h for h in table.forgotten_nodes(now, window) if h != self._host_id]
        if gone := gone[:_EXPIRY_CHUNK]:
            await self._send([(NODE_PREFIX + host_id.encode(), None) for host_id in gone])
            self._logger().info("forgot %d nodes gone for good: %s", len(gone), ", ".join(gone))


async def _behind(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    for tp, last in end.items():
        if await consumer.position(tp) < last:
            return True
    return False
