"""Routing headers, without a broker: what they say, what is refused, and the decision a
node takes from them (the same one it took after decoding)."""

from __future__ import annotations

import random

import pytest
import socketio
from aiokafka.partitioner import DefaultPartitioner

from socketio_kafka.adapter import AsyncKafkaManager, RecordDecodeError, codec
from socketio_kafka.adapter.options import KafkaOptions
from socketio_kafka.adapter.routing import (
    Audience,
    Headers,
    Route,
    headers_for,
    partitioner,
    read_route,
    replay_route,
)

_OPS = [
    {"method": "emit", "namespace": "/", "room": None, "callback": None},
    {"method": "emit", "namespace": "/chat", "room": ["a", "b"], "callback": ["a", "/", 3]},
    {"method": "enter_room", "namespace": "/", "room": "r", "sid": "s", "host_id": "h"},
    {"method": "leave_room", "namespace": "/", "room": "r", "sid": "s", "host_id": "h"},
    {"method": "close_room", "namespace": "/", "room": "r", "host_id": "h"},
    {"method": "disconnect", "namespace": "/", "sid": "s", "host_id": "h"},
    {"method": "callback", "namespace": "/", "sid": "s", "id": 1, "args": [], "host_id": "h"},
]


@pytest.mark.parametrize("message", _OPS)
def test_headers_say_what_the_value_says(message: codec.Message) -> None:
    route = read_route(headers_for(message))
    assert route is not None
    room = message.get("room")
    assert route.method == message["method"]
    assert route.namespace == message["namespace"]
    assert route.rooms == (tuple(room) if isinstance(room, list) else (room,) if room else ())
    assert route.sid == message.get("sid")
    assert route.host == (None if message["method"] == "emit" else "h")
    assert route.ack == bool(message.get("callback"))
    # Filed by the one room, or as a broadcast: where the audience of that room looks.
    key_room = room if isinstance(room, str) else None
    assert route.key == hash((message["namespace"], key_room))


@pytest.mark.parametrize(
    "headers",
    [[], [("traceparent", b"00-1")], [("sio.v", b"2"), ("sio.method", None)], [("sio.v", None)]],
)
def test_without_version_1_the_value_decides(headers: Headers) -> None:
    assert read_route(headers) is None


_V1 = [("sio.v", b"1"), ("sio.ns", b"/")]


@pytest.mark.parametrize(
    "headers",
    [
        _V1,
        [*_V1, ("sio.method", b"nonsense")],
        [*_V1, ("sio.method", b"emit"), ("sio.method", b"emit")],
        [*_V1, ("sio.method", b"emit"), ("sio.room", b"\xff")],
        [*_V1, ("sio.method", b"emit"), ("sio.room", None)],
        [*_V1, ("sio.method", b"emit"), ("sio.ack", b"0")],
        [*_V1, ("sio.method", b"disconnect"), ("sio.host", b"h")],
        [*_V1, ("sio.method", b"enter_room"), ("sio.sid", b"s"), ("sio.host", b"h")],
        [("sio.v", b"1"), ("sio.v", b"1"), ("sio.method", b"emit"), ("sio.ns", b"/")],
    ],
)
def test_malformed_version_1_headers_are_refused(headers: Headers) -> None:
    with pytest.raises(RecordDecodeError):
        read_route(headers)
    for _ in range(2):  # never remembered: refused every time
        with pytest.raises(RecordDecodeError):
            replay_route(tuple(headers))


def test_a_replays_route_is_read_routes_remembered() -> None:
    for room in ["a", "b", None, "a", ["a", "b"]] * 2:
        message = codec.emit_message(
            "e", 1, namespace="/", room=room, skip_sid=None, callback=None, host_id="h"
        )
        headers = tuple(headers_for(message))  # new objects each time, as aiokafka's
        assert replay_route(headers) == read_route(headers)
    assert replay_route(headers) is replay_route(tuple(headers))  # remembered: one parse
    assert replay_route(list(headers)) == read_route(headers)  # a list is parsed
    assert replay_route(()) is None  # no routing headers


def test_a_replay_receives_events_only() -> None:
    """Room operations and disconnects of its namespace are not events (they carry no data:
    a replay that offered them to the client failed, and closed the connection)."""
    audience = Audience.of("/", "s", ["r"])
    for message in _OPS[2:]:
        assert not audience.wants(message)
        route = read_route(headers_for(message))
        assert route is not None
        assert not audience.wants_route(route)
    broadcast = {"method": "emit", "namespace": "/", "event": "e", "data": [], "room": None}
    assert audience.wants(broadcast)
    assert not audience.wants({**broadcast, "skip_sid": ["s"]})


@pytest.fixture
def manager() -> AsyncKafkaManager:
    """A node with s1 in room "r" of "/" and s2 in "/chat"; nothing else."""
    manager = AsyncKafkaManager("kafka://127.0.0.1:1", channel="routing")
    socketio.AsyncServer(client_manager=manager)
    manager.basic_enter_room("s1", "/", None, eio_sid="e1")
    manager.basic_enter_room("s1", "/", "s1", eio_sid="e1")
    manager.basic_enter_room("s1", "/", "r")
    manager.basic_enter_room("s2", "/chat", None, eio_sid="e2")
    return manager


@pytest.mark.parametrize(
    ("method", "namespace", "rooms", "sid", "host", "wanted"),
    [
        ("emit", "/", ("r",), None, None, True),
        ("emit", "/", ("s1",), None, None, True),
        ("emit", "/", ("x", "r"), None, None, True),
        ("emit", "/", ("x",), None, None, False),
        ("emit", "/", (), None, None, True),
        ("emit", "/chat", (), None, None, True),
        ("emit", "/chat", ("r",), None, None, False),
        ("emit", "/none", (), None, None, False),
        ("enter_room", "/", ("x",), "s1", "other", True),
        ("enter_room", "/", ("r",), "s9", "other", False),
        ("enter_room", "/", ("x",), "s1", "self", False),
        ("leave_room", "/chat", ("x",), "s2", "other", True),
        ("disconnect", "/", (), "s1", "other", True),
        ("disconnect", "/", (), "s2", "other", False),
        ("close_room", "/", ("r",), None, "other", True),
        ("close_room", "/", ("x",), None, "other", False),
        ("close_room", "/", ("r",), None, "self", False),
        ("callback", "/", (), "s9", "self", True),
        ("callback", "/", (), "s1", "other", False),
    ],
)
def test_a_node_decodes_what_its_sockets_or_acks_want(
    manager: AsyncKafkaManager,
    method: str,
    namespace: str,
    rooms: tuple[str, ...],
    sid: str | None,
    host: str | None,
    wanted: bool,
) -> None:
    host = manager.host_id if host == "self" else host
    route = Route(method, namespace, rooms, sid, host, ack=False, key=0)
    assert manager._wanted_here(route) is wanted


def test_the_producers_partitioner_is_kafkas_default_one() -> None:
    """Each key's hash is remembered: the partition must stay the one every Kafka client
    picks, or a room's records would split across partitions and lose their order."""
    rng = random.Random(3)
    keys = [rng.randbytes(rng.randint(1, 40)) for _ in range(2000)] + [b"/#room"] * 3
    for key in keys:
        for count in (1, 6, 7, 12):
            partitions = list(range(count))
            assert partitioner(key, partitions, []) == DefaultPartitioner()(key, partitions, [])
    assert KafkaOptions().producer_kwargs(["b:1"])["partitioner"] is partitioner
