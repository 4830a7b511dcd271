"""Closing a client's TCP connection at once, where its server offers a way to.

A socket cut for not reading leaves Engine.IO's writer in a send its client never
takes: only closing the connection under it ends it. The gateway's WebSocket protocol offers
one in each connection's ASGI scope (`gateway/websocket.py`); other servers do not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ABORT", "abort_connection"]

#: The ASGI scope extension of a connection that can be closed at once:
#: ``scope["extensions"][ABORT]["abort"]()`` closes its TCP connection, unsent bytes
#: dropped, nothing more read.
ABORT = "socketio_kafka.abort"


def abort_connection(environ: Mapping[str, Any] | None) -> bool:
    """Close the connection of an Engine.IO ``environ`` at once; False where it offers no
    way."""
    scope = (environ or {}).get("asgi.scope") or {}
    extension = (scope.get("extensions") or {}).get(ABORT)
    if extension is None:
        return False
    extension["abort"]()
    return True
