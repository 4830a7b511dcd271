"""A producer that stands in for aiokafka's behind `Publisher` (its `Producer` protocol)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


class FakeProducer:
    """A producer whose every send fails with ``error`` (or succeeds, without one)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.sent: list[bytes | None] = []
        self.learned: list[str] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

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
        if self.error is not None:
            future.set_exception(self.error)
        else:
            self.sent.append(value)
            future.set_result(None)
        return future
