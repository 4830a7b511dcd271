"""Kafka settings for the manager: one validated, frozen object."""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.helpers import create_ssl_context

from .errors import ConfigError
from .routing import partitioner

__all__ = ["SASL_MECHANISMS", "SECURITY_PROTOCOLS", "KafkaOptions", "parse_kafka_urls"]

_DEFAULT_BOOTSTRAP = "localhost:9092"
_ACKS = ("all", 0, 1, -1)
_COMPRESSION = (None, "gzip", "snappy", "lz4", "zstd")
_MAX_FETCH_INTERVAL_MS = 1000
#: What a record batch adds to its records: headers, and a record over the batch limit.
_BATCH_OVERHEAD_BYTES = 64 * 1024
#: A busy node's waits, by default, against an idle one's (`adapter/pacing.py`): fetches
#: 4x (20 ms at the default 5; 8x, 40 ms, until session 28: longer held deliveries back and
#: took no more of them at saturation once a room's batches were no longer capped).
_BUSY_LINGER_FACTOR = 8
_BUSY_FETCH_FACTOR = 4
#: A busy node's linger, by default, at least: an idle node's is 0.
_BUSY_LINGER_MS = 16.0
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """How the manager uses Kafka: topic layout, producer and consumer tuning, security.

    Example::

        options = KafkaOptions(partitions=12, linger_max_ms=20, compression_type="lz4")
        mgr = AsyncKafkaManager("kafka://broker:9092", options=options)

    ``producer_extra`` and ``consumer_extra`` pass any other aiokafka argument through.
    """

    partitions: int = 6
    # Of a new `<channel>.sessions` topic (recovery); an existing one is read as it is. Every
    # node reads all of it in the same fetches as the events: each partition costs every
    # fetch of every node, whatever it carries (a bare consumer: about 5-10 µs a partition a
    # fetch here, docs/decisions.md), and a pid's records share one partition at any count.
    sessions_partitions: int = 1
    # None: min(3, the brokers in the cluster) and, with 3 replicas or more, 2 in sync for a
    # write (docs/decisions.md). A value given here is a requirement: an existing topic with
    # fewer is refused at start; with the defaults it is a warning.
    replication_factor: int | None = None
    min_insync_replicas: int | None = None
    retention_ms: int = 24 * 3600 * 1000
    acks: str | int = "all"
    enable_idempotence: bool = True
    # Measured (benchmarks/RESULTS.md): every Kafka request costs the broker about as much
    # CPU as a whole batch of records, so a busy node trades a few ms for fewer requests.
    # An idle node's publishes do not linger (session 16: p50 at 100 events/s about 2 ms,
    # against 4.1-4.7 with the 2 ms linger before); a busy node's linger widens up to
    # ``linger_max_ms``.
    linger_ms: int = 0
    # A busy node waits longer, up to these (`adapter/pacing.py`): the same cores then take
    # more events. None: 8x the linger above (at least 16 ms) and 4x the fetch interval
    # below (at most 1 s); the values above keep the waits fixed.
    linger_max_ms: float | None = None
    # The most a request carries for one partition. aiokafka keeps one produce request in
    # flight per broker, one batch a partition in it, and a room's events share a partition:
    # a busy room's events go at most this much per round trip. At aiokafka's 16 KiB a room
    # stalled near 5,500 events/s of 430-byte records, 85% of requests full (session 28:
    # 256 KiB took 30-35% more deliveries per second at saturation). Batches are this large
    # only under load; at most ``max_record_bytes``, which the topics accept.
    max_batch_size: int = 256 * 1024
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
    fetch_interval_max_ms: float | None = None
    max_partition_fetch_bytes: int = 1024 * 1024
    max_record_bytes: int = 1024 * 1024
    # With recovery: the latest records the live consumer read, kept for replays of short
    # drops (adapter/history.py). 0: every replay reads Kafka.
    replay_history_bytes: int = 32 * 1024 * 1024
    client_id: str = "socketio-kafka"
    # Security: SASL needs a mechanism, a username and a password; TLS trusts ``ssl_cafile``
    # (else the system's CAs) and may present a client certificate. An ``ssl_context`` made
    # in code wins over the files. Passwords stay out of ``repr``, hence out of logs.
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = None
    retry_backoff_max_s: float = 10.0
    producer_extra: Mapping[str, Any] = field(default_factory=dict)
    consumer_extra: Mapping[str, Any] = field(default_factory=dict)
    # Built once from the files, so that a bad file is a ConfigError here, not at connect.
    _tls: ssl.SSLContext | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require(self.partitions >= 1, "partitions must be >= 1")
        # Kafka's requests carry it as an int32: past that aiokafka's sender died at once.
        _require(
            0 < self.request_timeout_ms <= 2**31 - 1,
            "request_timeout_ms must be > 0 and at most 2147483647",
        )
        _require(self.sessions_partitions >= 1, "sessions_partitions must be >= 1")
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
        _require(self.replay_history_bytes >= 0, "replay_history_bytes must be >= 0")
        _require(self.retention_ms == -1 or self.retention_ms > 0, "retention_ms must be > 0 or -1")
        _require(self.acks in _ACKS, f"acks must be one of {_ACKS}")
        _require(self.compression_type in _COMPRESSION, f"compression_type not in {_COMPRESSION}")
        _require(self.linger_ms >= 0, "linger_ms must be >= 0")
        _require(self.max_linger_ms >= self.linger_ms, "linger_max_ms must be >= linger_ms")
        _require(
            0 <= self.fetch_interval_ms <= _MAX_FETCH_INTERVAL_MS,
            f"fetch_interval_ms must be between 0 and {_MAX_FETCH_INTERVAL_MS}",
        )
        _require(
            self.fetch_interval_ms <= self.max_fetch_interval_ms <= _MAX_FETCH_INTERVAL_MS,
            f"fetch_interval_max_ms must be between fetch_interval_ms and {_MAX_FETCH_INTERVAL_MS}",
        )
        _require(self.max_record_bytes > 0, "max_record_bytes must be > 0")
        _require(self.max_batch_size > 0, "max_batch_size must be > 0")
        _require(self.retry_backoff_max_s > 0, "retry_backoff_max_s must be > 0")
        _require(
            not (self.enable_idempotence and self.acks not in ("all", -1)),
            "an idempotent producer needs acks='all'",
        )
        self._check_sasl()
        object.__setattr__(self, "_tls", self._tls_context())

    @property
    def max_linger_ms(self) -> float:
        """How long a busy node's publishes may wait to share a request."""
        if self.linger_max_ms is not None:
            return self.linger_max_ms
        return max(self.linger_ms * _BUSY_LINGER_FACTOR, _BUSY_LINGER_MS)

    @property
    def max_fetch_interval_ms(self) -> float:
        """How long a busy node may wait between two fetches."""
        if self.fetch_interval_max_ms is not None:
            return self.fetch_interval_max_ms
        return min(self.fetch_interval_ms * _BUSY_FETCH_FACTOR, _MAX_FETCH_INTERVAL_MS)

    @property
    def max_message_bytes(self) -> int:
        """The largest batch the manager's topics take, and its producer sends: a record of
        ``max_record_bytes`` with a batch's headers (batches lingering to
        ``max_batch_size`` stay under it)."""
        return self.max_record_bytes + _BATCH_OVERHEAD_BYTES

    @property
    def sasl(self) -> bool:
        """Whether this client authenticates with SASL."""
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        """Whether this client speaks TLS."""
        return self.security_protocol.endswith("SSL")

    def _check_sasl(self) -> None:
        """A known protocol; with SASL, all it needs; without, no SASL setting at all."""
        protocol = self.security_protocol
        _require(
            protocol in SECURITY_PROTOCOLS,
            f"security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, not {protocol!r}",
        )
        if not self.sasl:
            _refuse_unused(self, ("sasl_mechanism", "sasl_username", "sasl_password"), "SASL")
            return
        _require(
            self.sasl_mechanism in SASL_MECHANISMS,
            f"{protocol} needs sasl_mechanism, one of {', '.join(SASL_MECHANISMS)}"
            f" (not {self.sasl_mechanism!r})",
        )
        _require(bool(self.sasl_username), f"{protocol} needs sasl_username")
        _require(bool(self.sasl_password), f"{protocol} needs sasl_password")

    def _tls_context(self) -> ssl.SSLContext | None:
        files = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password")
        if not self.tls:
            _refuse_unused(self, (*files, "ssl_context"), "TLS")
            return None
        if self.ssl_context is not None:
            return self.ssl_context
        _require(
            self.ssl_certfile is not None or self.ssl_keyfile is None,
            "ssl_keyfile needs ssl_certfile (the client certificate it goes with)",
        )
        _require(
            self.ssl_certfile is not None or self.ssl_password is None,
            "ssl_password (the client key's password) needs ssl_certfile",
        )
        given = {name: path for name in files[:3] if (path := getattr(self, name)) is not None}
        for name, path in given.items():
            _require_readable(name, path)
        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=self.ssl_cafile,
                certfile=self.ssl_certfile,
                keyfile=self.ssl_keyfile,
                # Without one, OpenSSL asks a terminal for an encrypted key's pass phrase
                # (a node hung at start) or, with none, failed as "Invalid argument".
                password=self.ssl_password if self.ssl_password is not None else _no_password,
            )
        except _EncryptedKey:
            name = "ssl_keyfile" if self.ssl_keyfile is not None else "ssl_certfile"
            raise ConfigError(
                f"{name} {given[name]!r} is encrypted: give ssl_password"
                " (--kafka-key-password-file)"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            named = ", ".join(f"{name}={path!r}" for name, path in given.items())
            raise ConfigError(f"cannot load TLS files ({named}): {exc}") from None
        return context

    def common_kwargs(self, bootstrap: list[str]) -> dict[str, Any]:
        """Arguments every aiokafka client of this manager shares."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.sasl:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        if self._tls is not None:
            kwargs["ssl_context"] = self._tls
        return kwargs

    def producer_kwargs(self, bootstrap: list[str]) -> dict[str, Any]:
        return {
            **self.common_kwargs(bootstrap),
            "acks": self.acks,
            "enable_idempotence": self.enable_idempotence,
            "linger_ms": self.linger_ms,
            "max_batch_size": min(self.max_batch_size, self.max_record_bytes),
            "compression_type": self.compression_type,
            "max_request_size": self.max_message_bytes,
            "partitioner": partitioner,  # the default one, each key's hash remembered
            **self.producer_extra,
        }

    def consumer_kwargs(self, bootstrap: list[str]) -> dict[str, Any]:
        return {
            **self.common_kwargs(bootstrap),
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "latest",
            # Bridges write the events topic in transactions: a node delivers (and a replay
            # recovers) a bridged event once its transaction commits, never an aborted one.
            "isolation_level": "read_committed",
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


def _refuse_unused(options: KafkaOptions, names: tuple[str, ...], what: str) -> None:
    """A setting the protocol ignores is a mistake to say, not to drop silently."""
    unused = [name for name in names if getattr(options, name) is not None]
    _require(
        not unused,
        f"{', '.join(unused)} given, but security_protocol={options.security_protocol!r}"
        f" does not use {what}",
    )


class _EncryptedKey(Exception):
    """OpenSSL asked for the client key's password, and none was given."""


def _no_password() -> str:
    raise _EncryptedKey


def _require_readable(name: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{name} {path!r} cannot be read: {exc.strerror}") from None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
