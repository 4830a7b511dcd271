"""The bridges file: TOML, read with tomllib into frozen, validated objects.

Example::

    [kafka]
    url = "kafka://broker:9092"     # --kafka wins; else this, SOCKETIO_KAFKA_KAFKA, localhost:9092
    channel = "socketio"            # bridged events go to <channel>.events

    [[inbound]]
    name = "orders"                 # names its consumer group and transactional ids
    topics = ["orders"]
    room = "user:{key}"             # {key}, {header.NAME}, {value.a.b}; {{ and }} are braces
    event = "order"                 # a template too: "{header.type}", "{value.kind}"
    payload = "value"               # value | value.a.b | text | bytes
    tombstone = "order-deleted"     # absent: a tombstone (null value) is passed over
    dead_letter = "orders.dead"     # optional: bad records are copied there

    [[outbound]]
    name = "chat"                   # names its consumer group and transactional ids
    topic = "chat.messages"         # client publishes go there (docs/wire-format.md)
    rooms = ["chat:*"]              # glob patterns; rooms, events or both must be given
    events = ["message"]            # names or glob patterns
    namespace = "/"                 # the default

Every mistake is an `BridgeConfigError` naming the file's line (a TOML syntax error) or
the key (``inbound[1].room``). Tables other than ``kafka``, ``inbound`` and ``outbound``
are refused, so that a later kind of table is an addition, not a change of meaning.
"""

from __future__ import annotations

import re
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from socketio_kafka.adapter.publishes import DEFAULT_WINDOW_S

from ..errors import InvalidSettings
from ..protocol import MAX_NAME_LENGTH

__all__ = [
    "BridgeConfigError",
    "BridgesConfig",
    "Field",
    "InboundBridge",
    "OutboundRoute",
    "Payload",
    "Template",
    "load",
    "parse",
    "template",
]

_SOURCES = ("key", "header", "value")
_PAYLOADS = ("value", "text", "bytes")
_STARTS = ("earliest", "latest")
# Kafka's own limits: a topic or group name of legal characters, at most 249 long.
_KAFKA_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
#: Rooms longer than this are refused per record: the limit a client's join has.
DEFAULT_MAX_ROOM_LENGTH = MAX_NAME_LENGTH


class BridgeConfigError(InvalidSettings):
    """The bridges file cannot be used; the message names the line or key."""


@dataclass(frozen=True, slots=True)
class Field:
    """One ``{...}`` of a template: the record's key, a header, or a path into its JSON value."""

    source: str  # "key", "header" or "value"
    path: tuple[str, ...] = ()  # a header's name, or the value's field names

    def __str__(self) -> str:
        return ".".join((self.source, *self.path))


@dataclass(frozen=True, slots=True)
class Template:
    """Literal text and fields, in order: ``user:{key}`` is ``("user:", Field("key"))``."""

    parts: tuple[str | Field, ...]

    @property
    def fields(self) -> tuple[Field, ...]:
        return tuple(part for part in self.parts if isinstance(part, Field))

    @property
    def needs_value(self) -> bool:
        return any(f.source == "value" for f in self.fields)


@dataclass(frozen=True, slots=True)
class Payload:
    """What clients receive as the event's one argument: the JSON value (``path``: a field of
    it), the value as UTF-8 text, or its raw bytes as a binary attachment."""

    kind: str  # "value", "text" or "bytes"
    path: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InboundBridge:
    """One source: which topics, and how each record becomes an emit into a room."""

    name: str
    topics: tuple[str, ...]
    room: Template
    event: Template
    payload: Payload
    namespace: str = "/"
    tombstone: str | None = None  # the event a null value becomes; None: nothing
    dead_letter: str | None = None
    group: str = ""  # the consumer group; default socketio-kafka-bridge.<name>
    start: str = "earliest"  # where a group with no committed offset begins
    max_room_length: int = DEFAULT_MAX_ROOM_LENGTH

    @property
    def needs_value(self) -> bool:
        """Whether records are parsed as JSON (a text or bytes payload alone needs not)."""
        return self.payload.kind == "value" or self.room.needs_value or self.event.needs_value


@dataclass(frozen=True, slots=True)
class OutboundRoute:
    """Client publishes (gateway ``publish`` records of the events topic) whose room and
    event match, as documented JSON to ``topic``, keyed by room, each publish once."""

    name: str
    topic: str
    rooms: tuple[str, ...]  # glob patterns (fnmatch, case-sensitive); empty: any room
    events: tuple[str, ...]  # names or glob patterns; empty: any event
    namespace: str = "/"
    dead_letter: str | None = None
    group: str = ""  # the consumer group; default socketio-kafka-outbound.<name>
    start: str = "earliest"
    #: How far back a taken partition is read again to learn the publish ids written
    #: (never written out again): at least the gateways' publish window.
    window_s: float = DEFAULT_WINDOW_S


@dataclass(frozen=True, slots=True)
class BridgesConfig:
    url: str | None
    channel: str
    inbound: tuple[InboundBridge, ...]
    outbound: tuple[OutboundRoute, ...] = ()

    @property
    def events_topic(self) -> str:
        return f"{self.channel}.events"


def load(path: str | Path) -> BridgesConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BridgeConfigError(f"{path}: cannot be read: {exc}") from exc
    try:
        return parse(text)
    except BridgeConfigError as exc:
        raise BridgeConfigError(f"{path}: {exc}") from exc


def parse(text: str) -> BridgesConfig:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message says "(at line N, column M)"
        raise BridgeConfigError(f"not TOML: {exc}") from exc
    _only(document, "", {"kafka", "inbound", "outbound"})
    kafka = _table(document.get("kafka", {}), "kafka")
    _only(kafka, "kafka", {"url", "channel"})
    url = _optional_str(kafka, "url", "kafka")
    channel = _str(kafka, "channel", "kafka", default="socketio")
    if not _KAFKA_NAME.fullmatch(f"{channel}.events"):
        raise BridgeConfigError(f"kafka.channel: {channel!r} makes no legal topic name")
    tables = document.get("inbound", [])
    routes = document.get("outbound", [])
    for key, found in (("inbound", tables), ("outbound", routes)):
        if not isinstance(found, list):
            raise BridgeConfigError(f"{key}: write [[{key}]] tables")
    if not tables and not routes:
        raise BridgeConfigError("inbound: at least one [[inbound]] or [[outbound]] table is needed")
    bridges = tuple(_inbound(table, f"inbound[{i}]") for i, table in enumerate(tables))
    outbound = tuple(_outbound(table, f"outbound[{i}]") for i, table in enumerate(routes))
    # Names label metrics and supervised tasks: one name space for both kinds.
    names = [b.name for b in bridges] + [r.name for r in outbound]
    if len(set(names)) != len(names):
        raise BridgeConfigError(f"inbound, outbound: names must differ (got {names})")
    # A bad record copied into a topic the bridge reads would be read, and copied, again.
    sources = [(f"inbound[{i}]", b.dead_letter, b.topics) for i, b in enumerate(bridges)]
    sources += [
        (f"outbound[{i}]", r.dead_letter, (f"{channel}.events",)) for i, r in enumerate(outbound)
    ]
    for where, dead_letter, topics in sources:
        if dead_letter in topics:
            raise BridgeConfigError(f"{where}.dead_letter: {dead_letter!r} is a topic it reads")
    return BridgesConfig(url, channel, bridges, outbound)


_INBOUND_KEYS = {
    "name",
    "topics",
    "room",
    "event",
    "payload",
    "namespace",
    "tombstone",
    "dead_letter",
    "group",
    "start",
    "max_room_length",
}


@dataclass(frozen=True, slots=True)
class _Named:
    """What an ``[[inbound]]`` and an ``[[outbound]]`` table both say, checked alike."""

    name: str
    namespace: str
    dead_letter: str | None
    group: str
    start: str


def _named_table(
    raw: Any, where: str, keys: set[str], group_prefix: str
) -> tuple[dict[str, Any], _Named]:
    """The table, its keys checked, and its shared keys read; the group defaults to
    ``<group_prefix>.<name>``."""
    table = _table(raw, where)
    _only(table, where, keys)
    name = _str(table, "name", where)
    _kafka_name(name, f"{where}.name")
    namespace = _str(table, "namespace", where, default="/")
    if not namespace.startswith("/"):
        raise BridgeConfigError(f"{where}.namespace: must start with '/', not {namespace!r}")
    dead_letter = _optional_str(table, "dead_letter", where)
    if dead_letter is not None:
        _kafka_name(dead_letter, f"{where}.dead_letter")
    group = _str(table, "group", where, default=f"{group_prefix}.{name}")
    _kafka_name(group, f"{where}.group")
    start = _str(table, "start", where, default="earliest")
    if start not in _STARTS:
        raise BridgeConfigError(f"{where}.start: one of {_STARTS}, not {start!r}")
    return table, _Named(name, namespace, dead_letter, group, start)


def _inbound(raw: Any, where: str) -> InboundBridge:
    table, named = _named_table(raw, where, _INBOUND_KEYS, "socketio-kafka-bridge")
    topics = table.get("topics")
    if isinstance(topics, str):
        topics = [topics]
    if not isinstance(topics, list) or not topics or not all(isinstance(t, str) for t in topics):
        raise BridgeConfigError(f"{where}.topics: a topic name or a non-empty list of them")
    for topic in topics:
        _kafka_name(topic, f"{where}.topics")
    max_room = table.get("max_room_length", DEFAULT_MAX_ROOM_LENGTH)
    if type(max_room) is not int or max_room < 1:
        raise BridgeConfigError(f"{where}.max_room_length: a positive integer")
    tombstone = _optional_str(table, "tombstone", where)
    if tombstone == "":
        raise BridgeConfigError(f"{where}.tombstone: an event name, or leave it out")
    return InboundBridge(
        name=named.name,
        topics=tuple(topics),
        room=template(_str(table, "room", where), f"{where}.room"),
        event=template(_str(table, "event", where), f"{where}.event"),
        payload=_payload(_str(table, "payload", where, default="value"), f"{where}.payload"),
        namespace=named.namespace,
        tombstone=tombstone,
        dead_letter=named.dead_letter,
        group=named.group,
        start=named.start,
        max_room_length=max_room,
    )


#: A route looks back its window before the first record it resumes at: past about the
#: epoch (inf, say) that time is none, and every resumption raised.
_MAX_WINDOW_S = 365 * 24 * 3600

_OUTBOUND_KEYS = {
    "name",
    "topic",
    "rooms",
    "events",
    "namespace",
    "dead_letter",
    "group",
    "start",
    "window",
}


def _outbound(raw: Any, where: str) -> OutboundRoute:
    table, named = _named_table(raw, where, _OUTBOUND_KEYS, "socketio-kafka-outbound")
    topic = _str(table, "topic", where)
    _kafka_name(topic, f"{where}.topic")
    rooms, events = _patterns(table, "rooms", where), _patterns(table, "events", where)
    if not rooms and not events:
        raise BridgeConfigError(
            f'{where}: rooms, events or both are needed (rooms = ["*"] for every publish)'
        )
    window = table.get("window", DEFAULT_WINDOW_S)
    if type(window) not in (int, float) or not 0 < window <= _MAX_WINDOW_S:
        raise BridgeConfigError(f"{where}.window: seconds, a positive number up to a year")
    return OutboundRoute(
        name=named.name,
        topic=topic,
        rooms=rooms,
        events=events,
        namespace=named.namespace,
        dead_letter=named.dead_letter,
        group=named.group,
        start=named.start,
        window_s=float(window),
    )


def _patterns(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    found = table.get(key, [])
    if isinstance(found, str):
        found = [found]
    if not isinstance(found, list) or not all(isinstance(p, str) and p for p in found):
        raise BridgeConfigError(f"{where}.{key}: a pattern or a list of non-empty patterns")
    return tuple(found)


def template(text: str, where: str) -> Template:
    """Parse ``user:{key}``; refuse unknown sources, format specs and stray braces."""
    parts: list[str | Field] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:  # a single { or }
        raise BridgeConfigError(
            f"{where}: {exc} in {text!r} (write {{{{ or }}}} for a brace)"
        ) from exc
    for literal, name, spec, conversion in parsed:
        if literal and parts and isinstance(parts[-1], str):
            parts[-1] += literal  # Formatter splits a literal at each escaped brace
        elif literal:
            parts.append(literal)
        if name is None:
            continue
        if spec or conversion:
            raise BridgeConfigError(f"{where}: {{{name}}} may carry no format spec or conversion")
        parts.append(_field(name, where))
    if not parts:
        raise BridgeConfigError(f"{where}: empty")
    return Template(tuple(parts))


def _field(name: str, where: str) -> Field:
    source, _, rest = name.partition(".")
    path = tuple(rest.split(".")) if rest else ()
    if source == "header" and rest:
        return Field("header", (rest,))  # a header's name may hold dots
    if source == "key" and not path:
        return Field("key")
    if source == "value" and path and all(path):
        return Field("value", path)
    raise BridgeConfigError(
        f"{where}: unknown field {{{name}}}: use {{key}}, {{header.NAME}} or {{value.a.b}}"
    )


def _payload(text: str, where: str) -> Payload:
    kind, _, rest = text.partition(".")
    path = tuple(rest.split(".")) if rest else ()
    if kind not in _PAYLOADS or (path and (kind != "value" or not all(path))):
        raise BridgeConfigError(
            f"{where}: value, value.a.b (a field of it), text or bytes; not {text!r}"
        )
    return Payload(kind, path)


def _table(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BridgeConfigError(f"{where}: must be a table")
    return raw


def _only(table: dict[str, Any], where: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise BridgeConfigError(f"{name}: unknown key (known: {', '.join(sorted(allowed))})")


def _str(table: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if value is None:
        raise BridgeConfigError(f"{where}.{key}: missing")
    if not isinstance(value, str):
        raise BridgeConfigError(f"{where}.{key}: a string, not {type(value).__name__}")
    return value


def _optional_str(table: dict[str, Any], key: str, where: str) -> str | None:
    return _str(table, key, where) if key in table else None


def _kafka_name(name: str, where: str) -> None:
    if not _KAFKA_NAME.fullmatch(name):
        raise BridgeConfigError(
            f"{where}: {name!r} is no Kafka name (letters, digits, '.', '_', '-'; at most 249)"
        )
