"""Real python-socketio clients that record what they receive."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import socketio

from .waiting import wait_until


class Recorder:
    """An `AsyncClient` that keeps every event it receives, per event name, in order."""

    def __init__(self, url: str, namespaces: list[str] | None = None) -> None:
        self.url = url
        self.namespaces = namespaces or ["/"]
        self.client = socketio.AsyncClient(reconnection=False)
        self.received: dict[tuple[str, str], list[Any]] = defaultdict(list)
        self.call_replies: dict[str, Any] = {}
        self.client.on("*", self._record, namespace="*")

    async def _record(self, event: str, namespace: str, *args: Any) -> Any:
        self.received[(namespace, event)].append(args[0] if len(args) == 1 else list(args))
        return self.call_replies.get(event)

    async def connect(self) -> Recorder:
        # A plain python-socketio client opts out of the offset argument recovery appends.
        await self.client.connect(
            self.url,
            namespaces=self.namespaces,
            transports=["websocket"],
            auth={"recovery": False},
        )
        return self

    def sid(self, namespace: str = "/") -> str:
        sid = self.client.get_sid(namespace)
        assert sid is not None
        return str(sid)

    def events(self, event: str, namespace: str = "/") -> list[Any]:
        return self.received[(namespace, event)]

    async def ask(self, event: str, payload: Any, namespace: str = "/", timeout: float = 15) -> Any:
        return await self.client.call(event, payload, namespace=namespace, timeout=timeout)

    async def wait_for(
        self, event: str, count: int, namespace: str = "/", timeout: float = 15
    ) -> list[Any]:
        await wait_until(
            lambda: len(self.events(event, namespace)) >= count,
            timeout,
            f"{count} {event!r} events at {self.url} (got {len(self.events(event, namespace))})",
        )
        return self.events(event, namespace)

    async def close(self) -> None:
        await self.client.disconnect()
        await self.client.shutdown()


async def connect_all(recorders: list[Recorder]) -> list[Recorder]:
    return list(await asyncio.gather(*(r.connect() for r in recorders)))
