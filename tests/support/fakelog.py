"""One partition's records in a list, and shared replays reading it through a fake
consumer making the few calls a replay cursor makes (`tests/test_cursor.py`,
`tests/test_history.py`)."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

from aiokafka import TopicPartition

from socketio_kafka.adapter import codec, routing
from socketio_kafka.adapter.cursor import Replay, SharedReplays
from socketio_kafka.adapter.manager import ManagerStats
from socketio_kafka.adapter.replay import ConsumerPool


class Record(NamedTuple):
    offset: int
    headers: list[tuple[str, bytes]]
    value: bytes | None  # None: a tombstone


def emit(
    offset: int, room: str | list[str] | None, *, headers: bool = True, pad: int = 0
) -> Record:
    """An emit to ``room``: one, several, or (None) the whole namespace; ``pad`` characters
    of padding in its data."""
    data: dict[str, Any] = {"n": offset, "pad": "x" * pad} if pad else {"n": offset}
    message = codec.emit_message(
        "e", data, namespace="/", room=room, skip_sid=None, callback=None, host_id="h"
    )
    return Record(offset, routing.headers_for(message) if headers else [], codec.encode(message))


class FakeConsumer:
    """The few calls a cursor makes of an aiokafka consumer, over one partition's list.
    A fetch waits for a permit when ``permits`` is given: the test moves the cursor."""

    def __init__(self, log: list[Record], permits: asyncio.Semaphore | None) -> None:
        self.log = log
        self.permits = permits
        self.failure: Exception | None = None
        self._at = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def assign(self, tps: list[TopicPartition]) -> None:
        self._tps = tps

    def assignment(self) -> list[TopicPartition]:
        return self._tps

    def pause(self, *tps: TopicPartition) -> None:
        pass

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._at = offset

    async def position(self, tp: TopicPartition) -> int:
        return self._at

    async def getmany(self, tp: TopicPartition, timeout_ms: int, max_records: int) -> Any:
        if self.permits is not None:
            await self.permits.acquire()
        await asyncio.sleep(0)
        if self.failure is not None:
            raise self.failure
        records = [r for r in self.log if r.offset >= self._at][:max_records]
        if records:
            self._at = records[-1].offset + 1
        return {tp: records}


def hub(
    log: list[Record], permits: asyncio.Semaphore | None = None, **kwargs: Any
) -> tuple[SharedReplays, list[FakeConsumer]]:
    started: list[FakeConsumer] = []

    def new() -> Any:
        started.append(FakeConsumer(log, permits))
        return started[-1]

    return SharedReplays(ConsumerPool(new), "t.events", ManagerStats(), **kwargs), started


def open_replay(hub: SharedReplays, room: str, start: int, stop: int) -> Replay:
    return hub.open((start,), (stop,), routing.Audience.of("/", f"sid-{room}", [room]))


async def offsets(replay: Replay) -> list[int]:
    async with replay:
        return [offset async for found in replay for _, offset, _ in found]


def rooms(count: int, rooms: str, pad: int = 0) -> list[Record]:
    return [emit(n, rooms[n % len(rooms)], pad=pad) for n in range(count)]
