"""Which rooms a socket may join or publish into, decided from its token's claims.

By default a ``rooms`` claim lists the rooms a socket may join and a ``publish`` claim the
rooms it may publish into, as names or glob patterns (`fnmatch.fnmatchcase`: ``chat:*``,
``team-?``); a socket may always join its own room (`user_room`). ``--authorize
module:function`` replaces that decision with the app's own.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from .auth import Claims, user_room
from .hooks import load_hook

__all__ = ["Action", "Authorize", "Gate", "Permissions", "default_authorize", "load_authorize"]

logger = logging.getLogger("socketio_kafka.gateway")

Action = Literal["join", "publish"]
#: Given a token's claims, a room and an action; True allows it (sync or async).
Authorize = Callable[[Mapping[str, Any], str, Action], bool | Awaitable[bool]]
_CLAIM_OF: dict[Action, str] = {"join": "rooms", "publish": "publish"}


@runtime_checkable
class Gate(Protocol):
    """What the client protocol asks before it acts: the gateway's server answers."""

    async def allows(self, sid: str, namespace: str, room: str, action: Action) -> bool: ...

    async def refresh(
        self,
        sid: str,
        namespace: str,
        token: object,
        earlier: Callable[[], Awaitable[None]] | None = None,
    ) -> float | None:
        """Take a fresh token; its ``exp``. Raises `TokenRefused`. ``earlier``: awaited
        before the rooms the new claims do not allow are left (the socket's requests
        before this one acting first)."""

    def subject(self, sid: str, namespace: str) -> str | None:
        """The socket's subject (its token's ``sub``); None once it has gone."""


def default_authorize(claims: Mapping[str, Any], room: str, action: Action) -> bool:
    """A room its claim's names or patterns match; joining one's own room always."""
    if action == "join" and room == user_room(str(claims.get("sub"))):
        return True
    patterns = claims.get(_CLAIM_OF[action], ())
    return any(fnmatch.fnmatchcase(room, pattern) for pattern in patterns)


class Permissions:
    """Runs the decision; a hook that raises or answers anything but True refuses."""

    def __init__(self, authorize: Authorize = default_authorize) -> None:
        self._authorize = authorize

    async def allows(self, claims: Claims, room: str, action: Action) -> bool:
        try:
            allowed = self._authorize(claims.raw, room, action)
            if inspect.isawaitable(allowed):
                allowed = await allowed
        except Exception:
            logger.exception("the authorize hook raised on %s %r; refused", action, room)
            return False
        return allowed is True


def load_authorize(spec: str) -> Authorize:
    """Resolve ``module:function``, the app's replacement for `default_authorize`."""
    authorize: Authorize = load_hook(spec, "authorize")
    return authorize
