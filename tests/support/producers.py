"""A producer that stands in for aiokafka's behind `Publisher` (its `Producer` protocol)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import SimpleNamespace
from typing import Any

from aiokafka.errors import KafkaError


class FakeProducer:
    """A producer whose every send fails with ``error`` (or succeeds, without one), and
    with ``start_error`` raised by its start."""

    def __init__(
        self, error: Exception | None = None, start_error: Exception | None = None
    ) -> None:
        self.error = error
        self.start_error = start_error
        self.sent: list[bytes | None] = []
        self.learned: list[str] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.started = True
        # aiokafka's sender task, which `Publisher` watches: it ends when the producer stops.
        never = asyncio.get_running_loop().create_future()
        self._sender = SimpleNamespace(sender_task=never)

    async def stop(self) -> None:
        self.stopped = True
        if self.started:
            self._sender.sender_task.cancel()

    async def partitions_for(self, topic: str) -> set[int]:
        self.learned.append(topic)
        return {0}

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[Any]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._sender.sender_task.done():  # as aiokafka's accumulator, failed with it
            future.set_exception(KafkaError("Unexpected error during batch delivery"))
        elif self.error is not None:
            future.set_exception(self.error)
        else:
            self.sent.append(value)
            future.set_result(None)
        return future
