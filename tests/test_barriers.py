"""A node's emits, then its disconnect or room change of a socket on another node: that
node delivers the emits first, as python-socketio's Redis manager (one channel) does.

The emit is keyed by its room, the operation by its sid or room: two partitions, which the
other node may read in either order. Before `Barriers`, "tell the client why, then kick it"
lost the why in 7 and 8 of 12 tries (session 51's parity run against `AsyncRedisManager`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import socketio
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from socketio_kafka.adapter import AsyncKafkaManager, KafkaOptions
from socketio_kafka.adapter import barriers as barriers_module
from socketio_kafka.adapter.barriers import Barriers
from socketio_kafka.adapter.codec import record_key
from socketio_kafka.adapter.errors import RecordDecodeError
from socketio_kafka.adapter.routing import headers_for, parse_after, partition_of, read_route

from .support.server import run_server
from .support.waiting import wait_until

TRIES = 12


class _Client:
    """A python-socketio client that logs every event and its disconnect, in order."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.log: list[Any] = []

        @self.sio.on("*")  # type: ignore[untyped-decorator]
        async def any_event(event: str, *args: Any) -> None:
            self.log.append((event, *args))

        @self.sio.event  # type: ignore[untyped-decorator]
        async def disconnect(reason: Any = None) -> None:
            self.log.append(("gone",))

    async def connect(self, url: str, rooms: list[str]) -> str:
        await self.sio.connect(url, auth={"rooms": rooms}, transports=["websocket"])
        sid = self.sio.get_sid()
        assert sid is not None
        return sid


@asynccontextmanager
async def _nodes(
    kafka_url: str, channel: str, options: KafkaOptions | None = None
) -> AsyncIterator[list[tuple[Any, str]]]:
    """Two servers on one channel, each with its URL; a client's auth names its rooms."""
    async with AsyncExitStack() as stack:
        nodes = []
        for _ in range(2):
            manager = AsyncKafkaManager(kafka_url, channel=channel, options=options)
            sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)

            async def connect(sid: str, environ: Any, auth: Any, sio: Any = sio) -> None:
                for room in auth["rooms"]:
                    await sio.enter_room(sid, room)

            sio.on("connect", connect)
            await stack.enter_async_context(manager)
            nodes.append((sio, await stack.enter_async_context(run_server(socketio.ASGIApp(sio)))))
        yield nodes


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_emits_then_a_remote_disconnect_reach_the_client_before_it_goes(
    kafka_url: str, channel: str
) -> None:
    async with _nodes(kafka_url, channel) as ((a, _), (c, url)):
        for i in range(TRIES):
            client = _Client()
            sid = await client.connect(url, [f"k{i}", "other"])
            await a.emit("room", i, to=f"k{i}")
            await a.emit("everyone", i)
            await a.emit("rooms", i, to=[f"k{i}", "other"])
            await a.disconnect(sid)
            await wait_until(lambda c=client: ("gone",) in c.log, 15, "the client to go")
            # In any order but last: emits of different keys keep no order between them.
            assert sorted(client.log[:-1]) == [("everyone", i), ("room", i), ("rooms", i)]
            assert client.log[-1] == ("gone",)
        assert c.manager.stats.barriers_expired == 0  # held until reached, not timed out


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_a_write_only_manager_emits_then_disconnects_a_socket(
    kafka_url: str, channel: str
) -> None:
    """A worker's "tell the client why, then kick it": python-socketio's ``disconnect``
    applies it locally first, on the server a write-only manager does not have
    (``AttributeError``), and never published it."""
    async with (
        _nodes(kafka_url, channel) as (_, (_, url)),
        AsyncKafkaManager(kafka_url, channel=channel, write_only=True) as worker,
    ):
        for i in range(3):
            client = _Client()
            sid = await client.connect(url, [f"k{i}"])
            await worker.emit("why", i, room=f"k{i}")
            await worker.disconnect(sid, namespace="/")
            await wait_until(lambda c=client: ("gone",) in c.log, 15, "the client to go")
            assert client.log == [("why", i), ("gone",)]


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_emits_then_a_remote_room_change_reach_the_sockets_then_in_the_room(
    kafka_url: str, channel: str
) -> None:
    """Leaving or closing a room after an emit to it keeps the emit; entering one after an
    emit to it does not bring the emit (the socket was not in it when it was sent). The
    emits go to two rooms, so that they are keyed by the namespace, not the room the
    operation's record is keyed by."""
    async with _nodes(kafka_url, channel) as ((a, _), (c, url)):
        client = _Client()
        sid = await client.connect(url, [])
        for i in range(TRIES):
            await a.enter_room(sid, f"l{i}")
            await a.enter_room(sid, f"c{i}")
            await a.emit("fence", i, to=sid)
            await wait_until(lambda i=i: ("fence", i) in client.log, 15, "the rooms entered")
            await a.emit("before leaving", i, to=[f"l{i}", "nobody"])
            await a.leave_room(sid, f"l{i}")
            await a.emit("before closing", i, to=[f"c{i}", "nobody"])
            await a.close_room(f"c{i}")
            await a.emit("before entering", i, to=[f"e{i}", "nobody"])
            await a.enter_room(sid, f"e{i}")
            await a.emit("entered", i, to=f"e{i}")  # the room's key: read after the enter
            wanted = {("before leaving", i), ("before closing", i), ("entered", i)}
            await wait_until(lambda w=wanted: w <= set(client.log), 10, f"try {i}'s emits")
            assert ("before entering", i) not in client.log
        assert len(client.log) == 4 * TRIES  # nothing twice
        assert c.manager.stats.barriers_expired == 0
        await client.sio.disconnect()


def test_an_operation_holds_its_partition_until_the_emits_it_names_are_reached() -> None:
    barriers = Barriers()
    positions = {0: 5, 1: 10}

    def reached(after: dict[int, int]) -> bool:
        return all(positions[p] >= o for p, o in after.items())

    assert not barriers.holds(2, 40, {0: 5, 1: 10}, reached)  # already delivered here
    assert not barriers
    assert barriers.holds(2, 41, {0: 7}, reached)
    assert barriers.release(reached) == ({2}, [])
    positions[0] = 7
    assert barriers.release(reached) == (set(), [])
    assert not barriers.holds(2, 41, {0: 7}, reached)  # read again, and applied


def test_a_hold_whose_emits_never_come_expires_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A topic made again, its offsets begun anew: the operation is applied after
    `HOLD_MAX_S`, not held for good, and not held again when its record is read again."""
    monkeypatch.setattr(barriers_module, "HOLD_MAX_S", 0.0)
    barriers = Barriers()

    def never(after: dict[int, int]) -> bool:
        return False

    assert barriers.holds(3, 8, {0: 1_000}, never)
    assert barriers.release(never) == (set(), [3])
    assert not barriers.holds(3, 8, {0: 1_000}, never)
    assert barriers.holds(3, 9, {0: 1_000}, never)  # the next one waits again


@pytest.mark.parametrize("method", ["disconnect", "enter_room", "leave_room", "close_room"])
def test_room_operations_and_disconnects_name_where_their_nodes_emits_ended(method: str) -> None:
    message = {"method": method, "namespace": "/", "sid": "s1", "room": "r", "host_id": "h"}
    if method in ("disconnect", "close_room"):
        del message["sid" if method == "close_room" else "room"]
    route = read_route(headers_for(message, after={0: 17, 3: 1024}))
    assert route is not None
    assert route.after is not None
    assert parse_after(route.after) == {0: 17, 3: 1024}
    route = read_route(headers_for(message, after={}))
    assert route is not None
    assert route.after is None  # a node that emitted nothing yet


def test_emits_and_callbacks_carry_no_barrier() -> None:
    emit = {"method": "emit", "namespace": "/", "event": "e", "data": [], "room": "r"}
    assert read_route(headers_for(emit, after={0: 1})) == read_route(headers_for(emit))
    assert all(name != "sio.after" for name, _ in headers_for(emit, after={0: 1}))


@pytest.mark.parametrize("value", [b"", b"0:", b"0:1,", b"x:1", b"0:1:2", b"-1:4", b"0:-4", None])
def test_a_malformed_after_header_is_refused(value: bytes | None) -> None:
    message = {"method": "disconnect", "namespace": "/", "sid": "s1", "host_id": "h"}
    route = read_route([*headers_for(message), ("sio.after", value)])
    assert route is not None
    assert route.after is not None
    with pytest.raises(RecordDecodeError):
        parse_after(route.after)


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_partitions_added_since_a_node_started_are_not_waited_for(
    kafka_url: str, channel: str
) -> None:
    """A node reads the partitions the topic had when it started; another, whose producer
    has learnt of added ones, names them in its operations. Waited for, they never came:
    every such operation was held the full `HOLD_MAX_S` (a reviewer's reproduction)."""
    async with _nodes(kafka_url, channel, KafkaOptions(partitions=2)) as ((a, _), (b, url)):
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_url.removeprefix("kafka://"))
        await admin.start()
        try:
            await admin.create_partitions({a.manager.events_topic: NewPartitions(3)})
        finally:
            await admin.close()
        room = next(f"r{i}" for i in range(1000) if _partition(f"r{i}", 3) == 2)
        await wait_until(lambda: _emits_to(a.manager, room) == 2, 15, "A to see the partition")
        client = _Client()
        sid = await client.connect(url, [])
        while _partition(sid, 3, "disconnect") == 2:  # a record B reads, on partition 0 or 1
            await client.sio.disconnect()
            client = _Client()
            sid = await client.connect(url, [])
        await a.emit("news", 1, to=room)
        assert 2 in a.manager._emitted
        await a.disconnect(sid)
        await wait_until(lambda: ("gone",) in client.log, 15, "the client to go")
        assert b.manager.stats.barriers_held == 0
        assert b.manager.stats.barriers_expired == 0


def _partition(target: str, count: int, method: str = "emit") -> int:
    field = "sid" if method == "disconnect" else "room"
    return partition_of(record_key({"method": method, "namespace": "/", field: target}), count)


def _emits_to(manager: AsyncKafkaManager, room: str) -> int | None:
    """The partition the manager's producer would write an emit to ``room`` to now."""
    publisher = manager._publisher
    assert publisher is not None
    known = publisher.producer.client.cluster.partitions_for_topic(manager.events_topic)
    return _partition(room, len(known)) if known else None


def test_an_operation_names_the_partitions_emitted_to_lately_only() -> None:
    """Every partition ever written to made each record 2-3 KB longer at 192 partitions."""
    manager = AsyncKafkaManager("kafka://127.0.0.1:1")
    now = time.monotonic()
    manager._emitted = {0: 5, 1: 7, 2: 9}
    manager._emitted_at = {0: now, 1: now - 61, 2: now - 30}
    assert manager._recent_emits() == {0: 5, 2: 9}
