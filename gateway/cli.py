"""``socketio-kafka``: run a gateway node, and the local Kafka and Redis it can use."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from socketio_kafka.adapter import SocketIOKafkaError
from socketio_kafka.adapter.options import SASL_MECHANISMS, SECURITY_PROTOCOLS, KafkaOptions

try:
    from .settings import (
        ADAPTERS,
        ENV_PREFIX,
        Settings,
        env_default,
        env_settings,
        integer,
        log_level,
        number,
    )
except ModuleNotFoundError as exc:  # the command came with the adapter alone
    missing = (exc.name or "?").partition(".")[0]
    raise SystemExit(
        f"socketio-kafka: the gateway's dependencies are not installed ({missing} is"
        " missing): pip install 'socketio-kafka[gateway]'"
    ) from None

if TYPE_CHECKING:
    from .local_kafka import LocalKafka
    from .local_redis import LocalRedis

__all__ = ["build_parser", "main", "settings_from"]

_SERVICES = ("kafka", "redis")
_UVICORN_STARTUP_FAILURE = 3  # uvicorn.run's exit status when the server did not start


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import GatewayError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (GatewayError, SocketIOKafkaError) as exc:
        print(f"socketio-kafka: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="socketio-kafka", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands.add_parser("serve", help="run one gateway node"))
    demo = commands.add_parser("demo", help="local Kafka + N nodes + clients across them")
    demo.add_argument(
        "--nodes", type=int, default=3, help="2 at least: a client recovers on another node"
    )
    demo.add_argument("--base-port", type=int, default=8001)
    demo.add_argument("--kafka", default=env_default("kafka", None))
    demo.add_argument(
        "--channel",
        default=env_default("channel", "demo"),
        help="the channel (topic prefix) the demo's nodes share (default: demo)",
    )
    demo.add_argument("--once", action="store_true", help="exit after the exchange")
    demo.add_argument(
        "--jwt-secret-file",
        help="the nodes check JWTs signed with this secret; the demo signs its clients' and"
        " its page URLs' tokens with it",
    )
    demo.set_defaults(run=_demo)
    _add_bridge(commands.add_parser("bridge", help="deliver Kafka topics into Socket.IO rooms"))
    for name in _SERVICES:
        service = commands.add_parser(name, help=f"start, stop or check a local {name}")
        service.add_argument("action", choices=["start", "stop", "status"])
        service.add_argument("--port", type=int, default=None, help="default: a free port")
        service.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="where the service keeps its files (default: a dir of its own under"
            " $SOCKETIO_KAFKA_DATA_DIR, else under ~/.local/state/socketio-kafka)",
        )
        service.set_defaults(run=_service_command(name))
        if name == "kafka":
            _add_kafka_options(service)
    return parser


def _add_serve(parser: argparse.ArgumentParser) -> None:
    # No defaults here (None: not given): `settings_from` reads the environment, so that a
    # malformed variable is reported, as one line, by the one subcommand that uses it.
    parser.add_argument("--host")
    parser.add_argument("--port", type=integer)
    parser.add_argument(
        "--kafka",
        help="kafka://host:port[,host:port]; default: the local broker of 'socketio-kafka kafka'",
    )
    parser.add_argument(
        "--adapter",
        choices=ADAPTERS,
        help="the client manager: kafka (ours) or redis (python-socketio's AsyncRedisManager)",
    )
    parser.add_argument(
        "--redis-url",
        help="redis://host:port/db for --adapter redis; default: the local redis of"
        " 'socketio-kafka redis'",
    )
    parser.add_argument("--channel")
    parser.add_argument("--partitions", type=integer)
    parser.add_argument(
        "--sessions-partitions",
        type=integer,
        help="partitions of a new sessions topic (default 1); an existing one is read as it is",
    )
    parser.add_argument(
        "--replication-factor",
        type=integer,
        help="replicas of each partition of the topics this node creates; given, an existing"
        " topic with fewer is refused (default: 3, or fewer on a smaller cluster)",
    )
    parser.add_argument(
        "--min-insync-replicas",
        type=integer,
        help="replicas that must hold a publish before it is acked (default: 2 with 3 or more"
        " replicas, else 1)",
    )
    parser.add_argument(
        "--kafka-timeout-ms",
        type=integer,
        help="how long a publish waits for Kafka before its ack reports an error",
    )
    parser.add_argument(
        "--linger-ms",
        type=integer,
        help="how long an idle node's publish waits to share a Kafka request (default 0)",
    )
    parser.add_argument(
        "--fetch-interval-ms",
        type=number,
        help="at most one Kafka fetch per this interval under load (default 5; 0: no pacing)",
    )
    parser.add_argument(
        "--linger-max-ms",
        type=number,
        help="how long a busy node's publishes may wait (default 8x --linger-ms, at least 16)",
    )
    parser.add_argument(
        "--fetch-interval-max-ms",
        type=number,
        help="a busy node's fetch interval, at most (default 4x --fetch-interval-ms)",
    )
    parser.add_argument("--cors-origins")
    parser.add_argument("--max-payload-bytes", type=integer)
    parser.add_argument(
        "--ws-compression",
        action=argparse.BooleanOptionalAction,
        help="permessage-deflate on WebSockets (default off: it halves throughput)",
    )
    parser.add_argument(
        "--extension", help="module:function called with the AsyncServer to add handlers"
    )
    parser.add_argument(
        "--recovery",
        action=argparse.BooleanOptionalAction,
        help="connection state recovery over Kafka offsets (default on)",
    )
    parser.add_argument(
        "--recovery-window",
        type=number,
        help="seconds a disconnected client's session is kept (default 120); the events topic"
        " a node creates keeps events an hour longer, 24 h at least",
    )
    parser.add_argument(
        "--replay-history-mb",
        type=number,
        help="MiB of the latest records kept for replays of short drops (default 32; 0: none)",
    )
    parser.add_argument(
        "--publish-window",
        type=number,
        help="seconds a client's publish id is remembered, its repeats acked and not produced "
        "(default: the recovery window plus the Kafka timeout)",
    )
    parser.add_argument(
        "--max-queued-packets",
        type=integer,
        help="packets queued for one client before it is cut as not reading (default 50000)",
    )
    parser.add_argument(
        "--max-queued-bytes",
        type=integer,
        help="bytes queued for one client before it is cut as not reading (default 16 MiB)",
    )
    parser.add_argument(
        "--max-node-queued-bytes",
        type=integer,
        help="bytes all clients' queues may keep together, estimated; past it the clients "
        "furthest behind are cut first (default 256 MiB)",
    )
    parser.add_argument("--log-level")
    _add_limits(parser)
    _add_kafka_security(parser)
    _add_identity(parser)
    parser.set_defaults(run=_serve)


def _add_bridge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the bridges file (TOML; see README)")
    parser.add_argument(
        "--kafka",
        help="kafka://host:port[,...]; default: the file's [kafka] url, else the"
        " environment's SOCKETIO_KAFKA_KAFKA, else localhost:9092",
    )
    parser.add_argument(
        "--instance",
        help="this process's stable name among the bridges of a group (static membership:"
        " restarted under the same name, it takes its partitions back at once)",
    )
    parser.add_argument("--metrics-port", type=integer, help="serve /metrics on this port")
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="the address /metrics listens on (default 127.0.0.1; 0.0.0.0 for a scraper"
        " on another host)",
    )
    parser.add_argument("--log-level", default="info", help="default info")
    _add_kafka_security(parser)
    parser.set_defaults(run=_bridge)


def _bridge(args: argparse.Namespace) -> int:
    import asyncio

    from socketio_kafka.adapter.options import parse_kafka_urls

    from .bridge import load, run_bridges
    from .bridge.service import configure_logging

    config = load(args.file)
    url = args.kafka or config.url or env_default("kafka", None) or "kafka://"
    options = _secured(args)
    configure_logging(args.log_level)
    metrics = None if args.metrics_port is None else (args.metrics_host, args.metrics_port)
    bootstrap = parse_kafka_urls(url)

    async def bridge() -> None:
        await _check_bridge_access(bootstrap, options)
        await run_bridges(config, bootstrap, args.instance, metrics, options)

    asyncio.run(bridge())
    return 0


async def _check_bridge_access(bootstrap: list[str], options: KafkaOptions) -> None:
    """Raise `SecurityError` when Kafka refuses the bridge, as `serve` does: its pumps'
    supervisor retried a refusal as an outage, a traceback a try, for good. Kafka not
    answering yet is left to that supervisor, which waits for it."""
    from socketio_kafka.adapter import BrokerUnavailable
    from socketio_kafka.adapter.security import check_access

    try:
        await check_access(bootstrap, options)
    except BrokerUnavailable as exc:
        logging.getLogger("socketio_kafka.bridge").warning("%s; the bridges retry", exc)


def _secured(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> KafkaOptions:
    """The bridge's Kafka options: the defaults, secured as `serve`'s security flags and
    variables say. Only those are read: a bridge sharing the gateways' environment need
    not have their JWT key, say, to start."""
    from .errors import InvalidSettings

    names = {ENV_PREFIX + name.upper() for name in _SECURITY_SETTINGS}
    given = {name: getattr(args, name) for name in _SECURITY_SETTINGS}
    chosen = env_settings({k: v for k, v in env.items() if k in names}) | {
        name: value for name, value in given.items() if value is not None
    }
    try:
        return KafkaOptions(**Settings(**chosen).kafka_security)
    except ValueError as exc:
        raise InvalidSettings(str(exc)) from exc


#: `Settings`' Kafka security fields.
_SECURITY_SETTINGS = (
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_username",
    "kafka_password",
    "kafka_password_file",
    "kafka_ca_file",
    "kafka_cert_file",
    "kafka_key_file",
    "kafka_key_password_file",
)


def _add_limits(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Limits and drain",
        "What one client may take of this node; a client over a limit is refused, others"
        " see nothing. Each bucket's burst is twice its rate.",
    )
    group.add_argument(
        "--max-connections", type=integer, help="connections this node holds (default 10000)"
    )
    group.add_argument(
        "--connect-rate",
        type=number,
        help="new connections per second per client address (default 10)",
    )
    group.add_argument(
        "--event-rate", type=number, help="events per second per connection (default 100)"
    )
    group.add_argument(
        "--max-rooms-per-socket", type=integer, help="rooms one socket may join (default 100)"
    )
    group.add_argument(
        "--trust-forwarded-for",
        action=argparse.BooleanOptionalAction,
        help="key limits on X-Forwarded-For's last hop, the address the proxy saw"
        " (behind a proxy only; default off)",
    )
    group.add_argument(
        "--read-timeout",
        type=number,
        help="seconds a connection has to send a whole HTTP request (default 30)",
    )
    group.add_argument(
        "--connect-timeout",
        type=number,
        help="seconds a connection may go without a Socket.IO namespace connected, from its "
        "handshake or its last namespace's disconnect (default 45, as Node's socket.io)",
    )
    group.add_argument(
        "--max-node-inbound-bytes",
        type=integer,
        help="bytes of unfinished messages (WebSocket messages, request heads and bodies, "
        "binary events' attachments) all connections may hold together; past it the ones "
        "begun longest ago are closed first (default 64 MiB)",
    )
    group.add_argument(
        "--max-in-flight-events",
        type=integer,
        help="events one connection may have read and not finished handling (a publish "
        "waiting for Kafka); past it an event's ack is an error, 'busy' (default 4 x "
        "--event-rate, twice its burst, at least 256)",
    )
    group.add_argument(
        "--max-in-flight-bytes",
        type=integer,
        help="the same bound in bytes of those events' messages; all connections' together "
        "get what unfinished messages leave of --max-node-inbound-bytes (default 32 MiB, or "
        "--max-payload-bytes + 4096 if more)",
    )
    group.add_argument(
        "--drain-timeout",
        type=number,
        help="seconds from SIGTERM to exit: clients are moved off, Kafka flushed (default 10)",
    )
    group.add_argument(
        "--keep-alive-timeout",
        type=integer,
        help="seconds an idle HTTP connection is kept; above any proxy's in front (default 65)",
    )


def _add_kafka_security(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Kafka security (SASL/TLS)",
        "Secrets are read from files at start-up, so that they stay out of process listings"
        " (ps, /proc): there is no --kafka-password flag. The password may also come from"
        " SOCKETIO_KAFKA_KAFKA_PASSWORD, for platforms that inject secrets as variables.",
    )
    group.add_argument(
        "--kafka-security-protocol",
        choices=SECURITY_PROTOCOLS,
        help="how to talk to Kafka (default PLAINTEXT)",
    )
    group.add_argument(
        "--kafka-sasl-mechanism", choices=SASL_MECHANISMS, help="SASL mechanism (SASL_*)"
    )
    group.add_argument("--kafka-username", help="SASL username")
    group.add_argument("--kafka-password-file", help="file holding the SASL password")
    # Refused by name: unknown, argparse would echo the password in its usage error.
    group.add_argument("--kafka-password", action=_NoPasswordFlag, help=argparse.SUPPRESS)
    group.add_argument(
        "--kafka-ca-file", help="PEM CA certificate(s) to trust (default: the system's CAs)"
    )
    group.add_argument("--kafka-cert-file", help="PEM client certificate, for mutual TLS")
    group.add_argument("--kafka-key-file", help="PEM private key of the client certificate")
    group.add_argument(
        "--kafka-key-password-file", help="file holding the client key's password, if any"
    )


def _add_identity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Identity and permissions (JWT)",
        'With a key, every connection needs a token (CONNECT auth {"token": ...} or'
        " Authorization: Bearer), and its claims say which rooms it may join (rooms) and"
        " publish into (publish). Without one the node is open to any client.",
    )
    group.add_argument(
        "--jwt-secret-file", help="file holding the HMAC secret (HS256) tokens are signed with"
    )
    group.add_argument(
        "--jwt-secret",
        help="the HMAC secret itself: process listings show it; prefer --jwt-secret-file",
    )
    group.add_argument(
        "--jwt-public-key", help="PEM public key (or certificate) for RS256/ES256/EdDSA tokens"
    )
    group.add_argument(
        "--jwt-algorithms",
        help="comma-separated algorithms accepted, of those the key can verify (default:"
        " HS256 with a secret; with a public key RS256, the EC key's own, or EdDSA for an"
        " Ed25519/Ed448 key)",
    )
    group.add_argument("--jwt-audience", help="the aud claim every token must carry")
    group.add_argument("--jwt-issuer", help="the iss claim every token must carry")
    group.add_argument(
        "--jwt-leeway", type=number, help="seconds of clock skew forgiven (default 0)"
    )
    group.add_argument(
        "--authorize",
        help="module:function(claims, room, action) -> bool replacing the rooms/publish claims",
    )


class _NoPasswordFlag(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        parser.error(
            "--kafka-password is not a flag: process listings show every flag's value;"
            " use --kafka-password-file or SOCKETIO_KAFKA_KAFKA_PASSWORD"
        )


def settings_from(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> Settings:
    """The node's settings from parsed ``serve`` flags: a flag wins over its
    ``SOCKETIO_KAFKA_*`` variable, which wins over the default.

    Raises `InvalidSettings` (a ValueError) for a malformed variable, ValueError for a value
    out of range.
    """
    given = {
        field.name: value
        for field in dataclasses.fields(Settings)
        if (value := getattr(args, field.name)) is not None
    }
    return Settings(**(env_settings(env) | given))


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .accept import gated_http
    from .app import create_app
    from .collector import pace_collector
    from .drain import DrainingServer
    from .errors import InvalidSettings
    from .openfiles import raise_open_file_limit
    from .websocket import CoalescingWebSocketProtocol

    try:
        settings = settings_from(args)
    except ValueError as exc:
        raise InvalidSettings(str(exc)) from exc
    logging.basicConfig(
        level=log_level(settings.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A descriptor per connection: a node at the soft limit resets new ones, silently.
    raise_open_file_limit(settings.max_connections)
    failures: list[SocketIOKafkaError] = []

    def stop(exc: SocketIOKafkaError) -> None:
        # Refused credentials, a failed TLS handshake: a node that stayed up unready would
        # hide them; exiting shows them, in one line, to whoever runs it.
        failures.append(exc)
        server.should_exit = True

    if settings.adapter == "redis":
        redis_url = settings.redis_url or _service("redis", None, None).start()
        app = create_app(dataclasses.replace(settings, redis_url=redis_url))
    else:
        app = create_app(
            settings,
            settings.kafka or f"kafka://{_service('kafka', None, None).start()}",
            on_failure=stop,
        )
    sio = app.state.node.sio
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # An address flooding handshakes is held, then reset, as it connects; one over its rate
        # is refused before uvicorn accepts its WebSocket.
        # A connection that does not send its request in time, or whose head is too large,
        # is closed; so are those that began their unfinished messages longest ago, once
        # all of those together are more than the node may hold.
        http=gated_http(
            sio.accepts, sio.holds, settings.read_timeout, sio.refused_request, sio.inbound
        ),
        ws=CoalescingWebSocketProtocol.gated(sio.admits, sio.inbound),
        ws_per_message_deflate=settings.ws_compression,
        # A message over the payload limit is refused at its frame's header, not read into
        # memory first (uvicorn's own bound is 16 MiB a connection); decompressed, if
        # compressed.
        ws_max_size=settings.max_payload_bytes,
        # Engine.IO's heartbeat (a ping every 25 s, answered within 20) finds a dead peer;
        # uvicorn's own WebSocket pings (every 20 s) did it again, at a timer and a frame
        # each way per connection: 3,000 idle clients cost a node 4.1-4.3% of a core with
        # them, 3.1% without (docs/decisions.md).
        ws_ping_interval=None,
        # Once the drain closed every client, what is left: requests in flight.
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout / 4)),
        timeout_keep_alive=settings.keep_alive_timeout,
        # The client address the limits key on: the peer, or X-Forwarded-For's last hop
        # with --trust-forwarded-for (limits.client_address), never uvicorn's rewrite.
        proxy_headers=False,
    )
    server = DrainingServer(config, sio, settings.drain_timeout)
    # What the node's frozen objects grow with: its Engine.IO connections.
    pace_collector(connections=lambda: len(sio.eio.sockets))
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run
        server.run()
    if failures:
        raise failures[0]
    return 0 if server.started else _UVICORN_STARTUP_FAILURE


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, DemoTokens, run_demo
    from .errors import InvalidSettings

    if args.nodes < 2:
        raise InvalidSettings(f"--nodes must be >= 2 (one to recover on), not {args.nodes}")
    # Its nodes run `serve`, which reads the environment: refused here, before anything starts.
    given: dict[str, object] = {"port": args.base_port}
    if args.jwt_secret_file:
        given["jwt_secret_file"] = args.jwt_secret_file
    try:
        tokens = DemoTokens.from_settings(Settings(**(env_settings() | given)))
    except ValueError as exc:
        raise InvalidSettings(str(exc)) from exc
    kafka = args.kafka or f"kafka://{_service('kafka', None, None).start()}"
    options = DemoOptions(
        kafka,
        args.nodes,
        args.base_port,
        args.channel,
        once=args.once,
        jwt_secret_file=args.jwt_secret_file,
    )
    return run_demo(options, tokens)


def _service_command(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return _run_service(_service(name, args.data_dir, args.port), args.action)

    return run


def _run_service(service: LocalKafka | LocalRedis, action: str) -> int:
    if action == "start":
        print(service.start())
    elif action == "stop":
        print("stopped" if service.stop() else "not running")
    else:
        status = service.status()
        print(f"running: pid {status.pid} at {status.address}" if status else "not running")
        return 0 if status else 3
    return 0


def _add_kafka_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--brokers",
        type=int,
        default=1,
        help="1: one broker; 3 or more: a local cluster of controller+broker nodes, 3 replicas"
        " and 2 in sync (default data dir: kafka-cluster beside the broker's)",
    )
    parser.add_argument(
        "--sasl-ssl",
        action="store_true",
        help="one broker only: add a SASL_SSL listener (a throwaway CA, one user for PLAIN"
        " and SCRAM-SHA-256/512); start prints its address, CA file and credentials",
    )
    parser.set_defaults(run=_kafka_command)


def _kafka_command(args: argparse.Namespace) -> int:
    from .errors import InvalidSettings

    if args.brokers == 1:
        from .local_kafka import LocalKafka

        kafka = LocalKafka(args.data_dir, args.port, secure=args.sasl_ssl)
        code = _run_service(kafka, args.action)
        if args.sasl_ssl and args.action == "start":
            print(f"sasl_ssl {kafka.secure_address}")
            print(f"ca_file {kafka.ca_file}")
            print(f"username {kafka.sasl_username}")
            print(f"password {kafka.sasl_password}")
        return code
    if args.brokers < 3:
        raise InvalidSettings(f"--brokers must be 1, or 3 or more (3 replicas), not {args.brokers}")
    if args.port is not None or args.sasl_ssl:
        raise InvalidSettings("--port and --sasl-ssl are for one broker (--brokers 1)")
    from .local_cluster import LocalKafkaCluster

    cluster = LocalKafkaCluster(args.data_dir, args.brokers)
    if args.action == "start":
        print(cluster.start())
    elif args.action == "stop":
        print("stopped" if cluster.stop() else "not running")
    else:
        statuses = cluster.status()
        for node in statuses:
            state = f"up, pid {node.pid}" if node.up else "down"
            where = f"at {node.address}" if node.address else "(never started)"
            print(f"node {node.node_id}: {state} {where}")
        return 0 if statuses and all(node.up for node in statuses) else 3
    return 0


def _service(name: str, data_dir: Path | None, port: int | None) -> LocalKafka | LocalRedis:
    # Imported here: a node given --kafka never loads the launchers.
    if name == "kafka":
        from .local_kafka import LocalKafka

        return LocalKafka(data_dir, port)
    from .local_redis import LocalRedis

    return LocalRedis(data_dir, port)
