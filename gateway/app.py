"""The gateway node: a Starlette app serving Socket.IO on the Kafka manager."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import socketio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from socketio_kafka.adapter import AsyncKafkaManager, SocketIOKafkaError, fastjson
from socketio_kafka.adapter.recovery import RecoveryOptions

from . import page, protocol
from .brokers import RedisManager
from .hooks import load_hook
from .identity import IdentityServer
from .metrics import node_registry
from .permissions import Permissions, default_authorize, load_authorize
from .settings import Settings

__all__ = ["Node", "create_app", "load_extension"]

logger = logging.getLogger("socketio_kafka.gateway")

Extension = Callable[[socketio.AsyncServer], None]
#: Called with an error no retry can fix (refused credentials, a failed TLS handshake, a
#: topic layout that would lose events) when the node's manager cannot start.
OnFailure = Callable[[SocketIOKafkaError], None]
Manager = AsyncKafkaManager | RedisManager
_SOCKETIO_PREFIX = "/socket.io/"


@dataclass(frozen=True, slots=True)
class Node:
    """What `create_app` builds, for apps and tests that add their own handlers."""

    sio: socketio.AsyncServer
    manager: Manager
    settings: Settings


def create_app(
    settings: Settings, kafka_url: str | None = None, *, on_failure: OnFailure | None = None
) -> Starlette:
    """Build a gateway node on Kafka at ``kafka_url`` (default: ``settings.kafka``).

    With ``settings.adapter == "redis"`` the node runs on python-socketio's Redis manager at
    ``settings.redis_url`` instead, for comparisons. ``app.state.node`` holds its parts.
    ``on_failure`` gets a start error no retry can fix (``serve`` exits with it); without
    it, the node logs the error in one line and stays unready.
    """
    manager: Manager
    if settings.adapter == "redis":
        manager = RedisManager(
            _required(settings.redis_url, "redis_url"),
            channel=settings.channel,
            logger=logging.getLogger("socketio_kafka.adapter"),
        )
    else:
        manager = AsyncKafkaManager(
            _required(kafka_url or settings.kafka, "kafka_url"),
            channel=settings.channel,
            logger=logging.getLogger("socketio_kafka.adapter"),
            options=settings.kafka_options,
            limits=settings.outbox_limits,
        )
    # Redis pub/sub keeps no events to replay: a node on it never recovers a session.
    recovering = settings.recovery and isinstance(manager, AsyncKafkaManager)
    recovery = RecoveryOptions(settings.recovery_window) if recovering else None
    # Guarded: python-socketio alone trusts a client's attachment counts and event names.
    verifier = settings.token_verifier
    if verifier is None:
        logger.warning("no JWT key: this node is open, any client may join and publish anywhere")
    authorize = load_authorize(settings.authorize) if settings.authorize else default_authorize
    sio = IdentityServer(
        async_mode="asgi",
        client_manager=manager,
        connection_state_recovery=recovery,
        cors_allowed_origins=settings.cors_allowed_origins,
        max_http_buffer_size=settings.max_payload_bytes,
        json=fastjson,
        limits=settings.limits,
        verifier=verifier,
        permissions=Permissions(authorize),
    )
    if isinstance(manager, AsyncKafkaManager):  # set after the server: it sets a floor
        manager.publishes.window_s = settings.publish_window_s
    protocol.register(sio, limits=sio.limits)
    if settings.extension:
        load_extension(settings.extension)(sio)
    node = Node(sio, manager, settings)
    registry = node_registry(manager, sio)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        if sio.draining:  # at once: a balancer stops sending clients here
            return JSONResponse({"ready": False, "reasons": ["draining"]}, status_code=503)
        if isinstance(manager, AsyncKafkaManager):
            # From what the node already knows: answers in a millisecond whatever Kafka does.
            health = manager.health()
            body: dict[str, Any] = {"ready": health.ready, "reasons": list(health.reasons)}
        else:
            body = {"ready": manager.ready and await manager.broker_reachable()}
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    engineio = socketio.ASGIApp(sio, socketio_path="")
    app = _Gateway(
        engineio,
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            *page.routes(),  # the demo page at /
            Mount("/socket.io", engineio),
        ],
        lifespan=_lifespan(sio, manager, on_failure),
    )
    app.state.node = node
    return app


class _Gateway(Starlette):
    """Starlette for the node's own routes, with Socket.IO's requests sent straight on.

    A WebSocket's ASGI call lasts as long as its connection: through Starlette's
    middleware and Mount, every connection would also keep their coroutine frames and
    child scope, about 2 KB (benchmarks/memory.py). What Starlette did for them, routing
    ``/socket.io/``, is a prefix test here; anything else (``/socket.io`` alone) goes the
    Starlette way as before.
    """

    def __init__(self, engineio: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._engineio = engineio

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" and scope["path"].startswith(_SOCKETIO_PREFIX):
            await self._engineio(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def load_extension(spec: str) -> Extension:
    """Resolve ``module:function``; the function gets the `socketio.AsyncServer` to extend."""
    extension: Extension = load_hook(spec, "extension")
    return extension


def _lifespan(
    sio: socketio.AsyncServer, manager: Manager, on_failure: OnFailure | None
) -> Callable[[Starlette], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # Start in the background: /healthz answers at once, /readyz once Kafka does.
        starting = asyncio.create_task(_start(manager, on_failure))
        try:
            yield
        finally:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            # Close every client (they reconnect elsewhere, their sessions kept for
            # recovery), then flush what was produced.
            await sio.shutdown()
            await manager.stop()

    return lifespan


async def _start(manager: Manager, on_failure: OnFailure | None) -> None:
    try:
        await manager.start()
    except asyncio.CancelledError:
        raise
    except SocketIOKafkaError as exc:  # start retries what is retriable: this one is not
        if on_failure is not None:
            on_failure(exc)
        else:  # one line: the message names the cause, a traceback would bury it
            logger.error(  # noqa: TRY400
                "the %s manager cannot start; this node stays unready: %s", manager.name, exc
            )
    except Exception as exc:  # not one of ours: a traceback, then as any refusal
        logger.exception("the %s manager cannot start; this node stays unready", manager.name)
        if on_failure is not None:
            on_failure(SocketIOKafkaError(f"the {manager.name} manager cannot start: {exc!r}"))


def _required(url: str | None, name: str) -> str:
    if not url:
        raise ValueError(f"the node's {name} is not set")
    return url
