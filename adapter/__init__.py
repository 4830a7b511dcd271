"""A python-socketio client manager on Apache Kafka.

Example::

    import socketio
    from socketio_kafka.adapter import AsyncKafkaManager

    sio = socketio.AsyncServer(
        async_mode="asgi", client_manager=AsyncKafkaManager("kafka://localhost:9092")
    )
"""

from __future__ import annotations

from .client import AsyncRecoveringClient
from .errors import (
    BrokerUnavailable,
    ConfigError,
    PayloadError,
    PublishError,
    RecordDecodeError,
    ReplayGap,
    SecurityError,
    SocketIOKafkaError,
    TopicLayoutError,
)
from .manager import AsyncKafkaManager, ManagerStats
from .offsets import OffsetError
from .options import KafkaOptions
from .outbox import OutboxLimits
from .recovery import RecoveringAsyncServer, RecoveryOptions

__all__ = [
    "AsyncKafkaManager",
    "AsyncRecoveringClient",
    "BrokerUnavailable",
    "ConfigError",
    "KafkaOptions",
    "ManagerStats",
    "OffsetError",
    "OutboxLimits",
    "PayloadError",
    "PublishError",
    "RecordDecodeError",
    "RecoveringAsyncServer",
    "RecoveryOptions",
    "ReplayGap",
    "SecurityError",
    "SocketIOKafkaError",
    "TopicLayoutError",
]
