"""What the live consumer saw where, and the ranges replays may then leave unread."""

from __future__ import annotations

from typing import Any

from socketio_kafka.adapter import codec, routing
from socketio_kafka.adapter.routing import Audience, Route
from socketio_kafka.adapter.sightings import BUCKETS, Sightings

MINE = ["mine", "sid1"]  # a session's rooms keyed to one partition


def _route(message: dict[str, Any]) -> Route:
    route = routing.read_route(routing.headers_for(message))
    assert route is not None
    return route


def _emit(
    room: str | list[str] | None,
    namespace: str = "/",
    callback: tuple[str, str, int] | None = None,
) -> Route:
    return _route(
        codec.emit_message(
            "e", 1, namespace=namespace, room=room, skip_sid=None, callback=callback, host_id="h"
        )
    )


_PER_TABLE = BUCKETS // 4  # of each of the two tables of the two partitions of `_seen`


def _apart(*rooms: str) -> None:
    """The test's rooms share no bucket of the first table in this process (hashes are
    salted per process)."""
    buckets = {hash(("/", room)) % _PER_TABLE for room in (*rooms, None)}
    assert len(buckets) == len(rooms) + 1, "a bucket collision; run again"


def _sharing_a_bucket_with(room: str, table: int) -> str:
    """Another room whose bucket of ``table`` (0 or 1) is ``room``'s, and of the other
    table is not."""

    def buckets(name: str) -> tuple[int, int]:
        key = hash(("/", name))
        return key % _PER_TABLE, (key >> 32) % _PER_TABLE

    mine = buckets(room)
    for n in range(100 * _PER_TABLE):
        theirs = buckets(f"other-{n}")
        if theirs[table] == mine[table] and theirs[1 - table] != mine[1 - table]:
            return f"other-{n}"
    raise AssertionError("no such room")


def _seen(partitions: int = 2, since: int = 10) -> tuple[Sightings, list[int]]:
    sightings, positions = Sightings(), [since] * partitions
    sightings.reset(positions)
    return sightings, positions


def test_a_partition_none_of_the_sessions_rooms_was_written_to_is_skipped() -> None:
    _apart("mine", "sid1", "other")
    sightings, positions = _seen()
    for offset in range(10, 20):
        sightings.note(0, offset, _emit("other"))
        positions[0] = offset + 1
    assert sightings.bound(0, 10, 20, "/", MINE) <= 10
    sightings.note(0, 20, _emit("mine"))
    sightings.note(0, 21, _emit("other"))
    positions[0] = 22
    assert sightings.bound(0, 10, 22, "/", MINE) == 21  # read up to its last record
    assert sightings.bound(0, 21, 22, "/", MINE) <= 21  # after it: nothing
    assert sightings.bound(0, 10, 22, "/", ["sid1"]) <= 10  # asked of its sid alone


def test_its_sid_a_broadcast_and_an_emit_to_several_rooms_count() -> None:
    _apart("mine", "sid1", "a", "b")
    cases = [
        (_emit("sid1"), MINE),
        (_emit(None), [None]),  # where its namespace's broadcasts go
        (_emit(["a", "mine", "b"]), [None]),  # keyed, and noted, as a broadcast
    ]
    for route, rooms in cases:
        sightings, positions = _seen()
        sightings.note(1, 10, route)
        positions[1] = 11
        assert sightings.bound(1, 10, 11, "/", rooms) == 11
        assert sightings.bound(1, 10, 11, "/", ["other"]) <= 10


def test_what_a_replay_never_delivers_is_not_counted() -> None:
    _apart("mine", "sid1")
    sightings, positions = _seen()
    sightings.note(0, 10, _emit("mine", callback=("sid1", "/", 7)))  # waits for an ack
    sightings.note(0, 11, _emit("mine", namespace="/chat"))  # another namespace
    enter = {"method": "enter_room", "sid": "sid1", "namespace": "/", "room": "mine"}
    sightings.note(0, 12, _route({**enter, "host_id": "h"}))
    positions[0] = 13
    assert sightings.bound(0, 10, 13, "/", [*MINE, None]) <= 10


def test_a_record_without_routing_headers_may_be_anyones() -> None:
    sightings, positions = _seen()
    sightings.note(0, 14, None)
    positions[0] = 15
    assert sightings.bound(0, 10, 15, "/", MINE) == 15


def test_a_range_not_read_whole_here_is_read_whole() -> None:
    sightings, positions = _seen(since=10)
    positions[0] = 20
    assert sightings.bound(0, 5, 20, "/", MINE) == 20  # from before this node read it
    assert sightings.bound(0, 10, 25, "/", MINE) == 25  # past what it has read
    assert sightings.bound(3, 10, 20, "/", MINE) == 20  # a partition it does not know
    assert sightings.bound(0, 10, 20, "/", MINE) <= 10
    assert Sightings().bound(0, 10, 20, "/", MINE) == 20  # never positioned: nothing known


def test_a_session_asks_each_partition_of_the_rooms_keyed_to_it() -> None:
    audience = Audience.of("/", "sid1", ["mine", "yours"])
    keyed = audience.by_partition(48)
    assert set(keyed) == audience.partitions(48)
    assert sorted(r for rooms in keyed.values() for r in rooms if r) == ["mine", "sid1", "yours"]
    assert [r for rooms in keyed.values() for r in rooms if r is None] == [None]
    for partition, rooms in keyed.items():
        for room in rooms:
            key = codec.record_key({"method": "emit", "namespace": "/", "room": room})
            assert routing.partition_of(key, 48) == partition


def test_a_record_of_a_partition_never_positioned_is_not_noted() -> None:
    sightings = Sightings()
    sightings.note(0, 5, None)  # the consume loop runs only once positioned; no error if not
    assert sightings.bound(0, 0, 6, "/", MINE) == 6


def test_a_room_sharing_one_of_its_buckets_is_told_apart() -> None:
    for table in (0, 1):
        sightings, positions = _seen()
        sightings.note(0, 10, _emit(_sharing_a_bucket_with("mine", table)))
        positions[0] = 11
        assert sightings.bound(0, 10, 11, "/", ["mine"]) <= 10


def test_few_rooms_look_written_to_by_thousands_of_others() -> None:
    """6 partitions, 5,000 rooms written: about 0.3% of other rooms look written to (2.5%
    with one table of the same size)."""
    partitions = 6
    sightings, positions = _seen(partitions, since=0)
    for n in range(5_000):
        room = f"busy-{n}"
        key = codec.record_key({"method": "emit", "namespace": "/", "room": room})
        partition = routing.partition_of(key, partitions)
        sightings.note(partition, positions[partition], _emit(room))
        positions[partition] += 1
    looked_written = 0
    for n in range(3_000):
        room = f"quiet-{n}"
        key = codec.record_key({"method": "emit", "namespace": "/", "room": room})
        partition = routing.partition_of(key, partitions)
        stop = positions[partition]
        looked_written += sightings.bound(partition, 0, stop, "/", [room]) > 0
    assert looked_written < 30  # 1%; about 9 expected
