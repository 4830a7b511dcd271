"""An ``--authorize`` hook for tests: rooms by team, publishing by role (async, as a hook
that asks a database would be)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


async def team_rooms(claims: Mapping[str, Any], room: str, action: str) -> bool:
    if not room.startswith(f"{claims.get('team')}:"):
        return False
    return action == "join" or claims.get("role") == "writer"
