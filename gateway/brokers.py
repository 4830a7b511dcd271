"""The other broker a node can run on: python-socketio's Redis pub/sub, for comparisons.

`RedisManager` is python-socketio's `AsyncRedisManager` with the lifecycle and readiness a
gateway node expects of its manager (the ones `AsyncKafkaManager` has), so the same app
serves on either::

    manager = RedisManager("redis://127.0.0.1:6379/0", channel="chat")
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)
    await manager.start()  # returns once Redis has confirmed the subscription
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import socketio

from .errors import GatewayError

__all__ = ["RedisManager"]

_PROBE_TIMEOUT_S = 2.0
# python-socketio imports the redis package there if it is installed (None otherwise).
_socketio_redis: Any = socketio.async_redis_manager


class RedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]  # python-socketio is untyped
    """`AsyncRedisManager` that a node can start, stop and probe.

    Ready once Redis has confirmed the listener's SUBSCRIBE, and while that connection is
    up: an event published before then would not reach this node.
    """

    # Set by python-socketio once connected: redis.asyncio's client and its pub/sub.
    redis: Any
    pubsub: Any

    def __init__(self, url: str, channel: str, logger: logging.Logger | None = None) -> None:
        if _socketio_redis.aioredis is None:
            raise GatewayError("a node on Redis needs the redis package: pip install redis")
        super().__init__(url, channel=channel, logger=logger)
        self._initialized = False
        self._subscribed = asyncio.Event()
        self._confirmed: Any = None  # the pub/sub whose subscription Redis confirmed

    @property
    def ready(self) -> bool:
        connection = getattr(self._confirmed, "connection", None)
        return connection is not None and bool(connection.is_connected)

    def initialize(self) -> None:
        # Both start() and the server's first connection call this: one listener only.
        if not self._initialized:
            self._initialized = True
            super().initialize()

    async def start(self) -> None:
        """Start listening; returns once the subscription is confirmed. Safe to call twice."""
        self.initialize()
        await self._subscribed.wait()

    async def stop(self) -> None:
        """Stop listening and close the connections. Safe to call twice."""
        listener = getattr(self, "thread", None)
        self.thread = None
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        self._confirmed = None
        for client in (self.pubsub, self.redis):
            if client is not None:
                await client.aclose()
        self.pubsub = self.redis = None
        self.connected = False

    async def broker_reachable(self) -> bool:
        """Whether Redis answers a PING within 2 s: for readiness probes."""
        if self.redis is None:
            return False
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                return bool(await self.redis.ping())
        except (OSError, TimeoutError, _socketio_redis.RedisError):
            return False

    def _redis_connect(self) -> None:
        super()._redis_connect()
        # Let SUBSCRIBE's confirmation through to us; `_listen` drops it after.
        self.pubsub.ignore_subscribe_messages = False

    async def _redis_listen_with_retries(self) -> AsyncIterator[dict[str, Any]]:
        async for message in super()._redis_listen_with_retries():
            if message["type"] == "subscribe":
                self._confirmed = self.pubsub
                self._subscribed.set()
            yield message
