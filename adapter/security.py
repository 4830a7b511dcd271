"""Why Kafka refused a secured connection, said in one line before any client retries it.

aiokafka's bootstrap logs the cause of a failed connection and raises a bare "Unable to
bootstrap", which the manager retried as an outage: a wrong password or an untrusted
certificate kept a node retrying forever. So a secured manager first opens one connection
itself, as its clients will, and a refusal becomes a `SecurityError` naming the cause.
"""

from __future__ import annotations

import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from .errors import BrokerUnavailable, SecurityError
from .options import KafkaOptions

__all__ = ["check_access"]

_SASL_ERRORS = (SaslAuthenticationFailed, IllegalSaslStateError)


async def check_access(servers: list[str], options: KafkaOptions) -> None:
    """Connect (TLS, then SASL) to the first bootstrap server that answers, then close.

    Raises `SecurityError` when Kafka refuses the credentials or the mechanism, or the TLS
    handshake fails; `BrokerUnavailable` when no server answers at all.
    """
    kwargs = options.common_kwargs(servers)
    del kwargs["bootstrap_servers"]
    causes: list[str] = []
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            conn = await create_conn(host, int(port), **kwargs)
        except _SASL_ERRORS as exc:
            raise SecurityError(
                f"Kafka at {server} refused the credentials of user {options.sasl_username!r}"
                f" ({options.sasl_mechanism}): {_message(exc)}"
            ) from None
        except UnsupportedSaslMechanismError:
            # Its argument may be the connection object: the words are ours.
            raise SecurityError(
                f"Kafka at {server} does not accept SASL mechanism {options.sasl_mechanism}"
                " on this listener"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            trusted = (
                "the ssl_context given"
                if options.ssl_context is not None
                else options.ssl_cafile or "the system's CAs"
            )
            raise SecurityError(
                f"TLS handshake with {server} failed: certificate verify failed:"
                f" {exc.verify_message} (trusting {trusted})"
            ) from None
        except ssl.SSLError as exc:
            raise SecurityError(f"TLS handshake with {server} failed: {exc}") from None
        except ConnectionResetError as exc:
            # A plaintext listener drops a TLS hello at once (it reads it as a huge size).
            if options.tls and await _speaks_plaintext(host, int(port), options):
                raise SecurityError(
                    f"TLS handshake with {server} failed: the port speaks plaintext Kafka"
                    f" (security_protocol={options.security_protocol!r} needs a TLS listener)"
                ) from None
            causes.append(f"{server}: {exc!r}")
        except (OSError, KafkaError, TimeoutError) as exc:
            causes.append(f"{server}: {exc!r}")
        else:
            await conn.close()
            return
    raise BrokerUnavailable(f"no bootstrap server answered ({'; '.join(causes)})")


async def _speaks_plaintext(host: str, port: int, options: KafkaOptions) -> bool:
    """Whether Kafka answers an ApiVersions request in the clear on this port."""
    try:
        conn = await create_conn(
            host,
            port,
            client_id=options.client_id,
            request_timeout_ms=options.request_timeout_ms,
        )
    except (OSError, KafkaError, TimeoutError):
        return False
    await conn.close()
    return True


def _message(exc: KafkaError) -> str:
    """The broker's words, without aiokafka's ``[Error 58] ClassName:`` prefix."""
    return str(exc.args[0]) if exc.args else type(exc).__name__
