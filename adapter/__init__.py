"""A python-socketio client manager on Apache Kafka.

Example::

    import socketio
    from socketio_kafka.adapter import AsyncKafkaManager

    sio = socketio.AsyncServer(
        async_mode="asgi", client_manager=AsyncKafkaManager("kafka://localhost:9092")
    )
"""

from __future__ import annotations

from .errors import (
    BrokerUnavailable,
    ConfigError,
    PublishError,
    RecordDecodeError,
    SocketIOKafkaError,
    TopicLayoutError,
)
from .manager import AsyncKafkaManager, ManagerStats
from .options import KafkaOptions

__all__ = [
    "AsyncKafkaManager",
    "BrokerUnavailable",
    "ConfigError",
    "KafkaOptions",
    "ManagerStats",
    "PublishError",
    "RecordDecodeError",
    "SocketIOKafkaError",
    "TopicLayoutError",
]
