"""`RoomIndex`: python-socketio's room tables and answers, a socket's rooms found from it.

The index replaces `BaseManager.get_rooms` and `basic_disconnect` (a scan of every room of
the namespace). These tests run python-socketio's own manager and an indexed one through the
same operations and compare every table after each, so a change in python-socketio's
bookkeeping fails here, loudly, before it makes the two disagree in production.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from socketio.base_manager import BaseManager

from socketio_kafka.adapter import AsyncKafkaManager
from socketio_kafka.adapter.rooms import RoomIndex


class _Eio:
    def __init__(self) -> None:
        self._ids = itertools.count()

    def generate_id(self) -> str:
        return f"s{next(self._ids)}"


class _Server:
    def __init__(self) -> None:
        self.eio = _Eio()
        self.packet_class = type("Packet", (), {"json": None})


class Indexed(RoomIndex, BaseManager):  # type: ignore[misc]
    pass


def _managers() -> tuple[BaseManager, Indexed]:
    plain, indexed = BaseManager(), Indexed()
    for manager in (plain, indexed):
        manager.set_server(_Server())
    return plain, indexed


def _tables(manager: BaseManager) -> dict[str, Any]:
    """Everything python-socketio keeps, rooms as plain dicts (bidicts do not compare)."""
    state = {k: v for k, v in vars(manager).items() if k not in ("_joined", "server", "json")}
    state["rooms"] = {
        ns: {room: dict(members) for room, members in table.items()}
        for ns, table in manager.rooms.items()
    }
    state["callbacks"] = sorted(manager.callbacks)
    return state


def _step(
    rng: random.Random, managers: tuple[BaseManager, ...], sids: list[tuple[str, str]], n: int
) -> None:
    """One random operation, the same on every manager (``n``: the step's number)."""
    namespace = rng.choice(["/", "/chat"])
    room = rng.choice(["a", "b", "c", "d"])
    known = [s for s in sids if s[1] == namespace]
    op = rng.choice(["connect", "connect", "enter", "enter", "leave", "close", "ack", "off", "pre"])
    if op == "connect" or not known:
        eio_sid = f"e{n}"
        made = [m.pre_connect(eio_sid, namespace) for m in managers]
        assert len(set(made)) == 1
        if rng.random() < 0.8:
            for m in managers:
                m.connect(made[0], namespace)
        sids.append((made[0], namespace))
        return
    sid = rng.choice(known)[0]
    left = rng.choice([room, sid])
    for m in managers:
        if op == "enter":
            m.basic_enter_room(sid, namespace, room)
        elif op == "leave":
            m.basic_leave_room(sid, namespace, left)
        elif op == "close":
            m.basic_close_room(room, namespace)
        elif op == "ack":
            m._generate_ack_id(sid, print)
        elif op == "pre":
            m.pre_disconnect(sid, namespace)
        else:
            m.basic_disconnect(sid, namespace)
    if op == "off":
        sids.remove((sid, namespace))


@pytest.mark.parametrize("seed", range(20))
def test_an_indexed_manager_keeps_python_socketios_tables_and_answers(seed: int) -> None:
    rng = random.Random(seed)
    plain, indexed = _managers()
    sids: list[tuple[str, str]] = []
    for n in range(300):
        _step(rng, (plain, indexed), sids, n)
        assert _tables(indexed) == _tables(plain)
        for sid, namespace in sids:
            assert sorted(indexed.get_rooms(sid, namespace)) == sorted(
                plain.get_rooms(sid, namespace)
            )


class _NoScan(dict[Any, Any]):
    """A namespace's room table that fails any walk over it."""

    def items(self) -> Any:
        raise AssertionError("walked every room")

    def copy(self) -> Any:
        raise AssertionError("copied every room")


def test_a_sockets_rooms_and_its_disconnect_cost_what_it_is_in_not_every_room() -> None:
    manager = Indexed()
    manager.set_server(_Server())
    sids = [manager.connect(f"e{i}", "/") for i in range(50)]
    for i, sid in enumerate(sids):
        manager.basic_enter_room(sid, "/", f"room-{i}")
        manager.basic_enter_room(sid, "/", "shared")
    manager.rooms["/"] = _NoScan(manager.rooms["/"])
    assert manager.get_rooms(sids[7], "/") == [sids[7], "room-7", "shared"]
    manager.basic_disconnect(sids[7], "/")
    assert manager.get_rooms(sids[7], "/") == []
    assert "room-7" not in manager.rooms["/"]
    assert sids[7] not in manager.rooms["/"]["shared"]


def test_the_kafka_manager_answers_from_the_index() -> None:
    assert AsyncKafkaManager.get_rooms is RoomIndex.get_rooms
    assert AsyncKafkaManager.basic_disconnect is RoomIndex.basic_disconnect
