"""The record format on the events topic (documented in docs/wire-format.md).

A record's value is a UTF-8 JSON object: python-socketio's own pub/sub message plus a
version field ``v``. Its key is ``namespace`` or ``namespace#target`` and only steers
partitioning: everything addressed to one room (or one sid) shares a partition, so
Kafka keeps its order.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import orjson
from socketio.packet import Packet

from . import fastjson
from .errors import PayloadError, RecordDecodeError

__all__ = [
    "FORMAT_VERSION",
    "MAX_DEPTH",
    "Message",
    "callback_message",
    "decode",
    "emit_message",
    "encode",
    "parse_json",
    "plain_targets",
    "readable_json",
    "record_key",
    "unpacked",
]

FORMAT_VERSION = 1
#: Deepest nesting a record may have (the record object is level 1, an emit's argument
#: array level 2). Deeper ones are refused: python-socketio rebuilds binary arguments and
#: the standard json encodes packets by recursion, which ends in RecursionError near
#: 1,000 levels; orjson encodes at most 255. See docs/wire-format.md.
MAX_DEPTH = 128

Message = dict[str, Any]

_TARGET_FIELD = {
    "emit": "room",
    "enter_room": "room",
    "leave_room": "room",
    "close_room": "room",
    "disconnect": "sid",
    "callback": "sid",
}
# Field types as JSON decodes them: exact types, so a bool is not taken for an int.
_REQUIRED: dict[str, tuple[tuple[str, frozenset[type]], ...]] = {
    "emit": (("event", frozenset({str})), ("data", frozenset({list}))),
    "enter_room": (("sid", frozenset({str})), ("room", frozenset({str}))),
    "leave_room": (("sid", frozenset({str})), ("room", frozenset({str}))),
    "close_room": (("room", frozenset({str})),),
    "disconnect": (("sid", frozenset({str})),),
    "callback": (
        ("sid", frozenset({str})),
        ("id", frozenset({int})),
        ("args", frozenset({list})),
        ("host_id", frozenset({str})),
    ),
}
_ABSENT = object()
_OPTIONAL: dict[str, frozenset[type]] = {
    "namespace": frozenset({str}),
    "host_id": frozenset({str}),
    "room": frozenset({str, list, type(None)}),
    "binary": frozenset({bool}),
    "skip_sid": frozenset({str, list, type(None)}),
    "callback": frozenset({list, type(None)}),
}


def emit_message(
    event: str,
    data: Any,
    *,
    namespace: str,
    room: str | list[str] | None,
    skip_sid: str | list[str] | None,
    callback: tuple[str, str, int] | None,
    host_id: str,
) -> Message:
    """Build an ``emit`` message; binary parts travel base64-encoded after the JSON part.

    ``data`` becomes the arguments as python-socketio's own manager makes them: a tuple
    is several, None is none, anything else is one.
    """
    args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
    packed, binary = _packed(args)
    return {
        "method": "emit",
        "event": event,
        "data": packed,
        "binary": binary,
        "namespace": namespace,
        "room": room,
        "skip_sid": skip_sid,
        "callback": list(callback) if callback else None,
        "host_id": host_id,
    }


def callback_message(
    host_id: str, sid: str, namespace: str, ack_id: int, args: list[Any]
) -> Message:
    """A client's answer to an ack, for the node that asked (``host_id``): its binary
    parts travel as an emit's do (python-socketio's pub/sub managers pickle them)."""
    packed, binary = _packed(args)
    message: Message = {
        "method": "callback",
        "host_id": host_id,
        "sid": sid,
        "namespace": namespace,
        "id": ack_id,
        "args": packed,
    }
    if binary:
        message["binary"] = True
    return message


def unpacked(data: list[Any]) -> list[Any]:
    """Arguments packed binary (``[arguments with placeholders, *base64 attachments]``),
    their attachments put back in place."""
    attachments = [base64.b64decode(a) for a in data[1:]]
    args: list[Any] = Packet.reconstruct_binary(data[0], attachments)
    return args


def _packed(args: list[Any]) -> tuple[list[Any], bool]:
    """``args`` as a record holds them, and whether they held bytes."""
    if not _is_binary(args):
        return args, False
    structure, attachments = Packet.deconstruct_binary(args)
    return [structure, *(base64.b64encode(a).decode() for a in attachments)], True


def _is_binary(args: list[Any]) -> bool:
    """``Packet.data_is_binary``, answered by orjson when it can: it refuses bytes, so data
    it encodes holds none, at a fifth of the cost of that recursive walk (every publish
    pays it). Whatever orjson refuses is walked, so the answer is always the walk's."""
    try:
        orjson.dumps(args)
    except TypeError:  # bytes, or a type orjson does not encode: walk it
        binary: bool = Packet.data_is_binary(args)
        return binary
    return False


def record_key(message: Message) -> bytes:
    """Partitioning key: the namespace, plus the room or sid the operation targets.

    An emit to several rooms is keyed by the namespace, as a broadcast: a replay reads the
    partitions of a session's rooms and its namespace's key, and finds it there whichever
    room the session is in (keyed by its first room, it was on that room's partition only).
    """
    namespace = message.get("namespace") or "/"
    target = message.get(_TARGET_FIELD.get(message["method"], "room"))
    if isinstance(target, list):
        target = target[0] if len(target) == 1 else None
    return (namespace if target is None else f"{namespace}#{target}").encode()


def encode(message: Message) -> bytes:
    """The record's value; `PayloadError` for what no node would decode (`decode`): NaN
    or Infinity, a lone surrogate, nesting deeper than `MAX_DEPTH`. Written, such a record
    was acknowledged, then skipped by every node: the emit told success, nobody got it."""
    try:
        return readable_json({"v": FORMAT_VERSION, **message})
    except ValueError as exc:
        raise PayloadError(f"{message['method']}: data is not JSON a node can read: {exc}") from exc


def readable_json(obj: Any) -> bytes:
    """``obj`` as JSON `parse_json` reads back; `ValueError` for NaN or Infinity, a lone
    surrogate, nesting deeper than `MAX_DEPTH` (a `TypeError` for what is not JSON)."""
    value = fastjson.dumpb_strict(obj)
    if value.count(b"[") + value.count(b"{") > MAX_DEPTH and _too_deep(obj):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return value


def decode(value: bytes | None) -> Message:
    """Parse and validate one record value; anything off raises `RecordDecodeError`.

    A record that decodes is one the fan-out can deliver: its targets are strings, and
    an emit's binary attachments fit its placeholders.
    """
    if value is None:
        raise RecordDecodeError("empty record")
    message = parse_json(value)
    if not isinstance(message, dict):
        raise RecordDecodeError("not a JSON object")
    if message.get("v") != FORMAT_VERSION:
        raise RecordDecodeError(f"unsupported format version {message.get('v')!r}")
    method = message.get("method")
    required = _REQUIRED.get(method) if isinstance(method, str) else None
    if required is None:
        raise RecordDecodeError(f"unknown method {method!r}")
    for name, kinds in required:
        if type(message.get(name)) not in kinds:
            raise RecordDecodeError(f"{method}: field {name!r} missing or of the wrong type")
    for name, kinds in _OPTIONAL.items():
        field = message.get(name, _ABSENT)
        if field is not _ABSENT and type(field) not in kinds:
            raise RecordDecodeError(f"{method}: field {name!r} of the wrong type")
    if not _valid_targets(message):
        raise RecordDecodeError(f"{method}: room or skip_sid not a string or strings")
    if method == "emit" and not _valid_emit_payload(message):
        raise RecordDecodeError("emit: malformed data or callback")
    if method == "callback" and message.get("binary") and not _attachments_fit(message["args"]):
        raise RecordDecodeError("callback: malformed binary arguments")
    message.setdefault("namespace", "/")
    return message


def parse_json(value: bytes) -> Any:
    """Strict JSON, at most `MAX_DEPTH` deep; `RecordDecodeError` for anything else.

    orjson reads almost every record. It reads integers beyond 64 bits as floats, so a
    record with a run of 19 digits goes to the standard library, which keeps them exact
    (as python-socketio writes them). What neither accepts is refused: NaN and Infinity
    (not JSON), and lone surrogates (not UTF-8: no key or frame could carry them).
    """
    strict = _LONG_DIGIT_RUN not in value.translate(_DIGITS_TO_ZERO)
    try:
        parsed = orjson.loads(value) if strict else _parse_stdlib(value)
    except orjson.JSONDecodeError:  # deeper than orjson's 1,024 levels, or not JSON
        strict = False
        parsed = _parse_stdlib(value)
    # Fewer brackets than the limit cannot nest deeper than it: most records stop here.
    if value.count(b"[") + value.count(b"{") > MAX_DEPTH and _too_deep(parsed):
        raise RecordDecodeError(f"nested deeper than {MAX_DEPTH} levels")
    if not strict:
        try:
            json.dumps(parsed, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            raise RecordDecodeError("a string is not valid Unicode") from exc
    return parsed


# Digits to "0", all else to " ": a run of 19 zeros then marks a number orjson may misread.
_DIGITS_TO_ZERO = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def _parse_stdlib(value: bytes) -> Any:
    try:
        return json.loads(value, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:  # json recurses per level: far beyond MAX_DEPTH anyway
        raise RecordDecodeError(f"nested deeper than {MAX_DEPTH} levels") from exc
    except ValueError as exc:  # UnicodeDecodeError included
        raise RecordDecodeError(f"not JSON: {exc}") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range")
    return number


def _too_deep(parsed: Any) -> bool:
    """Whether containers nest beyond `MAX_DEPTH`, found level by level, without recursion."""
    level = [parsed]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for item in level
            for child in (item if type(item) is list else item.values())
            if type(child) is list or type(child) is dict
        ]
        if not level:
            return False
    return True


def plain_targets(message: Message) -> None:
    """Make its rooms and sids plain strings, as every node reads them (a `StrEnum`'s
    value; a sequence of them a list); `TypeError` for what is none: python-socketio takes
    a room ``42`` here, and every node skipped the record."""
    for name in ("room", "skip_sid", "sid"):
        value = message.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            message[name] = str.__str__(value)
        elif (
            isinstance(value, list | tuple)
            and (value or name != "room")  # python-socketio reads a room list's first
            and all(isinstance(item, str) for item in value)
        ):
            message[name] = [str.__str__(item) for item in value]
        else:
            raise TypeError(
                f"{message['method']}: rooms and sids travel as strings (JSON); got "
                f"{name}={value!r}"
            )


def _valid_targets(message: Message) -> bool:
    """Rooms and skipped sids are looked up in sets: a list of them must hold strings only.

    An empty room list is refused too: python-socketio reads its first element.
    """
    room = message.get("room")
    skip = message.get("skip_sid")
    rooms_ok = not isinstance(room, list) or (bool(room) and all(type(r) is str for r in room))
    return rooms_ok and (not isinstance(skip, list) or all(type(s) is str for s in skip))


def _valid_emit_payload(message: Message) -> bool:
    if message.get("binary") and not _attachments_fit(message["data"]):
        return False
    callback = message.get("callback")
    return callback is None or (
        len(callback) == 3
        and type(callback[0]) is str
        and type(callback[1]) is str
        and type(callback[2]) is int
    )


def _attachments_fit(data: list[Any]) -> bool:
    """A binary emit is ``[arguments with placeholders, *base64 attachments]``: rebuild it
    as the fan-out will, so a placeholder out of range or bad base64 is refused here."""
    if not data or type(data[0]) is not list:
        return False
    try:
        unpacked(data)
    except (ValueError, TypeError, IndexError):  # binascii.Error is a ValueError
        return False
    return True
