"""The gateway's exceptions: one root, so the CLI can print any of them as one line.

```
GatewayError
 ├── InvalidSettings          a flag or ``SOCKETIO_KAFKA_*`` variable out of range
 ├── TokenRefused             a client's JWT is missing, invalid or not for this subject
 └── ServiceError             a local Kafka or Redis could not be fetched, started or reused
      ├── JavaNotFound        no ``java`` on PATH or in JAVA_HOME
      ├── MavenNotFound       no ``mvn`` to fetch the Kafka jars with
      ├── RedisNotFound       no ``redis-server`` on PATH
      ├── PortInUse           the asked-for port is taken by another process
      ├── FetchFailed         Maven could not fetch the Kafka jars
      └── ServiceStartFailed  the process exited or did not answer in time; carries its log
```
"""

from __future__ import annotations

__all__ = [
    "FetchFailed",
    "GatewayError",
    "InvalidSettings",
    "JavaNotFound",
    "MavenNotFound",
    "PortInUse",
    "RedisNotFound",
    "ServiceError",
    "ServiceStartFailed",
    "TokenRefused",
]


class GatewayError(Exception):
    """Root of every error the gateway package raises."""


class InvalidSettings(GatewayError, ValueError):
    """A node's settings are out of range; nothing was started."""


class TokenRefused(GatewayError):
    """A client's token was not accepted; ``reason`` is a short label (``token_expired``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason.replace("_", " "))
        self.reason = reason


class ServiceError(GatewayError):
    """A local service (Kafka, Redis) could not be fetched, started or reused."""


class JavaNotFound(ServiceError):
    """Kafka needs Java 17 or newer."""


class MavenNotFound(ServiceError):
    """The Kafka jars are fetched from Maven Central with ``mvn``."""


class RedisNotFound(ServiceError):
    """The local Redis runs the system's ``redis-server`` binary."""


class PortInUse(ServiceError):
    """Another process listens on the port a service was asked to use."""


class FetchFailed(ServiceError):
    """Maven failed; its output is in the message."""


class ServiceStartFailed(ServiceError):
    """The service exited, or did not answer before the deadline."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(
            f"{message}\n--- last lines of the log ---\n{log_tail}" if log_tail else message
        )
        #: The last lines of the service's log, to show why it failed.
        self.log_tail = log_tail
