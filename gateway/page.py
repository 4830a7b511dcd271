"""The demo page at ``/``: a small chat on the official Socket.IO client, served by the node.

The client script is socket.io-client's own build, installed by ``npm ci`` from the lock
file in ``static/`` (the project's install step does it) and served from here: the page
loads nothing from a CDN. ``/node`` tells the page which node a connection reached.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

__all__ = ["CLIENT_SCRIPT", "STATIC", "routes"]

STATIC = Path(__file__).resolve().parent / "static"
CLIENT_SCRIPT = STATIC / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"
logger = logging.getLogger("socketio_kafka.gateway.page")
_PAGE_FILES = {"index.html": "text/html", "demo.js": "text/javascript", "demo.css": "text/css"}


def routes() -> list[Route]:
    """``/`` and its files, and ``/node``: what the demo page needs from a node; a warning
    when its client script is missing (the page's 503 was the first sign)."""
    if not CLIENT_SCRIPT.is_file():
        logger.warning("the demo page's client is missing: run npm ci --prefix %s", STATIC)
    return [
        Route("/", _file("index.html")),
        Route("/node", _node),
        Route("/static/socket.io.min.js", _client_script),
        *(Route(f"/static/{name}", _file(name)) for name in _PAGE_FILES if name != "index.html"),
    ]


def _file(name: str) -> Callable[[Request], Awaitable[Response]]:
    path, media_type = STATIC / name, _PAGE_FILES[name]

    async def serve(_: Request) -> Response:
        return FileResponse(path, media_type=media_type)

    return serve


async def _client_script(_: Request) -> Response:
    if not CLIENT_SCRIPT.is_file():  # a checkout where the install step has not run
        return PlainTextResponse(
            f"socket.io-client is not installed: run npm ci --prefix {STATIC}", status_code=503
        )
    return FileResponse(CLIENT_SCRIPT, media_type="text/javascript")


async def _node(request: Request) -> Response:
    """This node's name: its host and the port it serves on (as bound, whatever the
    settings say). A page connected to several nodes asks each, so any origin may read it."""
    server = request.scope.get("server")
    port = server[1] if server else None
    name = f"{socket.gethostname()}:{port}" if port is not None else socket.gethostname()
    return JSONResponse({"node": name}, headers={"Access-Control-Allow-Origin": "*"})
