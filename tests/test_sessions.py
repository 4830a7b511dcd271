"""Session records, the sessions table, and what a claim is refused for: without a broker."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from socketio_kafka.adapter import AsyncKafkaManager, RecordDecodeError, RecoveringAsyncServer
from socketio_kafka.adapter.sessions import (
    EPOCH_KEY,
    NODE_PREFIX,
    Session,
    SessionTable,
    decode_session,
    encode_session,
)

SESSION = Session("pid1", "sid1", "/", ("a", "b"), {"user": 7}, (0, 4), "ep", "node1")


def test_round_trip() -> None:
    assert decode_session(encode_session(SESSION)) == SESSION
    gone = replace(SESSION, rooms=("a",), data=None, disconnected_at=12.5)
    assert decode_session(encode_session(gone)) == gone


@pytest.mark.parametrize(
    "value",
    [
        b"nope",
        b"[]",
        b'{"v": 2}',
        json.dumps({"v": 1, "pid": "p"}).encode(),
        encode_session(SESSION).replace(b'"rooms":["a","b"]', b'"rooms":[1]'),
        encode_session(SESSION).replace(b'"pid":"pid1"', b'"pid":3'),
    ],
)
def test_malformed_records_are_refused(value: bytes) -> None:
    with pytest.raises(RecordDecodeError):
        decode_session(value)


def test_table_follows_the_topic() -> None:
    table = SessionTable()
    table.apply(EPOCH_KEY, b'{"epoch": "e1"}', 1000)
    table.apply(b"pid1", encode_session(SESSION), 1000)
    table.apply(NODE_PREFIX + b"node1", b"{}", 5000)
    assert table.epoch == "e1"
    assert table.sessions["pid1"] == SESSION
    assert table.heartbeats == {"node1": 5.0}
    assert not table.node_alive("node1", stale_after=10)  # 1970 is long ago
    table.apply(b"pid1", None, 2000)  # tombstone
    assert "pid1" not in table.sessions
    with pytest.raises(RecordDecodeError):
        table.apply(EPOCH_KEY, b'{"epoch": 5}', 1000)
    with pytest.raises(RecordDecodeError):
        table.apply(None, b"{}", 1000)


def test_expired_sessions() -> None:
    table = SessionTable()
    left = replace(SESSION, pid="left", disconnected_at=100.0)
    orphan = replace(SESSION, pid="orphan", owner="dead")
    live = replace(SESSION, pid="live", owner="alive")
    unknown = replace(SESSION, pid="unknown", owner="never-heard-of")
    for session in (left, orphan, live, unknown):
        table.apply(session.pid.encode(), encode_session(session), 0)
    table.apply(NODE_PREFIX + b"dead", b"{}", 120_000)
    table.apply(NODE_PREFIX + b"alive", b"{}", 195_000)
    assert table.expired(now=150, window=60, stale_after=15) == []
    assert {s.pid for s in table.expired(now=161, window=60, stale_after=15)} == {"left"}
    assert {s.pid for s in table.expired(now=200, window=60, stale_after=15)} == {"left", "orphan"}


def test_a_session_left_by_a_node_never_heard_from_is_claimable() -> None:
    """Its node died before its first heartbeat arrived: moments ago, not long ago."""
    manager = AsyncKafkaManager("kafka://127.0.0.1:1", channel="c")
    server = RecoveringAsyncServer(
        client_manager=manager,
        async_mode="asgi",
        connection_state_recovery={"max_disconnection_duration": 60},
    )
    manager.epoch = SESSION.epoch
    unknown = replace(SESSION, owner="never-heard-of")
    assert server._refusal(unknown, "/") is None
    manager.sessions.apply(NODE_PREFIX + b"long-gone", b"{}", 1_000)  # 1970: long past
    assert server._refusal(replace(SESSION, owner="long-gone"), "/") == "expired"
    manager.sessions.apply(NODE_PREFIX + b"alive", b"{}", int(time.time() * 1000))
    assert server._refusal(replace(SESSION, owner="alive"), "/") is not None  # still on it
