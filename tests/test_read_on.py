"""A replay outrun by live events reads on past its end, a few times, then the socket is
cut: the loop alone, its replays stood in for (no broker). The whole of it against a real
Kafka: `tests/test_slow_consumer.py`."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from socketio_kafka.adapter import AsyncKafkaManager, OutboxLimits, RecoveringAsyncServer
from socketio_kafka.adapter.sessions import Session

SESSION = Session("pid", "sid", "/", ("a",), None, (0,), "ep", "host")
SOCKET = ("sid", "/")


class Outrun:
    """Stands in for the server's replay of one range: records the ranges asked for, moves
    the live position on, and has live events outrun the socket's hold ``times`` times."""

    def __init__(self, manager: AsyncKafkaManager, times: int) -> None:
        self.manager = manager
        self.times = times
        self.ranges: list[tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...]]] = []

    async def __call__(
        self,
        eio_sid: str,
        namespace: str,
        session: Session,
        start: Any,
        stop: Any,
        asks: Any = None,
    ) -> int:
        self.ranges.append((start, stop, session.rooms))
        live = self.manager.positions[0]
        self.manager.positions[0] += 10
        events = 3 if len(self.ranges) <= self.times else 1  # the hold keeps 2
        for offset in range(live, live + events):
            self.manager.holds.add((session.sid, namespace), 0, offset, [offset])
        return stop[0] - start[0]


@pytest.fixture
def server() -> RecoveringAsyncServer:
    manager = AsyncKafkaManager("127.0.0.1:9", channel="unit", limits=OutboxLimits(max_packets=2))
    manager.positions = [10]
    return RecoveringAsyncServer(
        client_manager=manager, async_mode="asgi", connection_state_recovery={}
    )


def _wire(
    server: RecoveringAsyncServer, monkeypatch: pytest.MonkeyPatch, times: int
) -> tuple[Outrun, list[str], list[tuple[str, list[Any]]]]:
    manager = server.kafka
    replay = Outrun(manager, times)
    cuts: list[str] = []
    sent: list[tuple[str, list[Any]]] = []
    monkeypatch.setattr(server, "_replay", replay)
    monkeypatch.setattr(manager, "cut_slow_consumer", cuts.append)
    queue = SimpleNamespace()  # the socket's queue: there, not cut
    monkeypatch.setattr(manager, "packet_queue", lambda eio_sid: queue)
    monkeypatch.setattr(manager, "send_packets", lambda sid, packets: sent.append((sid, packets)))
    manager.holds.hold(SOCKET, "e1")
    return replay, cuts, sent


async def test_an_outrun_replay_reads_on_from_its_end_to_the_live_position(
    server: RecoveringAsyncServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    replay, cuts, sent = _wire(server, monkeypatch, times=1)
    missed = await server._replay_then_release("e1", "/", SESSION, (0,), (10,))
    # The first range, then from its end to where the live position was when it ended.
    assert [(start, stop) for start, stop, _ in replay.ranges] == [((0,), (10,)), ((10,), (20,))]
    assert missed == 20
    assert sent == [("e1", [20])]  # what the second stretch held, released
    assert cuts == []
    assert server.kafka.stats.replays_outrun == 1
    assert server.kafka.holds.bytes == 0


async def test_a_replay_outrun_every_time_reads_on_4_times_then_its_socket_is_cut(
    server: RecoveringAsyncServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    replay, cuts, sent = _wire(server, monkeypatch, times=100)
    await server._replay_then_release("e1", "/", SESSION, (0,), (10,))
    assert len(replay.ranges) == 5  # the range and 4 read-ons, each from the last one's end
    assert [start for start, _, _ in replay.ranges] == [(0,), (10,), (20,), (30,), (40,)]
    assert cuts == ["e1"]
    assert sent == []
    assert server.kafka.stats.replays_outrun == 5
    assert not server.kafka.holds.add(SOCKET, 0, 99, [99])  # no longer held


async def test_a_read_on_replays_the_rooms_the_socket_is_in_now(
    server: RecoveringAsyncServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    replay, _, _ = _wire(server, monkeypatch, times=1)
    monkeypatch.setattr(server.kafka, "get_rooms", lambda sid, namespace: [sid, "a", "b"])
    await server._replay_then_release("e1", "/", SESSION, (0,), (10,))
    assert [rooms for _, _, rooms in replay.ranges] == [("a",), ("a", "b")]


async def test_a_socket_cut_or_gone_during_its_replay_is_not_read_on_for(
    server: RecoveringAsyncServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    replay, cuts, _ = _wire(server, monkeypatch, times=100)
    monkeypatch.setattr(server.kafka, "packet_queue", lambda eio_sid: None)
    await server._replay_then_release("e1", "/", SESSION, (0,), (10,))
    assert len(replay.ranges) == 1
    assert cuts == []
    assert server.kafka.stats.replays_outrun == 0


async def test_a_read_on_replays_each_stretch_in_the_rooms_the_socket_was_in_then(
    server: RecoveringAsyncServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taken out of room "a" at 15 while its replay ran, a socket's read-on went through
    today's rooms alone: what "a" was sent before 15, while the socket was in it, was lost
    with the hold that dropped it. Up to 15 it is read in "a" and "b" now, then in "b"."""
    replay, _, _ = _wire(server, monkeypatch, times=1)
    manager, rooms = server.kafka, ["sid", "a", "b"]
    monkeypatch.setattr(manager, "get_rooms", lambda sid, namespace: list(rooms))

    async def left_a_at_15(*args: Any) -> int:
        if not replay.ranges:
            manager.positions[0] = 15
            rooms.remove("a")
            server._rooms_changed("sid", "/")
        return await replay(*args)

    monkeypatch.setattr(server, "_replay", left_a_at_15)
    session = Session("pid", "sid", "/", ("a", "b"), None, (0,), "ep", "host")
    await server._replay_then_release("e1", "/", session, (0,), (10,))
    assert replay.ranges == [
        ((0,), (10,), ("a", "b")),
        ((10,), (15,), ("a", "b")),
        ((15,), (25,), ("b",)),
    ]
    assert server._replaying == {}


async def test_asks_past_an_outrun_holds_bound_have_their_socket_cut_at_once(
    server: RecoveringAsyncServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outrun hold keeps the events that ask for an ack (no replay brings them back);
    more of them than it may hold are dropped too, and the socket is cut: its client sees
    a disconnect, not a call that never comes while it stays connected."""
    _, cuts, sent = _wire(server, monkeypatch, times=0)

    async def asked_4_times(eio_sid: str, namespace: str, *args: Any) -> int:
        for offset in range(4):  # a hold of 2: outrun at the third, lost at the fourth
            server.kafka.holds.add(SOCKET, 0, 10 + offset, [f"ask-{offset}"], ask=True)
        return 0

    monkeypatch.setattr(server, "_replay", asked_4_times)
    await server._replay_then_release("e1", "/", SESSION, (0,), (10,))
    assert cuts == ["e1"]
    assert sent == []
    assert server.kafka.holds.bytes == 0
