"""Routing headers: what a node needs of a record to know whether anyone here wants it.

Every record a node writes carries, beside its JSON value, Kafka record headers naming
its method, namespace, room(s), sid and host (docs/wire-format.md, "Headers"). A node
reads them first: a record none of its sockets wants costs a header check, not a JSON
decode, and a replay decodes only what it delivers. The value stays what it was, so a
node of the previous release (which ignores headers) reads every record as before, and
a record without them (an older node's, an external producer's) is decoded as before.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiokafka.partitioner import DefaultPartitioner, murmur2

from .codec import Message, record_key
from .errors import RecordDecodeError

__all__ = [
    "AFTER_EMITS",
    "ROUTING_VERSION",
    "Audience",
    "Headers",
    "Route",
    "correlation_id",
    "headers_for",
    "parse_after",
    "partition_of",
    "partitioner",
    "read_route",
    "replay_route",
    "room_key",
]

#: The value of the ``sio.v`` header: the routing format's version.
ROUTING_VERSION = b"1"
VERSION = "sio.v"
METHOD = "sio.method"
NAMESPACE = "sio.ns"
ROOM = "sio.room"
SID = "sio.sid"
HOST = "sio.host"
ACK = "sio.ack"
#: A client publish's correlation id (tracing only: routing never reads it).
CORRELATION_ID = "sio.cid"
#: Whose client-chosen publish id ``sio.cid`` is: a digest of its session (`publishes.py`).
PUBLISHER = "sio.pub"
#: The publishing socket's subject, where the gateway checks tokens (outbound topics).
SUBJECT = "sio.sub"
#: A room operation's or disconnect's: where its node's emits ended (`adapter/barriers.py`).
AFTER = "sio.after"

#: Record headers as aiokafka reads them (a value may be null on the wire).
Headers = Sequence[tuple[str, bytes | None]]

_SINGLE = frozenset({VERSION, METHOD, NAMESPACE, SID, HOST, ACK, AFTER})
#: Headers each method must carry beyond version, method and namespace: a record whose
#: headers cannot say who wants it is refused, not guessed at.
_NEEDS: dict[str, tuple[bool, bool, bool]] = {  # (a room, a sid, a host)
    "emit": (False, False, False),
    "enter_room": (True, True, True),
    "leave_room": (True, True, True),
    "close_room": (True, False, True),
    "disconnect": (False, True, True),
    "callback": (False, True, True),
}
#: Methods that wait, on other nodes, for the emits their node wrote before them.
AFTER_EMITS = frozenset({"enter_room", "leave_room", "close_room", "disconnect"})
_partitioner = DefaultPartitioner()


class Route(NamedTuple):
    """Who a record is for, read from its headers (a tuple: one is made per record read).

    ``rooms``: an emit's rooms (none: the whole namespace), or the one room of a room
    operation. ``ack``: an emit whose producer waits for acknowledgements. ``key``: the
    `room_key` of its namespace and its one room (None for none or several), by which
    sightings and replay windows file it. ``after``: a room operation's or disconnect's
    ``sio.after``, unparsed (`parse_after`).
    """

    method: str
    namespace: str
    rooms: tuple[str, ...]
    sid: str | None
    host: str | None
    ack: bool
    key: int
    after: bytes | None = None


def headers_for(
    message: Message,
    correlation_id: str | None = None,
    publisher: str | None = None,
    subject: str | None = None,
    after: Mapping[int, int] | None = None,
) -> list[tuple[str, bytes]]:
    """The routing headers of a message the manager writes (it must be a valid one), and
    its correlation id's, subject's and publisher's when given (``sio.pub`` last); a room
    operation's or disconnect's ``after``, where its node's emits ended, when any."""
    method: str = message["method"]
    headers = [
        (VERSION, ROUTING_VERSION),
        (METHOD, method.encode()),
        (NAMESPACE, (message.get("namespace") or "/").encode()),
    ]
    room = message.get("room")
    rooms = room if isinstance(room, list) else [] if room is None else [room]
    headers += [(ROOM, r.encode()) for r in rooms]
    if method in ("enter_room", "leave_room", "disconnect", "callback"):
        headers.append((SID, message["sid"].encode()))
    if method != "emit":
        headers.append((HOST, message["host_id"].encode()))
    elif message.get("callback"):
        headers.append((ACK, b"1"))
    if after and method in AFTER_EMITS:
        headers.append((AFTER, ",".join(f"{p}:{o}" for p, o in after.items()).encode()))
    if correlation_id is not None:
        headers.append((CORRELATION_ID, correlation_id.encode()))
    if subject is not None:
        headers.append((SUBJECT, subject.encode()))
    if publisher is not None:
        headers.append((PUBLISHER, publisher.encode()))
    return headers


def correlation_id(headers: Headers) -> str | None:
    """The record's ``sio.cid`` header, if it has a readable one."""
    for name, value in headers:
        if name == CORRELATION_ID and value is not None:
            return value.decode(errors="replace")
    return None


def read_route(headers: Headers) -> Route | None:
    """The record's route; None when it has no routing headers, or a version this node
    does not know (its value is then decoded, as before headers existed).

    Raises `RecordDecodeError` when version-1 headers are malformed: a value that is null
    or not UTF-8, a single-valued header repeated, an unknown method, or one missing.
    Other headers (other applications', unknown ``sio.`` names) are ignored.
    """
    # One pass, and nothing decoded before the version is known: this runs for every
    # record a node reads, in place of a JSON decode that costs about 2 µs. Values are
    # kept as read; a null one is None, whose missing ``decode`` is caught below.
    found: dict[str, Any] = {}
    rooms: list[Any] = []
    repeated = None
    for name, value in headers:
        if name == ROOM:
            rooms.append(value)
        elif name in _SINGLE:
            if name in found:
                repeated = name
            found[name] = value
    if found.get(VERSION) != ROUTING_VERSION:
        return None
    if repeated is not None:
        raise RecordDecodeError(f"header {repeated!r} repeated")
    try:
        method: str = found[METHOD].decode()
        namespace: str = found[NAMESPACE].decode()
        targets = tuple([room.decode() for room in rooms])
        sid: str | None = found[SID].decode() if SID in found else None
        host: str | None = found[HOST].decode() if HOST in found else None
    except (KeyError, AttributeError):
        raise RecordDecodeError("a routing header is missing or null") from None
    except UnicodeDecodeError as exc:
        raise RecordDecodeError("a routing header is not UTF-8") from exc
    needs = _NEEDS.get(method)
    if needs is None:
        raise RecordDecodeError(f"routing headers: unknown method {method!r}")
    needs_room, needs_sid, needs_host = needs
    if (
        (needs_room and len(targets) != 1)
        or (needs_sid and sid is None)
        or (needs_host and host is None)
        or found.get(ACK, b"1") != b"1"
    ):
        raise RecordDecodeError(f"routing headers of a {method} record incomplete")
    key = room_key(namespace, targets[0] if len(targets) == 1 else None)
    # A null one is read as an empty one: `parse_after` refuses it.
    after = (found[AFTER] or b"") if AFTER in found and method in AFTER_EMITS else None
    return Route(method, namespace, targets, sid, host, ACK in found, key, after)


def parse_after(value: bytes) -> dict[int, int]:
    """A ``sio.after`` header's offsets by partition (``0:17,3:1024``); `RecordDecodeError`
    when it is not that."""
    try:
        pairs = [item.split(b":") for item in value.split(b",")]
        after = {int(p): int(o) for p, o in pairs}
    except (ValueError, AttributeError):
        raise RecordDecodeError("a sio.after header that is not partition:offset pairs") from None
    if any(p < 0 or o < 0 for p, o in after.items()):
        raise RecordDecodeError("a sio.after header with a negative partition or offset")
    return after


def room_key(namespace: str, room: str | None) -> int:
    """What sightings and replay windows file a room's records by (None: the namespace's
    broadcasts); an emit to several rooms is filed by each in a window, as a broadcast in
    sightings. Never -1 (a CPython hash is not)."""
    return hash((namespace, room))


#: `read_route` remembered by the headers (aiokafka's tuple of pairs; see `replay_route`).
_remembered = functools.lru_cache(maxsize=4096)(read_route)


def replay_route(headers: Headers) -> Route | None:
    """`read_route`, remembered by the headers: what a replay cursor reads is a stretch
    of one partition, the records of a few rooms, and every record to one room from the
    server side carries the same headers; a lookup costs a fifth of a parse (0.47 µs
    against 2.2). At most 4,096 routes of about 900 B with their headers. The live
    consumer parses: it reads every room of every partition, more than that in turn.
    """
    try:
        return _remembered(headers)
    except TypeError:  # unhashable: a list, not aiokafka's tuple
        return read_route(headers)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the producer writes ``key`` to: aiokafka's default partitioner
    (murmur2, as Kafka's Java client and every official client)."""
    return partitioner(key, list(range(partitions)), [])


def partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's default partitioner, with each key's hash remembered: its murmur2 is pure
    Python, 2% of a publishing node's CPU when hashed for every record, and a node
    publishes to the same rooms again and again. The manager's producers use it."""
    if key is None:
        chosen: int = _partitioner(key, all_partitions, available)
        return chosen
    return all_partitions[_murmur2(key) % len(all_partitions)]


@functools.lru_cache(maxsize=16384)
def _murmur2(key: bytes) -> int:
    hashed: int = murmur2(key)
    return hashed & 0x7FFFFFFF


@dataclass(frozen=True, slots=True)
class Audience:
    """What one session receives, for its replay: events of its namespace to its rooms,
    its sid or everyone, minus those that skip it and those that wait for acks (an ack
    cannot be answered late)."""

    namespace: str
    sid: str
    rooms: frozenset[str]
    #: The `room_key`s its records are filed by: its rooms' (its sid among them) and its
    #: namespace's broadcasts', each once; made once, as every window a replay reads asks.
    room_keys: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = frozenset(room_key(self.namespace, room) for room in (None, *self.rooms))
        object.__setattr__(self, "room_keys", keys)  # frozen: the one way to set it

    @classmethod
    def of(cls, namespace: str, sid: str, rooms: Sequence[str]) -> Audience:
        return cls(namespace, sid, frozenset({*rooms, sid}))

    def partitions(self, count: int) -> frozenset[int]:
        """The partitions that can hold what it receives: its rooms', its sid's and its
        namespace's broadcasts (an emit to several rooms is keyed by the namespace)."""
        return frozenset(self.by_partition(count))

    def by_partition(self, count: int) -> dict[int, list[str | None]]:
        """Those partitions, each with the rooms (its sid among them) whose events go
        there, and None where its namespace's broadcasts and emits to several rooms go."""
        found: dict[int, list[str | None]] = {}
        for room in (*self.rooms, None):
            found.setdefault(partition_of(self._key(room), count), []).append(room)
        return found

    def wants_route(self, route: Route) -> bool:
        """Whether a record so routed may be for it (`wants` decides, once decoded)."""
        return (
            route.method == "emit"
            and not route.ack
            and route.namespace == self.namespace
            and (not route.rooms or not self.rooms.isdisjoint(route.rooms))
        )

    def wants(self, message: Message) -> bool:
        """Whether it receives a decoded record. Room operations and disconnects of its
        namespace are not events: replayed, they broke its recovery (no ``data``)."""
        if (
            message["method"] != "emit"
            or message.get("namespace", "/") != self.namespace
            or message.get("callback")
        ):
            return False
        skip = message.get("skip_sid") or ()
        if self.sid == skip or (isinstance(skip, list) and self.sid in skip):
            return False
        room = message.get("room")
        if room is None:
            return True
        return not self.rooms.isdisjoint(room) if isinstance(room, list) else room in self.rooms

    def _key(self, room: str | None) -> bytes:
        return record_key({"method": "emit", "namespace": self.namespace, "room": room})
