"""One source record in, one record for ``<channel>.events`` out: the very record
`AsyncKafkaManager.emit` would write for the same emit (key, ``sio.*`` headers, value),
so that nodes deliver it, and replays recover it, as any other emit.

A record that cannot be mapped raises `BadRecord` with the reason: the pump skips it,
counts it and may copy it to a dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from socketio_kafka.adapter import codec, routing
from socketio_kafka.adapter.errors import PayloadError, RecordDecodeError

from ..protocol import MAX_NAME_LENGTH, RESERVED_EVENTS
from .config import Field, InboundBridge, Template

__all__ = ["BadRecord", "Mapper", "Out", "SourceRecord"]

_MISSING = object()


class SourceRecord(Protocol):
    """What the mapping reads of an aiokafka ``ConsumerRecord``."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


class BadRecord(ValueError):
    """A source record that maps to no emit; the message says why, ``kind`` in a word (a
    metric's label: ``not_json``, ``not_utf8``, ``missing``, ``room``, ``event``,
    ``too_large``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Out:
    """A record for the events topic, as the manager writes it."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


class Mapper:
    """Maps the records of one bridge. Example::

    out = Mapper(bridge, "bridge:orders", 1024 * 1024).map(record)  # Out | None
    """

    def __init__(self, bridge: InboundBridge, host_id: str, max_record_bytes: int) -> None:
        self._bridge = bridge
        self._host_id = host_id
        self._max_record_bytes = max_record_bytes

    def map(self, record: SourceRecord) -> Out | None:
        """The events-topic record, or None for a tombstone that becomes nothing.

        Raises `BadRecord`.
        """
        bridge = self._bridge
        if record.value is None:
            if bridge.tombstone is None:
                return None
            event, value = bridge.tombstone, _MISSING
            data: Any = _text(record.key, "key") if record.key is not None else None
        else:
            value = _json(record.value) if bridge.needs_value else _MISSING
            event = _render(bridge.event, record, value)
            data = _payload(bridge, record.value, value)
        room = _render(bridge.room, record, value)
        if not room or len(room) > bridge.max_room_length:
            limit = bridge.max_room_length
            raise BadRecord("room", f"room of {len(room)} characters (1 to {limit})")
        if not event or len(event) > MAX_NAME_LENGTH or event in RESERVED_EVENTS:
            raise BadRecord("event", f"event name {event[:80]!r} empty, too long or reserved")
        return self._emit(event, data, room)

    def _emit(self, event: str, data: Any, room: str) -> Out:
        message = codec.emit_message(
            event,
            (data,),  # one argument, whatever it is (None included)
            namespace=self._bridge.namespace,
            room=room,
            skip_sid=None,
            callback=None,
            host_id=self._host_id,
        )
        try:
            value = codec.encode(message)
        except PayloadError as exc:  # nested too deep once wrapped in the emit's record
            raise BadRecord("not_json", str(exc)) from exc
        if len(value) > self._max_record_bytes:
            limit = self._max_record_bytes
            raise BadRecord("too_large", f"{len(value)} bytes mapped, over {limit}")
        return Out(codec.record_key(message), value, routing.headers_for(message))


def _json(raw: bytes) -> Any:
    try:
        return codec.parse_json(raw)  # strict and depth-limited, as nodes read records
    except RecordDecodeError as exc:
        raise BadRecord("not_json", f"value is not JSON: {exc}") from exc


def _payload(bridge: InboundBridge, raw: bytes, value: Any) -> Any:
    payload = bridge.payload
    if payload.kind == "bytes":
        return raw
    if payload.kind == "text":
        return _text(raw, "value")
    return _lookup(value, payload.path, "payload")


def _render(template: Template, record: SourceRecord, value: Any) -> str:
    return "".join(
        part if isinstance(part, str) else _field(part, record, value) for part in template.parts
    )


def _field(field: Field, record: SourceRecord, value: Any) -> str:
    if field.source == "key":
        if record.key is None:
            raise BadRecord("missing", "{key}: the record has no key")
        return _text(record.key, "key")
    if field.source == "header":
        name = field.path[0]
        for header, raw in record.headers:
            if header == name and raw is not None:
                return _text(raw, f"header {name!r}")
        raise BadRecord("missing", f"{{{field}}}: no such header")
    found = _lookup(value, field.path, f"{{{field}}}")
    if isinstance(found, str):
        return found
    if isinstance(found, int) and not isinstance(found, bool):
        return str(found)
    raise BadRecord("missing", f"{{{field}}}: a {type(found).__name__}, not a string or integer")


def _lookup(value: Any, path: tuple[str, ...], what: str) -> Any:
    if value is _MISSING:
        raise BadRecord("missing", f"{what}: a tombstone has no value")
    for name in path:
        if not isinstance(value, dict) or name not in value:
            raise BadRecord("missing", f"{what}: the value has no field {'.'.join(path)!r}")
        value = value[name]
    return value


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord("not_utf8", f"{what} is not UTF-8") from exc
