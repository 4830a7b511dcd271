"""Session records, the sessions table, and what a claim is refused for: without a broker."""

from __future__ import annotations

import gc
import json
import random
import time
import tracemalloc
from dataclasses import fields, replace
from typing import Any

import pytest

from socketio_kafka.adapter import AsyncKafkaManager, RecordDecodeError, RecoveringAsyncServer
from socketio_kafka.adapter.sessions import (
    ARRIVAL_S,
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
    claim = replace(SESSION, claimed=41)
    assert decode_session(encode_session(claim)) == claim
    # Every field is written: one added to Session must be added to the record too.
    every = replace(gone, claimed=41)
    assert json.loads(encode_session(every)).keys() == {"v", *(f.name for f in fields(Session))}


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


def test_a_session_ended_lately_is_remembered_for_a_while_and_an_old_end_never() -> None:
    """A claim of a pid not in the table waits for a session minted moments ago elsewhere,
    unless its end was read lately (recovery.py): ends are kept twice `ARRIVAL_S` by the
    time their records were written, so the topic's past, read at start-up, keeps none."""
    table = SessionTable()
    now_ms = int(time.time() * 1000)
    table.apply(b"pid1", encode_session(SESSION), now_ms)
    table.apply(b"pid1", None, now_ms)
    table.apply(b"pid0", None, now_ms - int(2 * ARRIVAL_S * 1000) - 1000)  # from the past
    assert (table.ended_lately("pid1"), table.ended_lately("pid0")) == (True, False)
    assert not table.ended_lately("pid2")
    assert list(table._ended) == ["pid1"]
    # An end written long enough ago is forgotten as the next one is noted.
    table._ended["pid1"] -= 2 * ARRIVAL_S
    table.apply(b"pid3", None, now_ms)
    assert (table.ended_lately("pid1"), list(table._ended)) == (False, ["pid3"])


def test_the_table_keeps_one_copy_of_what_its_sessions_share() -> None:
    """Its pid once, whatever records of it came (the key's string), and a node's id and the
    epoch once for all its sessions: a node holds every session of the cluster."""
    table = SessionTable()
    other = replace(SESSION, pid="pid2", sid="sid2")
    for session in (SESSION, other, replace(SESSION, rooms=("c",))):
        table.apply(session.pid.encode(), encode_session(session), 1000)
    (key1, first), (key2, second) = table.sessions.items()
    assert first.rooms == ("c",)
    assert first.pid is key1
    assert second.pid is key2
    assert next(k for k in table.offsets if k == "pid1") is key1
    assert first.owner is second.owner
    assert first.epoch is second.epoch
    with pytest.raises(RecordDecodeError, match="under the key"):
        table.apply(b"pid3", encode_session(SESSION), 1000)
    assert "pid3" not in table.sessions


def test_a_session_costs_its_node_about_a_kilobyte_at_48_partitions() -> None:
    """Every node keeps every live session of the cluster: 1,000,000 connections are
    1,000,000 sessions on each node. Each partition of ``start`` costs 8 bytes (a tuple of
    ints took 36: 2.2 kB a session here, against under 1 kB)."""
    records = [
        (
            f"pid-{i:016d}".encode(),
            encode_session(
                replace(
                    SESSION,
                    pid=f"pid-{i:016d}",
                    sid=f"sid-{i:016d}",
                    rooms=(f"room-{i % 100}", f"user-{i}"),
                    data=None,
                    start=tuple(10_000_000 + i + p for p in range(48)),
                )
            ),
        )
        for i in range(5000)
    ]
    table = SessionTable()
    tracemalloc.start()
    try:
        for offset, (key, value) in enumerate(records):
            table.apply(key, value, 1000, 10_000_000 + offset)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(table.sessions) == 5000
    assert size / 5000 < 1200


def test_a_tables_sessions_are_out_of_the_collectors_sight() -> None:
    """A full collection walks every object the collector tracks, and a node keeps every
    session of the cluster: as objects, 200,000 of them made each full collection 40 ms
    longer. Kept as rows of strings, numbers and bytes, they are not tracked once seen."""
    table = SessionTable()
    gc.collect()
    before = len(gc.get_objects())
    for n in range(2000):
        session = replace(SESSION, pid=f"p{n}", data={"user": n, "roles": ["a"]})
        table.apply(session.pid.encode(), encode_session(session), 0, n)
    gc.collect()
    gc.collect()
    assert len(gc.get_objects()) - before < 100
    assert table.sessions["p7"].data == {"user": 7, "roles": ["a"]}


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


def test_a_node_is_forgotten_only_once_it_owns_no_session() -> None:
    table = SessionTable()
    table.apply(NODE_PREFIX + b"idle", b"{}", 100_000)
    table.apply(NODE_PREFIX + b"owner", b"{}", 100_000)
    table.apply(NODE_PREFIX + b"recent", b"{}", 190_000)
    session = replace(SESSION, owner="owner")
    table.apply(session.pid.encode(), encode_session(session), 0)
    assert table.forgotten_nodes(now=200, after=60) == ["idle"]
    table.apply(session.pid.encode(), None, 0)
    assert table.forgotten_nodes(now=200, after=60) == ["idle", "owner"]
    table.apply(NODE_PREFIX + b"idle", None, 200_000)  # a tombstone: not a heartbeat
    assert table.heartbeats.keys() == {"owner", "recent"}


def _expired_by_scan(table: SessionTable, now: float, window: float, stale: float) -> set[str]:
    """What `SessionTable.expired` finds, found by looking at every session."""
    out = set()
    for session in table.sessions.values():
        left_at = session.disconnected_at
        if left_at is None:
            seen = table.heartbeats.get(session.owner)
            if seen is None or now - seen < stale:
                continue
            left_at = seen
        if now - left_at > window:
            out.add(session.pid)
    return out


def test_expiry_finds_what_a_look_at_every_session_finds() -> None:
    """Sessions written, rewritten, left, taken over by other nodes and ended, in random
    order, under nodes alive, dead and unheard of."""
    rng = random.Random(7)
    table = SessionTable()
    owners = ["n1", "n2", "n3", "n4"]
    for offset in range(3000):
        pid = f"p{rng.randrange(400)}"
        if rng.random() < 0.1:
            table.apply(pid.encode(), None, 0, offset)
            continue
        left = rng.choice([None, float(rng.randrange(200))])
        session = replace(SESSION, pid=pid, owner=rng.choice(owners), disconnected_at=left)
        table.apply(pid.encode(), encode_session(session), 0, offset)
        if rng.random() < 0.05:
            table.apply(
                NODE_PREFIX + rng.choice(owners[:3]).encode(), b"{}", 1000 * rng.randrange(200)
            )
    for now in range(0, 400, 7):
        found = {s.pid for s in table.expired(float(now), window=60, stale_after=15)}
        assert found == _expired_by_scan(table, now, 60, 15), now


class _NoScan(dict[str, Session]):
    def values(self) -> Any:
        raise AssertionError("looked at every session")


def test_expiry_looks_only_at_left_sessions_while_no_node_is_dead() -> None:
    """A node holds every session of the cluster (millions at scale), and the sweep runs
    every 5 s on its event loop."""
    table = SessionTable()
    table.sessions = _NoScan()
    table.apply(NODE_PREFIX + b"node1", b"{}", 100_000)
    for n in range(1000):
        left = 10.0 if n % 10 == 0 else None
        session = replace(SESSION, pid=f"p{n}", disconnected_at=left)
        table.apply(session.pid.encode(), encode_session(session), 0, n)
    assert len(table.expired(now=105, window=60, stale_after=15)) == 100


def test_a_session_left_by_a_node_never_heard_from_is_claimable() -> None:
    """Its node died before its first heartbeat arrived: moments ago, not long ago."""
    manager = AsyncKafkaManager("kafka://127.0.0.1:1", channel="c")
    server = RecoveringAsyncServer(
        client_manager=manager,
        async_mode="asgi",
        connection_state_recovery={"max_disconnection_duration": 60},
    )
    manager.store.table.epoch = SESSION.epoch
    unknown = replace(SESSION, owner="never-heard-of")
    assert server._refusal(unknown, "/") is None
    manager.store.table.apply(NODE_PREFIX + b"long-gone", b"{}", 1_000)  # 1970: long past
    assert server._refusal(replace(SESSION, owner="long-gone"), "/") == "expired"
    manager.store.table.apply(NODE_PREFIX + b"alive", b"{}", int(time.time() * 1000))
    assert server._refusal(replace(SESSION, owner="alive"), "/") is not None  # still on it


def _with(**fields: object) -> bytes:
    """SESSION's record with some fields replaced, as any producer could write it."""
    raw = json.loads(encode_session(SESSION))
    raw.update(fields)
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("key", "value", "timestamp_ms"),
    [
        (b"", encode_session(SESSION), 0),
        (NODE_PREFIX + b"\xff\xfe", b"{}", 1000),  # stopped delivery on every node
        (NODE_PREFIX + b"n", b"{}", -1),  # Kafka's "no timestamp"
        (NODE_PREFIX + b"n", b"{}", 10**30),
        (b"\xff\xfe", None, 0),
        (b"pid1", _with(rooms="ab"), 0),  # became the rooms ("a", "b")
        (b"pid1", _with(rooms=None), 0),
        (b"pid1", _with(start=3), 0),
        (b"pid1", _with(start=[True, 0]), 0),
        (b"pid1", _with(start=[-1, 0]), 0),
        (b"pid1", _with(start=[2**64, 0]), 0),
        (b"pid1", _with(disconnected_at="soon"), 0),
        (b"pid1", _with(disconnected_at=True), 0),
        (b"pid1", _with(disconnected_at=10**400), 0),
        (b"pid1", _with(epoch=5), 0),
        (b"pid1", _with(owner=None), 0),
        (b"pid1", _with(pid="other"), 0),  # a tombstone for pid1 would leave it behind
        (b"pid1", b'{"v":1,"data":' + b"[" * 5000 + b"]" * 5000 + b"}", 0),
        (b"pid1", b"\xff", 0),
        (EPOCH_KEY, None, 0),
        (EPOCH_KEY, b'{"epoch": "has~tilde"}', 0),
        (EPOCH_KEY, b"[" * 5000, 0),
    ],
)
def test_a_bad_record_is_refused_and_changes_nothing(
    key: bytes, value: bytes | None, timestamp_ms: int
) -> None:
    table = SessionTable()
    table.apply(EPOCH_KEY, b'{"epoch": "e1"}', 1000)
    table.apply(b"pid1", encode_session(SESSION), 1000)
    table.apply(NODE_PREFIX + b"node1", b"{}", 5000)
    before = (table.epoch, dict(table.sessions), dict(table.heartbeats))
    with pytest.raises(RecordDecodeError):
        table.apply(key, value, timestamp_ms)
    assert (table.epoch, table.sessions, table.heartbeats) == before
    assert table.expired(now=1e12, window=60, stale_after=15) == [SESSION]
    assert not table.node_alive("node1", stale_after=15)
