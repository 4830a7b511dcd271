"""Any bytes on either topic: refused with `RecordDecodeError`, or delivered without error.

Property-based, without a broker: a record the codec accepts must go through everything a
node then does with it (its key, its packets, the replay's filter), and no session record
may break the table or its expiry.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import socketio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from socketio.packet import Packet

from socketio_kafka.adapter import (
    AsyncKafkaManager,
    PayloadError,
    RecordDecodeError,
    codec,
    fastjson,
)
from socketio_kafka.adapter.fanout import event_packets
from socketio_kafka.adapter.routing import (
    ACK,
    HOST,
    METHOD,
    NAMESPACE,
    ROOM,
    SID,
    VERSION,
    Audience,
    Headers,
    headers_for,
    read_route,
)
from socketio_kafka.adapter.sessions import EPOCH_KEY, NODE_PREFIX, SessionTable

# No example database: the working tree stays clean, and each run explores afresh.
FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 8, max_value=2**70)
    | st.floats()
    | st.text()
    | st.sampled_from(["", "/", "lobby", "_placeholder", "num", "\ud800"])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=24,
)
FIELDS = ["v", "method", "event", "data", "namespace", "room", "skip_sid", "binary"]
FIELDS += ["callback", "host_id", "sid", "id", "args"]
METHODS = ["emit", "enter_room", "leave_room", "close_room", "disconnect", "callback", "other"]


class FastPacket(Packet):  # type: ignore[misc]  # python-socketio is untyped
    """A server's packet class with ``json=fastjson``, as the gateway runs it."""

    json = fastjson


def _dumps(value: Any) -> bytes:
    """JSON text as any producer might write it: NaN, lone surrogates and all."""
    return json.dumps(value).encode("utf-8", "surrogatepass")


def _nested(depth: int, opener: bytes, leaf: bytes, closer: bytes) -> bytes:
    """An emit whose one argument nests ``depth`` levels below the record's two."""
    data = opener * depth + leaf + closer * depth
    return b'{"v":1,"method":"emit","event":"e","data":[' + data + b"]}"


def _delivered(value: bytes | None) -> None:
    """Decode ``value``; if accepted, do with it all a node does. Only refusals may raise."""
    try:
        message = codec.decode(value)
    except RecordDecodeError:
        return
    codec.record_key(message)
    if message["method"] == "emit":
        for packet_class in (Packet, FastPacket):
            for offset in ("x~0", None):
                event_packets(packet_class, message, offset)
    Audience.of("/", "sid", ["lobby"]).wants(message)


@FUZZ
@given(st.binary() | st.none())
@example(b"[" * 5_000 + b"]" * 5_000)
@example(b'{"v":1,"method":"emit","event":"e","data":[NaN]}')
def test_any_bytes(value: bytes | None) -> None:
    _delivered(value)


@FUZZ
@given(JSON)
def test_any_json(value: Any) -> None:
    _delivered(_dumps(value))


@FUZZ
@given(
    st.integers(min_value=1, max_value=3_000),
    st.sampled_from(
        [(b"[", b"", b"]"), (b'{"a":', b"1", b"}"), (b'[{"_placeholder":', b"1", b"}]")]
    ),
)
def test_any_nesting(depth: int, brackets: tuple[bytes, bytes, bytes]) -> None:
    _delivered(_nested(depth, *brackets))


@FUZZ
@given(
    st.sampled_from(METHODS),
    st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=len(FIELDS)),
)
def test_every_method_with_any_fields(method: str, fields: dict[str, Any]) -> None:
    _delivered(_dumps({"v": 1, **fields, "method": method}))


EMIT_DATA = JSON | st.tuples(JSON, st.binary()) | st.binary() | st.just(())


@FUZZ
@given(EMIT_DATA, st.sampled_from(FIELDS), JSON)
@example({"raw": b"\x00"}, "data", [[{"_placeholder": True, "num": 3}], "AA=="])
def test_a_valid_emit_with_one_field_changed(data: Any, name: str, replacement: Any) -> None:
    message = codec.emit_message(
        "e", data, namespace="/", room="lobby", skip_sid=None, callback=None, host_id="h"
    )
    try:
        written = codec.encode(message)
    except PayloadError:  # what no node would read back is not written
        return
    codec.decode(written)  # what is written, every node reads back
    _delivered(written)
    _delivered(_dumps({**json.loads(written), name: replacement}))


SESSION = {
    "v": 1,
    "pid": "p1",
    "sid": "s1",
    "namespace": "/",
    "rooms": ["a"],
    "data": {"user": 7},
    "start": [0, 4],
    "epoch": "e1",
    "owner": "n1",
    "disconnected_at": None,
}
KEYS = (
    st.binary()
    | st.none()
    | st.just(EPOCH_KEY)
    | st.sampled_from([b"p1", NODE_PREFIX + b"n1"])
    | st.binary().map(lambda tail: NODE_PREFIX + tail)
)
SESSION_VALUES = (
    st.none()
    | st.binary()
    | JSON.map(_dumps)
    | st.builds(lambda name, v: _dumps({**SESSION, name: v}), st.sampled_from(list(SESSION)), JSON)
    | st.builds(lambda v: _dumps({"epoch": v}), JSON)
)
SessionRecord = tuple[bytes | None, bytes | None, int]
TIMESTAMPS = st.integers() | st.sampled_from([-1, 0, 2**63 - 1, 2**63])


@FUZZ
@given(st.lists(st.tuples(KEYS, SESSION_VALUES, TIMESTAMPS), max_size=8), st.floats())
@example([(NODE_PREFIX + b"\xff\xfe", b"{}", 1000)], 0.0)
@example([(b"p1", _dumps({**SESSION, "rooms": "ab"}), 0)], 0.0)
@example([(NODE_PREFIX + b"n1", b"{}", -1)], 1e300)
def test_any_session_records(
    records: list[tuple[bytes | None, bytes | None, int]], now: float
) -> None:
    table = SessionTable()
    for key, value, timestamp_ms in records:
        before = (table.epoch, dict(table.sessions), dict(table.heartbeats))
        try:
            table.apply(key, value, timestamp_ms)
        except RecordDecodeError:
            assert (table.epoch, table.sessions, table.heartbeats) == before
    table.expired(now, window=60, stale_after=15)
    for host_id in table.heartbeats:
        table.node_alive(host_id, stale_after=15)
    for session in table.sessions.values():
        assert all(isinstance(room, str) for room in session.rooms)
        assert all(type(offset) is int and offset >= 0 for offset in session.start)


class _ErrorLog(logging.Handler):
    """Keeps the ERROR records: an unexpected error reading a record, or handling it."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _Record:
    """What the manager reads of an aiokafka ``ConsumerRecord``."""

    def __init__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        offset: int,
        headers: Headers = (),
    ) -> None:
        self.topic, self.key, self.value, self.offset = topic, key, value, offset
        self.partition, self.timestamp, self.headers = 0, 1_700_000_000_000, tuple(headers)


HEADER_NAMES = [VERSION, METHOD, NAMESPACE, ROOM, SID, HOST, ACK, "sio.other", "traceparent"]
HEADER_VALUES = (
    st.none()
    | st.binary(max_size=8)
    | st.sampled_from([b"1", b"2", b"/", b"lobby", b"s1", b"s3", b"\xff", b"emit", b"callback"])
    | st.sampled_from(METHODS).map(str.encode)
)
#: Routing headers as any producer might write them: random ones, and valid ones (those
#: of a valid message to the sockets below) with one header added, dropped or replaced.
HEADERS = st.lists(st.tuples(st.sampled_from(HEADER_NAMES), HEADER_VALUES), max_size=7) | st.builds(
    lambda message, cut, extra: [*headers_for(message)[cut:], *extra],
    st.sampled_from(
        [
            {"method": "emit", "namespace": "/", "room": r, "callback": c}
            for r in [None, "lobby", "s1", "nobody", ["nobody", "lobby"]]
            for c in [None, ["lobby", "/", 1]]
        ]
        + [
            {"method": m, "namespace": "/", "room": "lobby", "sid": s, "host_id": h}
            for m in ["enter_room", "leave_room", "close_room", "disconnect", "callback"]
            for s in ["s1", "gone"]
            for h in ["other", "self"]
        ]
    ),
    st.integers(0, 2),
    st.lists(st.tuples(st.sampled_from(HEADER_NAMES), HEADER_VALUES), max_size=2),
)


@FUZZ
@given(HEADERS)
def test_any_headers(headers: list[tuple[str, bytes | None]]) -> None:
    try:
        route = read_route(headers)
    except RecordDecodeError:
        return
    if route is not None:
        Audience.of("/", "s1", ["lobby"]).wants_route(route)


EVENT_VALUES = (
    st.none()
    | st.binary()
    | JSON.map(_dumps)
    | st.builds(
        lambda method, fields: _dumps({"v": 1, **fields, "method": method}),
        st.sampled_from(METHODS),
        st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=len(FIELDS)),
    )
)


@FUZZ
@given(
    st.lists(
        st.tuples(st.booleans(), KEYS, EVENT_VALUES | SESSION_VALUES, HEADERS | st.just([])),
        max_size=8,
    )
)
async def test_records_through_the_managers_own_read_paths(
    records: list[tuple[bool, bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
) -> None:
    """The consume loop's per-record paths, with sockets in rooms to deliver to: a record is
    delivered, passed by its headers, or refused as undecodable (headers included); never
    an unexpected error, never a handler error."""
    errors = _ErrorLog()
    logger = logging.getLogger("tests.fuzz.manager")
    logger.addHandler(errors)
    logger.propagate = False  # the skipped records' warnings are expected, by the hundred
    manager = AsyncKafkaManager("kafka://127.0.0.1:1", channel="fuzz", logger=logger)
    manager.enable_recovery(60)
    socketio.AsyncServer(client_manager=manager, json=fastjson)
    manager.positions = [0]
    for sid, room in [("s1", "lobby"), ("s2", "lobby"), ("s3", None)]:
        manager.basic_enter_room(sid, "/", room, eio_sid=f"e{sid}")
    for offset, (sessions, key, value, headers) in enumerate(records):
        topic = manager.sessions_topic if sessions else manager.events_topic
        headers = [(n, manager.host_id.encode() if v == b"self" else v) for n, v in headers]
        record = _Record(topic, key, value, offset, headers)
        if sessions:
            manager.store.apply(record)
        else:
            await manager._dispatch(record)
    logger.removeHandler(errors)
    assert errors.records == []  # no "unexpected error", no handler error
    assert manager.stats.handler_errors == 0
