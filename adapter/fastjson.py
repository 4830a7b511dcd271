"""JSON through orjson, behind the ``dumps``/``loads`` interface python-socketio expects.

Pass the module as ``socketio.AsyncServer(json=fastjson)``: Socket.IO and Engine.IO then
encode every packet with it. The manager's records use it too. orjson writes compact JSON
(``separators`` and other stdlib keywords are accepted and ignored); what it refuses (an
integer beyond 64 bits, for one) goes to the standard library, so nothing that encoded
before fails now. Measured in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumpb", "dumps", "loads"]

_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumpb(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON bytes."""
    try:
        return orjson.dumps(obj, option=_OPTIONS)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def dumps(obj: Any, **_: Any) -> str:
    """``obj`` as compact JSON text."""
    return dumpb(obj).decode()


def loads(text: str | bytes | bytearray, **_: Any) -> Any:
    """Parse JSON; the standard library's error (a ValueError) if it is not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # raises, or accepts what only it reads (NaN, say)
