"""Why Kafka refused a secured connection, said in one line before any client retries it.

aiokafka's bootstrap logs the cause of a failed connection and raises a bare "Unable to
bootstrap", which the manager retried as an outage: a wrong password or an untrusted
certificate kept a node retrying forever. So a secured manager first opens one connection
itself, as its clients will, and a refusal becomes a `SecurityError` naming the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from .errors import BrokerUnavailable, SecurityError
from .options import KafkaOptions

__all__ = ["check_access"]

_SASL_ERRORS = (SaslAuthenticationFailed, IllegalSaslStateError)


async def check_access(servers: list[str], options: KafkaOptions) -> None:
    """Connect (TLS, then SASL) to the first bootstrap server that answers, then close.

    Raises `SecurityError` when Kafka refuses the credentials or the mechanism, the TLS
    handshake fails, or the listener wants more than this client speaks (TLS, SASL);
    `BrokerUnavailable` when no server answers at all.
    """
    kwargs = options.common_kwargs(servers)
    del kwargs["bootstrap_servers"]
    causes: list[str] = []
    #: Servers that answered ApiVersions; of them, those that closed at the metadata request.
    opened: list[str] = []
    closed: list[str] = []
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
        except KafkaConnectionError as exc:
            # A TLS listener drops a plaintext request unanswered: retried as an outage.
            if not options.tls and await _speaks_tls(host, int(port), options):
                raise SecurityError(
                    f"Kafka at {server} closed the connection: the port speaks TLS"
                    f" (security_protocol={options.security_protocol!r} needs a plaintext"
                    " listener)"
                ) from None
            causes.append(f"{server}: {exc!r}")
        except (OSError, KafkaError, TimeoutError) as exc:
            causes.append(f"{server}: {exc!r}")
        else:
            opened.append(server)
            try:
                failure = await _metadata_failure(conn)
            finally:
                await conn.close()
            if failure is None:
                return
            if isinstance(failure, KafkaConnectionError):
                closed.append(server)
            causes.append(f"{server}: {failure!r} at a metadata request")
    # Every server that opened closed at the first request: a SASL listener does that. One
    # of them alone may be a broker going down, or a proxy: retried as an outage.
    if closed and closed == opened and not options.sasl:
        raise SecurityError(
            f"Kafka at {closed[0]} closed the connection at its first request: the listener"
            f" likely requires SASL (security_protocol={options.security_protocol!r} has none)"
        )
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


async def _metadata_failure(conn: AIOKafkaConnection) -> Exception | None:
    """None when Kafka answers a metadata request (for no topic) on this connection, else
    why not (`KafkaConnectionError`: it closed the connection).

    ApiVersions, which opening the connection sent, is answered before any SASL; a SASL
    listener closes the connection at any other request it gets first.
    """
    try:
        await conn.send(MetadataRequest([]))
    except (KafkaError, TimeoutError) as exc:
        return exc
    return None


async def _speaks_tls(host: str, port: int, options: KafkaOptions) -> bool:
    """Whether the port completes a TLS handshake: nothing is sent over it, so it is not
    verified."""
    probe = ssl.create_default_context()
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(options.request_timeout_ms / 1000):
            _, writer = await asyncio.open_connection(host, port, ssl=probe)
    except (OSError, TimeoutError):  # ssl.SSLError is an OSError
        return False
    writer.transport.abort()  # no TLS goodbye to wait for
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _message(exc: KafkaError) -> str:
    """The broker's words, without aiokafka's ``[Error 58] ClassName:`` prefix."""
    return str(exc.args[0]) if exc.args else type(exc).__name__
