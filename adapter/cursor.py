"""Shared replays: one read of a partition serves every session recovering from it.

When a node dies, its clients reconnect to the survivors within seconds, each with a
range of the events topic to replay that overlaps the others'. Read one by one, the
topic is read (and its records sorted by header, or decoded) once per client: 200
clients took 150 times one client's replay. Here each partition has at most one
`_Cursor` per node at a time. A pass of it starts at the earliest offset any waiting
session needs and reads on until every session that joined it has its range; each
record read is checked once against the union of the joined sessions' rooms (by its
headers), decoded at most once, and put in the buffer of every joined session whose
range holds it and whose `Audience` wants it.

A session that arrives during a pass joins it: if its range starts at or after the
cursor's position, at once (records before its start are not offered to it); if it
starts earlier, the cursor reads back to its start before its next fetch, and the
sessions already in the pass take nothing until it is past their own positions again. A
mass reconnect arrives over a second or two with nearly the same start: each arrival
costs a read back over what the pass has read so far, never a pass of its own (200
clients made about 9 passes over the gap per node when late ones waited for the next).

What a pass reads stays behind it for a while, in a `Window` per partition: the records
any replay could want (emits, not acks), indexed by namespace and room. A session whose
range starts inside it takes its records from there, by index, without reading the
partition again, and joins the cursor where the window ends. A mass reconnect arrives over
seconds, and its sessions start at nearly the same offsets: read back for each arrival,
500 clients read the gap ~15 times per node. Windows hold at most ``WINDOW_BYTES`` of
record values node-wide and are dropped ``WINDOW_LINGER_S`` after their cursor ends.

Before any of this, the node's live history (`adapter/history.py`) serves what it holds:
a session whose range it covers never reaches a cursor, and one whose range starts before
it leaves its cursor where the history begins, or goes on from a window to the history
(a pass's last fetch reads past where the history begins: the stragglers of a mass
reconnect each made a pass of its own there, reading Kafka again).

Memory is bounded node-wide: cursors fetch only while fewer than ``limit`` found records
wait in sessions' buffers. A session whose buffer holds a batch when its cursor is about
to fetch again has not drained (its client is slow): it leaves the pass, and joins again
where it stopped once it has taken what it holds, so it neither holds back the others
nor misses a record. Its client is paced as before: the recovering server takes a
session's records only while the socket's outbox is below its low-water mark.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from . import codec, routing
from .errors import BrokerUnavailable, RecordDecodeError, ReplayGap
from .history import LiveHistory
from .replay import ConsumerPool
from .sightings import Sightings
from .skips import UNREADABLE
from .window import Window

__all__ = [
    "BATCH_BYTES",
    "REPLAY_BUFFER",
    "REPLAY_BUFFER_BYTES",
    "WINDOW_BYTES",
    "WINDOW_LINGER_S",
    "Found",
    "Replay",
    "ReplayStats",
    "SharedReplays",
]

#: Found records waiting in recovering sessions' buffers, node-wide, before cursors pause.
REPLAY_BUFFER = 10_000
#: And their bytes (as written in Kafka), the bound that holds when records are large.
REPLAY_BUFFER_BYTES = 32 * 1024 * 1024
#: The bytes of found records one session takes at a time, beside the batch's count.
BATCH_BYTES = 1024 * 1024
#: Bytes of record values (and their decoded copies) windows keep, node-wide.
WINDOW_BYTES = 64 * 1024 * 1024
#: How long a partition's window outlives its cursor: the stragglers of a mass reconnect.
WINDOW_LINGER_S = 15.0

#: Joined readers by `routing.room_key` (a key's collision only makes a reader a candidate:
#: its audience still decides).
_Index = dict[int, list["_Reader"]]

#: A record found for a session: ``(partition, offset, message)``.
Found = tuple[int, int, codec.Message]


class ReplayStats(Protocol):
    """The counters a node keeps of its replays (`ManagerStats`)."""

    replay_records_read: int
    replay_records_decoded: int
    replay_records_reused: int
    replay_passes: int
    replay_partitions_skipped: int
    replay_records_spared: int


class _Reader:
    """One session's range of one partition: ``next`` is the first offset it still needs."""

    __slots__ = ("next", "parked", "partition", "replay", "stop")

    def __init__(self, replay: Replay, partition: int, start: int, stop: int) -> None:
        self.replay = replay
        self.partition = partition
        self.next = start
        self.stop = stop
        #: Left a pass for being slow: it waits for the next pass rather than hold the
        #: others back with a read back to it.
        self.parked = False


class Replay:
    """One session's replay: an async iterator of lists of `Found` records, each list in
    offset order per partition (per-room order: a room lives on one partition), until
    every partition of its range is read. Use it with ``async with`` so that an early exit
    (the socket gone, a timeout) leaves its cursors at once."""

    def __init__(
        self,
        hub: SharedReplays,
        audience: routing.Audience,
        start: Sequence[int],
        stop: Sequence[int],
    ) -> None:
        self.audience = audience
        self._hub = hub
        self._found: list[Found] = []
        self._found_bytes = 0
        self._open: set[_Reader] = set()
        self._parked: list[_Reader] = []
        self._error: BaseException | None = None
        self._wake = asyncio.Event()
        keyed = audience.by_partition(len(start))
        sightings = hub.sightings
        for partition, (first, last) in enumerate(zip(start, stop, strict=True)):
            rooms = keyed.get(partition)
            if first >= last or rooms is None:
                continue
            if sightings is not None:
                end = sightings.bound(partition, first, last, audience.namespace, rooms)
                if end <= first:  # nothing of its rooms written there meanwhile
                    hub.stats.replay_partitions_skipped += 1
                    continue
                # Past the last record of its rooms there, nothing to read.
                hub.stats.replay_records_spared += last - end
                last = end
            self._open.add(_Reader(self, partition, first, last))

    async def __aenter__(self) -> Replay:
        for reader in list(self._open):  # a reader served whole from a window is done
            self._hub.join(reader)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> Replay:
        return self

    async def __anext__(self) -> list[Found]:
        while not self._found:
            if self._error is not None:
                raise self._error
            # Taken all it held: what left a pass for being slow joins again.
            parked, self._parked = self._parked, []
            for reader in parked:
                self._hub.join(reader)  # a window may serve it at once, or the hub fail it
            if self._found or self._error is not None:
                continue
            if not self._open:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        found, self._found = self._found, []
        self._hub.taken(len(found), self._found_bytes)
        self._found_bytes = 0
        return found

    def close(self) -> None:
        """Leave every cursor and free the buffer (safe twice)."""
        for reader in self._open:
            self._hub.leave(reader)
        self._open.clear()
        self._parked.clear()
        self._hub.taken(len(self._found), self._found_bytes)
        self._found = []
        self._found_bytes = 0

    @property
    def held(self) -> int:
        return len(self._found)

    @property
    def held_bytes(self) -> int:
        return self._found_bytes

    def put(self, found: Found, size: int) -> None:
        """Buffer a record found for this session; ``size``: its value's bytes."""
        self._found.append(found)
        self._found_bytes += size
        self._wake.set()

    def done(self, reader: _Reader) -> None:
        self._open.discard(reader)
        self._wake.set()

    def park(self, reader: _Reader) -> None:
        reader.parked = True
        self.later(reader)

    def later(self, reader: _Reader) -> None:
        """Join ``reader`` again once what is buffered is taken."""
        self._parked.append(reader)
        self._wake.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._wake.set()


class SharedReplays:
    """A node's replay cursors, one per partition while sessions read it.

    ``batch``: records read per fetch; ``limit``: found records buffered node-wide.
    """

    def __init__(
        self,
        pool: ConsumerPool,
        topic: str,
        stats: ReplayStats,
        batch: int = 500,
        limit: int = REPLAY_BUFFER,
        limit_bytes: int = REPLAY_BUFFER_BYTES,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self.pool = pool
        self.topic = topic
        self.stats = stats
        self.batch = batch
        #: A session's batch ends at ``batch`` found records or at this many bytes of them.
        self.batch_bytes = batch_bytes
        self.limit = limit
        self.limit_bytes = limit_bytes
        #: What the node's live consumer saw where: ranges a replay need not read.
        self.sightings: Sightings | None = None
        #: What it read lately: ranges a replay takes from memory.
        self.history: LiveHistory | None = None
        self._cursors: dict[int, _Cursor] = {}
        self._windows: dict[int, Window] = {}
        #: When a partition's window, extended by no cursor now, goes.
        self._expiries: dict[int, asyncio.TimerHandle] = {}
        self._buffered = 0
        self._buffered_bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        #: Closed with its manager: sessions fail, parked ones too, until `reopen`.
        self._closed = False

    def open(self, start: Sequence[int], stop: Sequence[int], audience: routing.Audience) -> Replay:
        """What ``audience`` receives in ``[start, stop)`` of the topic, read back."""
        return Replay(self, audience, start, stop)

    def join(self, reader: _Reader) -> None:
        if self._closed:
            reader.replay.fail(BrokerUnavailable("the node's replays are stopping"))
            return
        history = self.history
        if history is not None and not self._serve_history(history, reader):
            return
        window = self._windows.get(reader.partition)
        if window is not None and window.lo <= reader.next < window.hi:
            caught_up = self._serve(window, reader)
            if reader.partition not in self._cursors:
                self._linger(reader.partition, window)
            if not caught_up:
                return
            # A pass's window reaches into what the history holds (its last fetch went
            # past it): the rest from memory, not a pass that reads it again.
            if history is not None and not self._serve_history(history, reader):
                return
        cursor = self._cursors.get(reader.partition)
        if cursor is None:
            cursor = self._cursors[reader.partition] = _Cursor(self, reader.partition)
        cursor.add(reader)

    def _serve_history(self, history: LiveHistory, reader: _Reader) -> bool:
        """Offer ``reader`` what the live history holds of its range (`_serve`); True when
        it needs what the history does not hold."""
        windows = history.since(reader.partition, reader.next)
        if windows is None:
            return True
        return all(self._serve(window, reader) for window in windows)

    def _serve(self, window: Window, reader: _Reader) -> bool:
        """Offer ``reader`` what ``window`` holds of its range, up to a batch of found
        records in its session's buffer (what it holds already counts: the history's
        windows are served one after another, and a session once took its whole share
        of them, 64,000 records in one step of the event loop); True when it has all of
        that and needs what lies past the window."""
        replay = reader.replay
        audience = replay.audience
        last = min(reader.stop, window.hi)
        resume = last
        # Most windows hold nothing of one session: passed over without a look inside (a
        # mass reconnect's sessions each read tens of the history's windows).
        if window.may_hold(audience.room_keys):
            found = taken = size = 0
            for at in window.candidates(audience, reader.next, last):
                offset = window.offsets[at]
                if replay.held >= self.batch or replay.held_bytes >= self.batch_bytes:
                    resume = offset
                    break
                taken += 1
                message = window.message(at, self.stats)
                if message is not None and audience.wants(message):
                    value_size = window.value_size(at)
                    replay.put((reader.partition, offset, message), value_size)
                    found += 1
                    size += value_size
            self.stats.replay_records_reused += taken
            self.buffered(found, size)
        window.report()
        if self._windows.get(reader.partition) is window and self.window_bytes > WINDOW_BYTES:
            # A pass's window stops growing at the bound, but what sessions decode from it
            # does not (stragglers of other rooms took it to 6 times the bound): decoded
            # again by the next session that takes them. (The history bounds its own.)
            window.forget_decoded()
        reader.next = resume
        if reader.next >= reader.stop:
            replay.done(reader)
            return False
        if reader.next < window.hi:
            replay.later(reader)  # the rest once this batch is taken
            return False
        return True

    def window_at(self, partition: int, position: int) -> Window:
        """The window a pass reading from ``position`` extends: the partition's, if the
        pass starts within it or where it ends; else a new one (the old one dropped)."""
        window = self._windows.get(partition)
        if window is not None and window.lo <= position <= window.hi:
            self._keep(partition)
            return window
        if window is not None:
            self._drop(partition, window)
        window = self._windows[partition] = Window(position)
        return window

    @property
    def window_bytes(self) -> int:
        """What the windows hold now (``WINDOW_BYTES`` bounds their growth)."""
        return sum(window.size for window in self._windows.values())

    def _linger(self, partition: int, window: Window) -> None:
        """Keep ``partition``'s window, ``window``, ``WINDOW_LINGER_S`` more."""
        self._keep(partition)
        loop = asyncio.get_running_loop()
        self._expiries[partition] = loop.call_later(WINDOW_LINGER_S, self._drop, partition, window)

    def _keep(self, partition: int) -> None:
        expiry = self._expiries.pop(partition, None)
        if expiry is not None:
            expiry.cancel()

    def _drop(self, partition: int, window: Window) -> None:
        if self._windows.get(partition) is window:
            self._keep(partition)
            del self._windows[partition]

    def leave(self, reader: _Reader) -> None:
        cursor = self._cursors.get(reader.partition)
        if cursor is not None:
            cursor.remove(reader)

    @property
    def held(self) -> int:
        """Found records waiting in sessions' buffers now."""
        return self._buffered

    @property
    def held_bytes(self) -> int:
        """Their bytes."""
        return self._buffered_bytes

    def buffered(self, count: int, size: int) -> None:
        self._buffered += count
        self._buffered_bytes += size
        if self._buffered >= self.limit or self._buffered_bytes >= self.limit_bytes:
            self._room.clear()

    def taken(self, count: int, size: int) -> None:
        self._buffered -= count
        self._buffered_bytes -= size
        if self._buffered < self.limit and self._buffered_bytes < self.limit_bytes:
            self._room.set()

    @property
    def stalled(self) -> bool:
        """Whether cursors wait for sessions to take what they found (`room`)."""
        return not self._room.is_set()

    async def room(self) -> None:
        """Wait until the buffers hold fewer than ``limit`` found records, and fewer than
        ``limit_bytes`` of them."""
        await self._room.wait()

    def ended(self, cursor: _Cursor) -> None:
        if self._cursors.get(cursor.partition) is cursor:
            del self._cursors[cursor.partition]
            window = self._windows.get(cursor.partition)
            if window is not None:
                self._linger(cursor.partition, window)

    async def close(self) -> None:
        """Stop every cursor (their sessions fail) and drop the windows. Every cursor is
        told before any is awaited (each stops a consumer: network I/O): a session closed
        meanwhile once found its cursor forgotten and others kept filling its buffer, and
        one that came meanwhile started a cursor nothing stopped. Those fail now, as does
        a slow one parked outside any cursor when it asks to join again (it started a
        cursor and a consumer after its manager had stopped)."""
        self._closed = True
        for partition, window in list(self._windows.items()):
            self._drop(partition, window)
        cursors = list(self._cursors.values())
        for cursor in cursors:
            cursor.stop()
        for cursor in cursors:
            await cursor.stopped()

    def reopen(self) -> None:
        """Replay again: the manager started again."""
        self._closed = False


class _Cursor:
    """One partition's reader for every session replaying it (module docstring)."""

    def __init__(self, hub: SharedReplays, partition: int) -> None:
        self.hub = hub
        self.partition = partition
        self.readers: set[_Reader] = set()
        #: The readers of the pass under way, and its position (None between passes).
        self.joined: set[_Reader] = set()
        self.position: int | None = None
        #: Readers that came during the pass needing what it has read: it reads back.
        self.behind: set[_Reader] = set()
        self._index: _Index | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(self._finished)

    def add(self, reader: _Reader) -> None:
        self.readers.add(reader)
        if self.position is None:
            return  # the next pass takes it
        if reader.next >= self.position:
            self.joined.add(reader)
            self._index = None
        elif not reader.parked:
            # Not offered anything until the pass has read back to its start: records
            # it would be offered now lie past what it still needs.
            self.behind.add(reader)

    def remove(self, reader: _Reader) -> None:
        self.readers.discard(reader)
        self.behind.discard(reader)
        if reader in self.joined:
            self.joined.discard(reader)
            self._index = None

    def stop(self) -> None:
        """Cancel its task: it offers nothing more from here on."""
        self._task.cancel()

    async def stopped(self) -> None:
        """Wait until its task, stopped, has ended (its consumer returned)."""
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        async with self.hub.pool.consumer() as consumer:
            tp = TopicPartition(self.hub.topic, self.partition)
            consumer.assign([tp])
            while self.readers:
                await self._pass(consumer, tp)
            # No await since `readers` was seen empty: a session that comes now starts
            # a new cursor, not one that is leaving.
            self.hub.ended(self)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.hub.ended(self)
        error: BaseException | None
        if task.cancelled():
            error = BrokerUnavailable("the replay's reader was stopped")
        else:
            error = task.exception()
        if error is not None:
            for reader in self.readers:
                reader.replay.fail(error)

    async def _pass(self, consumer: Any, tp: TopicPartition) -> None:
        self.joined = set(self.readers)
        self.behind.clear()
        self._index = None
        position = min(reader.next for reader in self.joined)
        self.hub.stats.replay_passes += 1
        consumer.seek(tp, position)
        self.position = position
        window = self.hub.window_at(self.partition, position)
        try:
            step = self.hub.batch
            while True:
                await self.hub.room()
                self._park_the_slow()
                if self.behind:
                    back = min(r.next for r in self.behind)
                    self.joined |= self.behind
                    self.behind.clear()
                    self._index = None
                    if back < position:
                        consumer.seek(tp, back)
                        position = self.position = back
                        window = self.hub.window_at(self.partition, back)
                needed = [r.next for r in self.joined]
                if not needed:
                    return
                if (target := min(needed)) > position:
                    consumer.seek(tp, target)  # nobody joined needs what lies between
                    position = self.position = target
                try:
                    fetched = await consumer.getmany(tp, timeout_ms=1000, max_records=step)
                except OffsetOutOfRangeError:
                    # Retention deleted records since the ranges were judged whole.
                    position = self.position = await self._past_the_deleted(consumer, tp)
                    continue
                except UNREADABLE:
                    # As the live loop: read again one at a time, past the refused record.
                    if step == 1:
                        position = self.position = position + 1
                    consumer.seek(tp, position)
                    step = 1
                    continue
                step = self.hub.batch
                records = fetched.get(tp, ())
                # Kept only where the window ends (a skip forward leaves a hole) and while
                # the windows are within their bound.
                grow = window.hi >= position and self.hub.window_bytes < WINDOW_BYTES
                self._offer(records, window if grow else None)
                if records:
                    # Before the next await: a session joining now must not need what
                    # was just offered.
                    position = self.position = max(position, records[-1].offset + 1)
                    if grow:
                        window.hi = max(window.hi, position)
                # Past control records and compacted gaps, where nothing is to be found.
                position = self.position = await consumer.position(tp)
                if grow:
                    window.hi = max(window.hi, position)
                self._advance(position)
                # A fetch of records already buffered returns without suspending: the live
                # loop (and the claims it reads back) gets its turn between batches.
                await asyncio.sleep(0)
        finally:
            self.position = None

    async def _past_the_deleted(self, consumer: Any, tp: TopicPartition) -> int:
        """Fail the replays that needed what Kafka deleted; where the others go on."""
        beginning: int = (await consumer.beginning_offsets([tp]))[tp]
        if beginning <= (self.position or 0):
            # Out of range past the end: the log was truncated under every reader.
            raise ReplayGap(f"partition {self.partition} was truncated under its replays")
        for reader in [r for r in self.readers if r.next < beginning]:
            self.remove(reader)
            reader.replay.fail(
                ReplayGap(
                    f"partition {self.partition}: offsets {reader.next} to {beginning - 1} "
                    "were deleted by retention while the replay read"
                )
            )
        consumer.seek(tp, beginning)
        return beginning

    def _park_the_slow(self) -> None:
        hub = self.hub
        for reader in [
            r
            for r in self.joined
            if r.replay.held >= hub.batch or r.replay.held_bytes >= hub.batch_bytes
        ]:
            self.remove(reader)
            reader.replay.park(reader)

    def _advance(self, position: int) -> None:
        history = self.hub.history
        held = None if history is None else history.held_from(self.partition)
        for reader in list(self.joined):
            if reader.next < position:
                reader.next = min(position, reader.stop)
            if reader.next >= reader.stop:
                self.remove(reader)
                reader.replay.done(reader)
            elif held is not None and reader.next >= held:
                self.remove(reader)
                self.hub.join(reader)  # the rest from memory

    def _offer(self, records: Sequence[Any], window: Window | None) -> None:
        """Put each record in the buffers of the joined sessions that receive it, and in
        ``window`` (when given) what it does not hold yet."""
        index = self._rooms()
        partition = self.partition
        stats = self.hub.stats
        read = decoded = found = size = 0
        last = max((r.stop for r in self.joined), default=0)
        for record in records:
            offset = record.offset
            read += 1
            try:
                route = routing.replay_route(record.headers)
            except RecordDecodeError:
                continue  # counted when the live consumer met it
            kept = None
            if window is not None and offset >= window.hi:
                kept = window.add(record, route)
            if offset >= last:
                continue
            if route is None:
                candidates = list(self.joined)  # no headers: decoded, then each asked
            elif route.method != "emit" or route.ack:
                continue
            else:
                candidates = self._by_route(index, route)
            readers = [r for r in candidates if r.next <= offset < r.stop]
            if not readers:
                continue
            if kept is not None and window is not None:
                message = window.message(kept, stats)
            else:
                try:
                    message = codec.decode(record.value)
                except RecordDecodeError:
                    message = None
                else:
                    decoded += 1
            if message is None:
                continue  # counted when the live consumer met it
            value_size = len(record.value or b"")
            for reader in readers:
                if reader.replay.audience.wants(message):
                    reader.replay.put((partition, offset, message), value_size)
                    found += 1
                    size += value_size
        stats.replay_records_read += read
        stats.replay_records_decoded += decoded
        self.hub.buffered(found, size)

    def _rooms(self) -> _Index:
        """The joined readers by the room key of their namespace's broadcasts and of each
        of their rooms (a sid is among its rooms)."""
        if self._index is None:
            self._index = {}
            for reader in self.joined:
                for key in reader.replay.audience.room_keys:
                    self._index.setdefault(key, []).append(reader)
        return self._index

    @staticmethod
    def _by_route(index: _Index, route: routing.Route) -> list[_Reader]:
        if len(route.rooms) < 2:  # its key is its one room's, or its namespace's
            return index.get(route.key, [])
        seen: dict[_Reader, None] = {}
        for room in route.rooms:
            seen.update(dict.fromkeys(index.get(routing.room_key(route.namespace, room), [])))
        return list(seen)
