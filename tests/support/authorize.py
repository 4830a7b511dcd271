"""An ``--authorize`` hook for tests: rooms by team, publishing by role (async, as a hook
that asks a database would be)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from typing import Any


async def team_rooms(claims: Mapping[str, Any], room: str, action: str) -> bool:
    if not room.startswith(f"{claims.get('team')}:"):
        return False
    return action == "join" or claims.get("role") == "writer"


_calls = itertools.count()
#: Questions `uneven` was asked, and answers it gave: for a test to know where it is.
asked = answered = 0


async def uneven(claims: Mapping[str, Any], room: str, action: str) -> bool:
    """Allows any room but those of a ``banned`` claim; every other answer comes late (a
    cache miss), as does any for a room named ``*:slow``."""
    global asked, answered
    asked += 1
    if next(_calls) % 2 == 0 or room.endswith(":slow"):
        await asyncio.sleep(0.05)
    answered += 1
    return room not in claims.get("banned", ())
