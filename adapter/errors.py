"""The adapter's exceptions: one root, translated from aiokafka at the boundary.

```
SocketIOKafkaError
 ├── ConfigError          bad URL or option; fix the configuration
 ├── TopicLayoutError     an existing topic does not fit what this node needs
 ├── SecurityError        Kafka refused the credentials, or TLS failed; fix the configuration
 ├── BrokerUnavailable    Kafka cannot be reached now (retriable)
 ├── PublishError         Kafka did not accept a record (retriable)
 ├── PayloadError         an emit's data no node could read back (NaN, a lone surrogate)
 ├── ReplayGap            Kafka deleted records a replay was reading; the recovery fails
 └── RecordDecodeError    a record on the topic is not ours or is malformed
```
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "PayloadError",
    "PublishError",
    "RecordDecodeError",
    "ReplayGap",
    "SecurityError",
    "SocketIOKafkaError",
    "TopicLayoutError",
]


class SocketIOKafkaError(Exception):
    """Root of every error the adapter raises."""

    #: Whether the same call may succeed if tried again later.
    retriable: bool = False


class ConfigError(SocketIOKafkaError, ValueError):
    """The manager was configured with a value it cannot use."""


class TopicLayoutError(SocketIOKafkaError):
    """An existing topic has a layout (partitions, cleanup policy) that would lose events."""


class SecurityError(SocketIOKafkaError):
    """Kafka refused this client's SASL credentials or mechanism, or the TLS handshake failed
    (an untrusted broker certificate, TLS spoken to a plaintext port): retrying cannot help."""


class BrokerUnavailable(SocketIOKafkaError):
    """Kafka could not be reached; the manager keeps retrying in the background."""

    retriable = True


class PublishError(SocketIOKafkaError):
    """Kafka did not acknowledge a record in time."""

    retriable = True


class PayloadError(SocketIOKafkaError, ValueError):
    """An emit's data cannot be written as a record every node reads back: NaN or
    Infinity, a lone surrogate, nesting deeper than 128 levels. Nothing was written."""


class ReplayGap(SocketIOKafkaError):
    """Records in a replay's range were deleted (retention) after its range was judged
    whole: what the session missed cannot all be delivered, so its recovery fails."""


class RecordDecodeError(SocketIOKafkaError, ValueError):
    """A record on the events topic could not be decoded; it is counted and skipped."""
