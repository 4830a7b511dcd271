"""An ASGI app served by uvicorn inside the test's event loop, on a free port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from socketio_kafka.gateway.settings import Settings

from .cluster import free_port
from .waiting import wait_until


@contextlib.asynccontextmanager
async def run_server(
    app: Any, ws: Any = "auto", http: Any = "auto", deflate: bool = False
) -> AsyncIterator[str]:
    """Serve ``app`` until the block ends (``ws``, ``http``: uvicorn's WebSocket and HTTP
    protocols; ``deflate``: permessage-deflate offered); yields its base URL."""
    port = free_port()
    # As the gateway serves (--ws-compression is off by default): with permessage-deflate a
    # client's kernel buffers would take megabytes of repetitive test payloads.
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        ws=ws,
        http=http,
        ws_per_message_deflate=deflate,
        # As the gateway keeps idle connections: past aiohttp's 15 s. uvicorn's own 5 s lost
        # a polling client, rarely, its connection, when it reused one as the server closed
        # it (CI in sessions 33 and 36: "transport error", then a new session in no room).
        timeout_keep_alive=Settings().keep_alive_timeout,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started, 15, "uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
