"""The gateway's configuration: one frozen object from flags and ``SOCKETIO_KAFKA_*`` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from socketio_kafka.adapter import KafkaOptions

__all__ = ["ADAPTERS", "ENV_PREFIX", "Adapter", "Settings", "env_default"]

ENV_PREFIX = "SOCKETIO_KAFKA_"
_KAFKA = KafkaOptions()

Adapter = Literal["kafka", "redis"]
ADAPTERS: tuple[Adapter, ...] = get_args(Adapter)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a gateway node needs to run; see the README's configuration table."""

    host: str = "127.0.0.1"
    port: int = 8000
    kafka: str | None = None
    # "redis": python-socketio's AsyncRedisManager instead of ours, for comparisons.
    adapter: Adapter = "kafka"
    redis_url: str | None = None
    channel: str = "socketio"
    partitions: int = 6
    kafka_timeout_ms: int = 15000
    # The latency/throughput trade, as the adapter's defaults unless set (measured in
    # benchmarks/RESULTS.md).
    linger_ms: int = _KAFKA.linger_ms
    fetch_interval_ms: float = _KAFKA.fetch_interval_ms
    cors_origins: str = "*"
    max_payload_bytes: int = 1_000_000
    ws_compression: bool = False
    extension: str | None = None
    recovery: bool = True
    recovery_window: float = 120.0
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")
        if self.adapter not in ADAPTERS:
            raise ValueError(f"adapter must be one of {', '.join(ADAPTERS)}, not {self.adapter!r}")
        if not self.channel:
            raise ValueError("channel must not be empty")
        if self.recovery_window <= 0:
            raise ValueError("recovery_window must be > 0")
        if self.kafka_timeout_ms < 100:
            raise ValueError("kafka_timeout_ms must be >= 100")
        self.kafka_options  # noqa: B018 (its checks, partitions too, before anything starts)
        if self.max_payload_bytes < 1024:
            raise ValueError("max_payload_bytes must be >= 1024")

    @property
    def kafka_options(self) -> KafkaOptions:
        """The Kafka clients' options; raises `ConfigError` (a ValueError) when out of range."""
        return KafkaOptions(
            partitions=self.partitions,
            request_timeout_ms=self.kafka_timeout_ms,
            linger_ms=self.linger_ms,
            fetch_interval_ms=self.fetch_interval_ms,
            # Whatever a client may send fits a record, binary parts base64-encoded included.
            max_record_bytes=self.max_payload_bytes * 4 // 3 + 64 * 1024,
        )

    @property
    def cors_allowed_origins(self) -> str | list[str]:
        return "*" if self.cors_origins == "*" else self.cors_origins.split(",")


def env_default(name: str, default: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """``SOCKETIO_KAFKA_<NAME>`` if set, else ``default``: flags override the environment."""
    return env.get(ENV_PREFIX + name.upper(), default)
