"""Kafka settings for the manager: one validated, frozen object."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = ["KafkaOptions", "parse_kafka_urls"]

_DEFAULT_BOOTSTRAP = "localhost:9092"
_ACKS = ("all", 0, 1, -1)
_COMPRESSION = (None, "gzip", "snappy", "lz4", "zstd")
_MAX_FETCH_INTERVAL_MS = 1000


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """How the manager uses Kafka: topic layout, producer and consumer tuning, security.

    Example::

        options = KafkaOptions(partitions=12, linger_ms=2, compression_type="lz4")
        mgr = AsyncKafkaManager("kafka://broker:9092", options=options)

    ``producer_extra`` and ``consumer_extra`` pass any other aiokafka argument through.
    """

    partitions: int = 6
    # None: min(3, the brokers in the cluster) and, with 3 replicas or more, 2 in sync for a
    # write (docs/decisions.md). A value given here is a requirement: an existing topic with
    # fewer is refused at start; with the defaults it is a warning.
    replication_factor: int | None = None
    min_insync_replicas: int | None = None
    retention_ms: int = 24 * 3600 * 1000
    acks: str | int = "all"
    enable_idempotence: bool = True
    # Measured (benchmarks/RESULTS.md): every Kafka request costs the broker about as much
    # CPU as a whole batch of records, so the defaults trade a few ms for fewer requests.
    # A 2 ms linger batches publishes; an awaited emit waits for it, so a loop of awaited
    # emits runs at a few hundred a second (gather them, or set 0 for such a loop).
    linger_ms: int = 2
    max_batch_size: int = 16384
    compression_type: str | None = None
    request_timeout_ms: int = 15000
    # Fetches long-poll (an idle node costs the broker nothing) and answer at the first
    # record, but the manager asks at most once per ``fetch_interval_ms``: under load a
    # fetch carries what arrived meanwhile instead of a record or two. 0 disables pacing.
    # At most 1 s: nodes read each other's 1 s heartbeats through these fetches, and one
    # unheard of for 3 s counts as dead (its sessions claimable elsewhere while live).
    fetch_min_bytes: int = 1
    fetch_max_wait_ms: int = 500
    fetch_interval_ms: float = 5.0
    max_partition_fetch_bytes: int = 1024 * 1024
    max_record_bytes: int = 1024 * 1024
    client_id: str = "socketio-kafka"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_context: Any = None
    retry_backoff_max_s: float = 10.0
    producer_extra: Mapping[str, Any] = field(default_factory=dict)
    consumer_extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.partitions >= 1, "partitions must be >= 1")
        _require(
            self.replication_factor is None or self.replication_factor >= 1,
            "replication_factor must be >= 1",
        )
        _require(
            self.min_insync_replicas is None or self.min_insync_replicas >= 1,
            "min_insync_replicas must be >= 1",
        )
        factor, insync = self.replication_factor, self.min_insync_replicas
        _require(
            factor is None or insync is None or insync <= factor,
            "min_insync_replicas must not exceed replication_factor (no write could succeed)",
        )
        _require(self.retention_ms == -1 or self.retention_ms > 0, "retention_ms must be > 0 or -1")
        _require(self.acks in _ACKS, f"acks must be one of {_ACKS}")
        _require(self.compression_type in _COMPRESSION, f"compression_type not in {_COMPRESSION}")
        _require(self.linger_ms >= 0, "linger_ms must be >= 0")
        _require(
            0 <= self.fetch_interval_ms <= _MAX_FETCH_INTERVAL_MS,
            f"fetch_interval_ms must be between 0 and {_MAX_FETCH_INTERVAL_MS}",
        )
        _require(self.max_record_bytes > 0, "max_record_bytes must be > 0")
        _require(self.retry_backoff_max_s > 0, "retry_backoff_max_s must be > 0")
        _require(
            not (self.enable_idempotence and self.acks not in ("all", -1)),
            "an idempotent producer needs acks='all'",
        )

    def common_kwargs(self, bootstrap: list[str]) -> dict[str, Any]:
        """Arguments every aiokafka client of this manager shares."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.sasl_mechanism is not None:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_plain_username
            kwargs["sasl_plain_password"] = self.sasl_plain_password
        if self.ssl_context is not None:
            kwargs["ssl_context"] = self.ssl_context
        return kwargs

    def producer_kwargs(self, bootstrap: list[str]) -> dict[str, Any]:
        return {
            **self.common_kwargs(bootstrap),
            "acks": self.acks,
            "enable_idempotence": self.enable_idempotence,
            "linger_ms": self.linger_ms,
            "max_batch_size": self.max_batch_size,
            "compression_type": self.compression_type,
            "max_request_size": self.max_record_bytes + 64 * 1024,  # + batch headers
            **self.producer_extra,
        }

    def consumer_kwargs(self, bootstrap: list[str]) -> dict[str, Any]:
        return {
            **self.common_kwargs(bootstrap),
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "latest",
            "fetch_min_bytes": self.fetch_min_bytes,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
            **self.consumer_extra,
        }


def parse_kafka_urls(url: str | Iterable[str]) -> list[str]:
    """Turn ``kafka://host:port`` URLs (one, a comma list, or a list) into bootstrap servers.

    ``kafka://`` alone means ``localhost:9092``; a bare ``host:port`` is accepted too.
    """
    urls = [url] if isinstance(url, str) else list(url)
    servers: list[str] = []
    for item in urls:
        rest = item.strip()
        if "://" in rest:
            scheme, _, rest = rest.partition("://")
            _require(scheme == "kafka", f"unsupported URL scheme {scheme!r} in {item!r}")
        rest = rest.rstrip("/")
        for server in filter(None, (s.strip() for s in rest.split(","))):
            _require(_is_host_port(server), f"not a host:port in {item!r}: {server!r}")
            servers.append(server)
        if not rest:
            servers.append(_DEFAULT_BOOTSTRAP)
    _require(bool(servers), "no Kafka URL given")
    return servers


def _is_host_port(server: str) -> bool:
    host, sep, port = server.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
