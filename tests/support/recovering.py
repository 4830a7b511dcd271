"""A python client doing the client side of recovery, with a transport it can drop."""

from __future__ import annotations

from typing import Any

from socketio_kafka.adapter import AsyncRecoveringClient

from .waiting import wait_until


class RecoveringRecorder:
    """Records every event (offset argument already taken off by the client)."""

    def __init__(self, auth: dict[str, Any] | None = None) -> None:
        self.auth = auth
        self.client = AsyncRecoveringClient(reconnection=False)
        self.received: list[tuple[str, Any]] = []
        self.client.on("*", self._record)

    async def _record(self, event: str, *args: Any) -> None:
        self.received.append((event, args[0] if len(args) == 1 else list(args)))

    async def connect(self, url: str) -> RecoveringRecorder:
        await self.client.connect(url, transports=["websocket"], auth=self.auth)
        return self

    @property
    def sid(self) -> str:
        return str(self.client.get_sid("/"))

    def events(self, event: str) -> list[Any]:
        return [args for name, args in self.received if name == event]

    async def drop_transport(self) -> None:
        """Lose the connection without saying goodbye, as a dead network would."""
        await self.client.eio.ws.close()
        # Until Engine.IO's client has closed its HTTP session: python-engineio 4.15 sets
        # it to None after awaiting the close, and a connect made meanwhile gets its new
        # session dropped unclosed (a ResourceWarning on Python 3.13).
        await wait_until(
            lambda: not self.client.connected and self.client.eio.http is None,
            15,
            "transport drop",
        )

    async def wait_count(self, event: str, count: int, timeout: float = 30) -> list[Any]:
        await wait_until(
            lambda: len(self.events(event)) >= count,
            timeout,
            f"{count} {event!r} events (got {len(self.events(event))})",
        )
        return self.events(event)

    async def close(self) -> None:
        if self.client.connected:
            await self.client.disconnect()
        await self.client.shutdown()
