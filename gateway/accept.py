"""uvicorn's HTTP protocol with a gate at accept: a flooding address gets a reset, not a parse.

A refused handshake is cheap (`CoalescingWebSocketProtocol.gated`), but it is still an HTTP
request parsed, a WebSocket handshake parsed and a 403 written: about 0.2 ms of the node's
only core, and a flooder that is answered quickly asks again. Here the gate is asked as the
connection is made, from its peer address alone, and a connection it refuses is reset
before uvicorn reads a byte of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = ["AcceptGate", "gated_http"]

#: ``gate(peer_host)``: False resets the connection as it is accepted.
AcceptGate = Callable[[str | None], bool]


def gated_http(gate: AcceptGate) -> type[asyncio.Protocol]:
    """uvicorn's own HTTP protocol (httptools, else h11), ``gate`` asked first."""

    class GatedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)  # uvicorn's bookkeeping, undone by the reset
            peer = transport.get_extra_info("peername")
            if not gate(peer[0] if peer else None):
                transport.abort()

    return GatedHTTPProtocol
