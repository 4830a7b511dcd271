"""The record format on the events topic (documented in docs/wire-format.md).

A record's value is a UTF-8 JSON object: python-socketio's own pub/sub message plus a
version field ``v``. Its key is ``namespace`` or ``namespace#target`` and only steers
partitioning: everything addressed to one room (or one sid) shares a partition, so
Kafka keeps its order.
"""

from __future__ import annotations

import base64
from typing import Any

from socketio.packet import Packet

from . import fastjson
from .errors import RecordDecodeError

__all__ = [
    "FORMAT_VERSION",
    "Message",
    "decode",
    "emit_message",
    "encode",
    "record_key",
]

FORMAT_VERSION = 1

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
    room: str | None,
    skip_sid: str | list[str] | None,
    callback: tuple[str, str, int] | None,
    host_id: str,
) -> Message:
    """Build an ``emit`` message; binary parts travel base64-encoded after the JSON part."""
    args = list(data) if isinstance(data, tuple) else [data]
    binary = Packet.data_is_binary(args)
    if binary:
        args, attachments = Packet.deconstruct_binary(args)
        args = [args, *(base64.b64encode(a).decode() for a in attachments)]
    return {
        "method": "emit",
        "event": event,
        "data": args,
        "binary": binary,
        "namespace": namespace,
        "room": room,
        "skip_sid": skip_sid,
        "callback": list(callback) if callback else None,
        "host_id": host_id,
    }


def record_key(message: Message) -> bytes:
    """Partitioning key: the namespace, plus the room or sid the operation targets."""
    namespace = message.get("namespace") or "/"
    target = message.get(_TARGET_FIELD.get(message["method"], "room"))
    if isinstance(target, list):  # an emit to several rooms: ordered with the first one
        target = target[0] if target else None
    return (namespace if target is None else f"{namespace}#{target}").encode()


def encode(message: Message) -> bytes:
    return fastjson.dumpb({"v": FORMAT_VERSION, **message})


def decode(value: bytes | None) -> Message:
    """Parse and validate one record value; anything off raises `RecordDecodeError`."""
    if value is None:
        raise RecordDecodeError("empty record")
    try:
        message = fastjson.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RecordDecodeError(f"not JSON: {exc}") from exc
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
    if method == "emit" and not _valid_emit_payload(message):
        raise RecordDecodeError("emit: malformed data or callback")
    message.setdefault("namespace", "/")
    return message


def _valid_emit_payload(message: Message) -> bool:
    data = message["data"]
    if not data:
        return False
    if message.get("binary") and not all(isinstance(a, str) for a in data[1:]):
        return False
    callback = message.get("callback")
    return callback is None or (
        len(callback) == 3
        and isinstance(callback[0], str)
        and isinstance(callback[1], str)
        and isinstance(callback[2], int)
    )
