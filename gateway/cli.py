"""``socketio-kafka``: run a gateway node, and the local Kafka and Redis it can use."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .settings import ADAPTERS, Settings, env_default

if TYPE_CHECKING:
    from .local_kafka import LocalKafka
    from .local_redis import LocalRedis

__all__ = ["build_parser", "main", "settings_from"]

_SERVICES = ("kafka", "redis")


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import GatewayError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except GatewayError as exc:
        print(f"socketio-kafka: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="socketio-kafka", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands.add_parser("serve", help="run one gateway node"))
    demo = commands.add_parser("demo", help="local Kafka + N nodes + clients across them")
    demo.add_argument("--nodes", type=int, default=3)
    demo.add_argument("--base-port", type=int, default=8001)
    demo.add_argument("--kafka", default=env_default("kafka", None))
    demo.add_argument("--once", action="store_true", help="exit after the exchange")
    demo.set_defaults(run=_demo)
    for name in _SERVICES:
        service = commands.add_parser(name, help=f"start, stop or check a local {name}")
        service.add_argument("action", choices=["start", "stop", "status"])
        service.add_argument("--port", type=int, default=None, help="default: a free port")
        service.add_argument("--data-dir", type=Path, default=None)
        service.set_defaults(run=_service_command(name))
    return parser


def _add_serve(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    parser.add_argument("--host", default=env_default("host", defaults.host))
    _numeric(parser, defaults, "port", int)
    parser.add_argument(
        "--kafka",
        default=env_default("kafka", None),
        help="kafka://host:port[,host:port]; default: the local broker of 'socketio-kafka kafka'",
    )
    parser.add_argument(
        "--adapter",
        choices=ADAPTERS,
        default=env_default("adapter", defaults.adapter),
        help="the client manager: kafka (ours) or redis (python-socketio's AsyncRedisManager)",
    )
    parser.add_argument(
        "--redis-url",
        default=env_default("redis_url", None),
        help="redis://host:port/db for --adapter redis; default: the local redis of"
        " 'socketio-kafka redis'",
    )
    parser.add_argument("--channel", default=env_default("channel", defaults.channel))
    _numeric(parser, defaults, "partitions", int)
    _numeric(
        parser,
        defaults,
        "kafka_timeout_ms",
        int,
        "how long a publish waits for Kafka before its ack reports an error",
    )
    _numeric(
        parser,
        defaults,
        "linger_ms",
        int,
        "how long a publish waits to share a Kafka request with others (default 2)",
    )
    _numeric(
        parser,
        defaults,
        "fetch_interval_ms",
        float,
        "at most one Kafka fetch per this interval under load (default 5; 0: no pacing)",
    )
    parser.add_argument("--cors-origins", default=env_default("cors_origins", "*"))
    _numeric(parser, defaults, "max_payload_bytes", int)
    parser.add_argument(
        "--ws-compression",
        action=argparse.BooleanOptionalAction,
        default=env_default("ws_compression", "0") in ("1", "true", "yes"),
        help="permessage-deflate on WebSockets (default off: it halves throughput)",
    )
    parser.add_argument(
        "--extension",
        default=env_default("extension", None),
        help="module:function called with the AsyncServer to add handlers",
    )
    parser.add_argument(
        "--recovery",
        action=argparse.BooleanOptionalAction,
        default=env_default("recovery", "1") in ("1", "true", "yes"),
        help="connection state recovery over Kafka offsets (default on)",
    )
    _numeric(
        parser,
        defaults,
        "recovery_window",
        float,
        "seconds a disconnected client's session is kept",
    )
    parser.add_argument("--log-level", default=env_default("log_level", defaults.log_level))
    parser.set_defaults(run=_serve)


def _numeric(
    parser: argparse.ArgumentParser,
    defaults: Settings,
    name: str,
    kind: type[int] | type[float],
    text: str = "",
) -> None:
    """``--<name>`` for a numeric setting: ``SOCKETIO_KAFKA_<NAME>`` if set, else its default."""
    default = str(getattr(defaults, name))
    parser.add_argument(
        "--" + name.replace("_", "-"),
        type=kind,
        default=kind(env_default(name, default) or 0),
        help=text or None,
    )


def settings_from(args: argparse.Namespace) -> Settings:
    """The node's settings from parsed ``serve`` flags (whose defaults read the environment)."""
    return Settings(
        host=args.host,
        port=args.port,
        kafka=args.kafka,
        adapter=args.adapter,
        redis_url=args.redis_url,
        channel=args.channel,
        partitions=args.partitions,
        kafka_timeout_ms=args.kafka_timeout_ms,
        linger_ms=args.linger_ms,
        fetch_interval_ms=args.fetch_interval_ms,
        cors_origins=args.cors_origins,
        max_payload_bytes=args.max_payload_bytes,
        ws_compression=args.ws_compression,
        extension=args.extension,
        recovery=args.recovery,
        recovery_window=args.recovery_window,
        log_level=args.log_level,
    )


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .errors import InvalidSettings
    from .websocket import CoalescingWebSocketProtocol

    try:
        settings = settings_from(args)
    except ValueError as exc:
        raise InvalidSettings(str(exc)) from exc
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.adapter == "redis":
        redis_url = settings.redis_url or _service("redis", None, None).start()
        app = create_app(dataclasses.replace(settings, redis_url=redis_url))
    else:
        app = create_app(
            settings, settings.kafka or f"kafka://{_service('kafka', None, None).start()}"
        )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ws=CoalescingWebSocketProtocol,
        ws_per_message_deflate=settings.ws_compression,
        timeout_graceful_shutdown=10,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, run_demo

    kafka = args.kafka or f"kafka://{_service('kafka', None, None).start()}"
    return run_demo(DemoOptions(kafka, args.nodes, args.base_port, once=args.once))


def _service_command(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        service = _service(name, args.data_dir, args.port)
        if args.action == "start":
            print(service.start())
        elif args.action == "stop":
            print("stopped" if service.stop() else "not running")
        else:
            status = service.status()
            print(f"running: pid {status.pid} at {status.address}" if status else "not running")
            return 0 if status else 3
        return 0

    return run


def _service(name: str, data_dir: Path | None, port: int | None) -> LocalKafka | LocalRedis:
    # Imported here: a node given --kafka never loads the launchers.
    if name == "kafka":
        from .local_kafka import LocalKafka

        return LocalKafka(data_dir, port)
    from .local_redis import LocalRedis

    return LocalRedis(data_dir, port)
