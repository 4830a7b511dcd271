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
#: engineio.json's bound (python-socketio's default parser), kept when orjson stands in.
MAX_INT_DIGITS = 100


def dumpb(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON bytes."""
    try:
        return orjson.dumps(obj, option=_OPTIONS)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def dumpb_strict(obj: Any) -> bytes:
    """``dumpb``, but a `ValueError` for what is not JSON in UTF-8, where the standard
    library writes it when orjson cannot (integers beyond 64 bits beside it): NaN and
    Infinity, lone surrogates. (orjson itself writes NaN as null, as JavaScript does.)"""
    try:
        return orjson.dumps(obj, option=_OPTIONS)
    except TypeError:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode()  # UnicodeEncodeError (a ValueError) for a lone surrogate


def dumps(obj: Any, **_: Any) -> str:
    """``obj`` as compact JSON text."""
    return dumpb(obj).decode()


def loads(text: str | bytes | bytearray, **_: Any) -> Any:
    """Parse JSON; the standard library's error (a ValueError) if it is not JSON.

    Integers longer than `MAX_INT_DIGITS` digits are refused, as Engine.IO's own parser
    does: a node relaying one would hand python-socketio clients a packet they reject.
    So are unpaired surrogate escapes (``"\\ud800"``), which orjson refuses.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if "surrogate in string" in str(exc):
            # A lone surrogate escape: not Unicode text, so no key, record or client
            # could take it further (the standard library alone would accept it).
            raise
        # Raises, or accepts what only it reads (NaN, say).
        return json.loads(text, parse_int=_bounded_int)


def _bounded_int(digits: str) -> int:
    if len(digits) > MAX_INT_DIGITS:
        raise ValueError(f"integer longer than {MAX_INT_DIGITS} digits")
    return int(digits)
