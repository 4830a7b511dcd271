"""The gateway's configuration: one frozen object from flags and ``SOCKETIO_KAFKA_*`` variables."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_type_hints

from uvicorn.logging import TRACE_LOG_LEVEL

from socketio_kafka.adapter import KafkaOptions, OutboxLimits

from .auth import TokenVerifier
from .errors import InvalidSettings
from .inflight import EVENT_OVERHEAD
from .limits import Limits

__all__ = [
    "ADAPTERS",
    "ENV_PREFIX",
    "Adapter",
    "Settings",
    "boolean",
    "env_default",
    "env_settings",
    "integer",
    "number",
]

ENV_PREFIX = "SOCKETIO_KAFKA_"
_KAFKA = KafkaOptions()
_OUTBOX = OutboxLimits()
_LIMITS = Limits()
#: What the events topic a node creates keeps past the recovery window: a client's last
#: event came up to a heartbeat (25 + 20 s) before its drop was noticed, and brokers age a
#: record by their own clock, not the one of the node that stamped it. An hour covers both.
_RETENTION_MARGIN_MS = 3600 * 1000

Adapter = Literal["kafka", "redis"]
ADAPTERS: tuple[Adapter, ...] = get_args(Adapter)
# uvicorn's names (it lowercases them; `logging` upper-cases them for us).
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def log_level(name: str) -> int:
    """One of the levels above as a number: Python's logging knows no "trace" (uvicorn's)
    until uvicorn names it, and a node or bridge started at it ended in a traceback."""
    if name.lower() == "trace":
        return TRACE_LOG_LEVEL
    if name.lower() not in _LOG_LEVELS:
        raise InvalidSettings(f"log_level must be one of {', '.join(_LOG_LEVELS)}")
    level: int = logging.getLevelNamesMapping()[name.upper()]
    return level


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
    # Of a new sessions topic; an existing one is read as it is (docs/decisions.md).
    sessions_partitions: int = _KAFKA.sessions_partitions
    # None: what the cluster can hold (KafkaOptions; docs/decisions.md).
    replication_factor: int | None = None
    min_insync_replicas: int | None = None
    kafka_timeout_ms: int = 15000
    # The latency/throughput trade, as the adapter's defaults unless set (measured in
    # benchmarks/RESULTS.md).
    linger_ms: int = _KAFKA.linger_ms
    fetch_interval_ms: float = _KAFKA.fetch_interval_ms
    # None: 8x the linger (at least 16 ms), 4x the fetch interval (adapter/pacing.py).
    linger_max_ms: float | None = None
    fetch_interval_max_ms: float | None = None
    cors_origins: str = "*"
    max_payload_bytes: int = 1_000_000
    ws_compression: bool = False
    extension: str | None = None
    recovery: bool = True
    recovery_window: float = 120.0
    # MiB of the latest records a node keeps for replays of short drops (0: none).
    replay_history_mb: float = _KAFKA.replay_history_bytes / 2**20
    # Seconds a client's publish id is remembered; None: the recovery window and
    # kafka_timeout_ms (a resend comes at most a recovery window after the drop).
    publish_window: float | None = None
    # Per socket: a client that stops reading is cut past either (its session kept).
    max_queued_packets: int = _OUTBOX.max_packets
    max_queued_bytes: int = _OUTBOX.max_bytes
    # Per node: what all sockets' queues (and replays' holds) keep together, estimated.
    max_node_queued_bytes: int = _OUTBOX.node_max_bytes
    log_level: str = "info"
    # What one client may take of a node (README, "Limits"); never reached by a demo.
    max_connections: int = _LIMITS.max_connections
    connect_rate: float = _LIMITS.connect_rate
    event_rate: float = _LIMITS.event_rate
    max_rooms_per_socket: int = _LIMITS.max_rooms_per_socket
    trust_forwarded_for: bool = _LIMITS.trust_forwarded_for
    read_timeout: float = _LIMITS.read_timeout
    connect_timeout: float = _LIMITS.connect_timeout
    max_node_inbound_bytes: int = _LIMITS.max_inbound_bytes
    # None: 256, or twice the event rate's burst (4 x event_rate) when that is more: a
    # client may send its whole burst at once, and pipelining clients do.
    max_in_flight_events: int | None = None
    # None: 32 MiB, or one event of the largest payload when that is more.
    max_in_flight_bytes: int | None = None
    # Seconds from SIGTERM to exit (README, "Drain").
    drain_timeout: float = 10.0
    # Seconds an idle HTTP connection is kept open for its next request. Longer than what
    # clients and proxies keep theirs (aiohttp 15 s, nginx's upstream keepalive and AWS ALB
    # 60 s): whoever closes an idle connection must be the one that would reuse it, or a
    # request it sends as the node closes is lost ("transport error"; docs/decisions.md).
    keep_alive_timeout: int = 65
    # Kafka security (README, "Secured Kafka"). Secrets come from files read at start-up,
    # so they stay out of process listings; the password may come from the environment
    # (SOCKETIO_KAFKA_KAFKA_PASSWORD) for platforms that inject secrets so, never a flag.
    kafka_security_protocol: str = _KAFKA.security_protocol
    kafka_sasl_mechanism: str | None = None
    kafka_username: str | None = None
    kafka_password: str | None = dataclasses.field(default=None, repr=False)
    kafka_password_file: str | None = None
    kafka_ca_file: str | None = None
    kafka_cert_file: str | None = None
    kafka_key_file: str | None = None
    kafka_key_password_file: str | None = None
    # Identity (README, "Identity and permissions (JWT)"): without a key the node is open.
    # The secret is safer in a file; as a flag, process listings show it.
    jwt_secret: str | None = dataclasses.field(default=None, repr=False)
    jwt_secret_file: str | None = None
    jwt_public_key: str | None = None
    # Comma-separated; default: HS256 with a secret, the key's own with a public key.
    jwt_algorithms: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = 0.0
    authorize: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")
        if self.adapter not in ADAPTERS:
            raise ValueError(f"adapter must be one of {', '.join(ADAPTERS)}, not {self.adapter!r}")
        if not self.channel:
            raise ValueError("channel must not be empty")
        if self.recovery_window <= 0:
            raise ValueError("recovery_window must be > 0")
        if self.publish_window is not None and self.publish_window <= 0:
            raise ValueError("publish_window must be > 0")
        if self.kafka_timeout_ms < 100:
            raise ValueError("kafka_timeout_ms must be >= 100")
        self.kafka_options  # noqa: B018 (its checks, partitions too, before anything starts)
        self.outbox_limits  # noqa: B018 (its checks)
        if self.token_verifier is None and (self.authorize or self.jwt_algorithms):
            raise ValueError("authorize and jwt_algorithms need a JWT key (secret or public key)")
        if self.max_payload_bytes < 1024:
            raise ValueError("max_payload_bytes must be >= 1024")
        if self.log_level.lower() not in _LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(_LOG_LEVELS)}")
        self.limits  # noqa: B018 (its checks)
        if self.max_node_inbound_bytes < self.max_payload_bytes:
            # Else one message of the largest size, finished at once, would be cut.
            raise ValueError("max_node_inbound_bytes must be >= max_payload_bytes")
        if self.limits.max_in_flight_bytes < self.max_payload_bytes + EVENT_OVERHEAD:
            # Else an event of the largest size would be refused on a node doing nothing.
            raise ValueError("max_in_flight_bytes must be >= max_payload_bytes + 4096")
        if self.drain_timeout <= 0:
            raise ValueError("drain_timeout must be > 0")
        if self.keep_alive_timeout < 1:
            raise ValueError("keep_alive_timeout must be >= 1")

    @property
    def kafka_options(self) -> KafkaOptions:
        """The Kafka clients' options; raises `ConfigError` (a ValueError) when out of range."""
        # The adapter refuses a recovery window its retention does not cover: 24 h at least.
        window_ms = math.ceil(self.recovery_window * 1000) if self.recovery else 0
        return KafkaOptions(
            partitions=self.partitions,
            sessions_partitions=self.sessions_partitions,
            replication_factor=self.replication_factor,
            min_insync_replicas=self.min_insync_replicas,
            request_timeout_ms=self.kafka_timeout_ms,
            linger_ms=self.linger_ms,
            fetch_interval_ms=self.fetch_interval_ms,
            linger_max_ms=self.linger_max_ms,
            fetch_interval_max_ms=self.fetch_interval_max_ms,
            replay_history_bytes=int(self.replay_history_mb * 2**20),
            retention_ms=max(_KAFKA.retention_ms, window_ms + _RETENTION_MARGIN_MS),
            # Whatever a client may send fits a record, binary parts base64-encoded included.
            max_record_bytes=self.max_payload_bytes * 4 // 3 + 64 * 1024,
            **self.kafka_security,
        )

    @property
    def kafka_security(self) -> dict[str, Any]:
        """The `KafkaOptions` of Kafka security, secrets read from their files."""
        return {
            "security_protocol": self.kafka_security_protocol,
            "sasl_mechanism": self.kafka_sasl_mechanism,
            "sasl_username": self.kafka_username,
            "sasl_password": self._kafka_password(),
            "ssl_cafile": self.kafka_ca_file,
            "ssl_certfile": self.kafka_cert_file,
            "ssl_keyfile": self.kafka_key_file,
            "ssl_password": _secret("kafka_key_password_file", self.kafka_key_password_file),
        }

    def _kafka_password(self) -> str | None:
        if self.kafka_password is not None and self.kafka_password_file is not None:
            raise ValueError(
                f"both {ENV_PREFIX}KAFKA_PASSWORD and kafka_password_file are set: give one"
            )
        return self.kafka_password or _secret("kafka_password_file", self.kafka_password_file)

    @property
    def publish_window_s(self) -> float:
        """How long a client's publish ids are remembered (`PublishLedger`)."""
        if self.publish_window is not None:
            return self.publish_window
        return self.recovery_window + self.kafka_timeout_ms / 1000

    @property
    def outbox_limits(self) -> OutboxLimits:
        """Every socket's bounds on queued outgoing packets and bytes, and the node's."""
        return OutboxLimits(
            self.max_queued_packets, self.max_queued_bytes, self.max_node_queued_bytes
        )

    @property
    def limits(self) -> Limits:
        """What one client may take of the node."""
        return Limits(
            self.max_connections,
            self.connect_rate,
            self.event_rate,
            self.max_rooms_per_socket,
            self.trust_forwarded_for,
            self.read_timeout,
            self.max_node_inbound_bytes,
            self.connect_timeout,
            self.max_in_flight_events
            if self.max_in_flight_events is not None
            else max(_LIMITS.max_in_flight_events, math.ceil(4 * self.event_rate)),
            self.max_in_flight_bytes
            if self.max_in_flight_bytes is not None
            else max(_LIMITS.max_in_flight_bytes, self.max_payload_bytes + EVENT_OVERHEAD),
        )

    @property
    def cors_allowed_origins(self) -> str | list[str]:
        return "*" if self.cors_origins == "*" else self.cors_origins.split(",")

    @property
    def token_verifier(self) -> TokenVerifier | None:
        """The JWT check of every connection, from the one key given; None: no key, open."""
        keys = ("jwt_secret", "jwt_secret_file", "jwt_public_key")
        given = [name for name in keys if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} are set: give one JWT key")
        algorithms = (
            [a.strip() for a in self.jwt_algorithms.split(",")] if self.jwt_algorithms else None
        )
        checks = {"audience": self.jwt_audience, "issuer": self.jwt_issuer}
        secret = _secret("jwt_secret_file", self.jwt_secret_file)
        secret = self.jwt_secret if self.jwt_secret is not None else secret
        if secret is not None:
            return TokenVerifier.for_secret(secret, algorithms, leeway=self.jwt_leeway, **checks)
        if self.jwt_public_key is not None:
            pem = _read("jwt_public_key", self.jwt_public_key).encode()
            return TokenVerifier.for_public_key(pem, algorithms, leeway=self.jwt_leeway, **checks)
        return None


def _secret(name: str, path: str | None) -> str | None:
    """A secret from its file, without the line end an editor or ``echo`` leaves."""
    if path is None:
        return None
    secret = _read(name, path).removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ValueError(f"{name} {path!r} is empty")
    return secret


def _read(name: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"{name} {path!r} cannot be read: {reason}") from None


def integer(text: str) -> int:
    """An integer setting's text; named so that argparse says "invalid integer value"."""
    try:
        return int(text)
    except ValueError:
        raise ValueError("is not an integer") from None


def number(text: str) -> float:
    """A float setting's text: finite, as no setting means anything by nan or inf."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError("is not a finite number")
    return value


_BOOLEANS = dict.fromkeys(("1", "true", "yes", "on"), True) | dict.fromkeys(
    ("0", "false", "no", "off"), False
)


def boolean(text: str) -> bool:
    """A boolean setting's text, in any case: a typo must not silently mean "off"."""
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError("is not a boolean (1/0, true/false, yes/no, on/off)") from None


_PARSERS: dict[Any, Callable[[str], object]] = {int: integer, float: number, bool: boolean}


def env_settings(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The settings given as ``SOCKETIO_KAFKA_<NAME>`` variables, each of its field's type.

    Raises `InvalidSettings` naming the variable when one does not parse.
    """
    kinds = get_type_hints(Settings)
    values: dict[str, Any] = {}
    for field in fields(Settings):
        name = ENV_PREFIX + field.name.upper()
        if name not in env:
            continue
        # `int | None` parses as int: the variable is set, so the value is not None.
        kind = next((k for k in get_args(kinds[field.name]) if k is not type(None)), None)
        parse = _PARSERS.get(kinds[field.name], _PARSERS.get(kind, str))
        try:
            values[field.name] = parse(env[name])
        except ValueError as exc:
            raise InvalidSettings(f"{name}={env[name]!r} {exc}") from None
    return values


def env_default(name: str, default: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """``SOCKETIO_KAFKA_<NAME>`` if set, else ``default``: flags override the environment."""
    return env.get(ENV_PREFIX + name.upper(), default)
