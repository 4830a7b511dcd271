"""One client's publishes to one room reach every receiver in the order it sent them, even
when it sends the next before the previous ack: python-socketio runs each event handler in a
task of its own, and the order is made true by `adapter/turns.py`, not left to the tasks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

import pytest

from socketio_kafka.adapter.manager import ManagerStats
from socketio_kafka.adapter.publisher import Publisher
from socketio_kafka.adapter.sessions import Session, decode_session
from socketio_kafka.adapter.store import SessionStore
from socketio_kafka.adapter.watermarks import Watermarks

from .support.clients import Recorder
from .support.cluster import FAST_PUBLISHER, gateway_cluster
from .support.producers import FakeProducer

pytestmark = [pytest.mark.timeout(120)]

_EVENTS = 1500


@pytest.mark.kafka
async def test_pipelined_publishes_from_a_fresh_node_arrive_in_the_order_sent(
    kafka_url: str, channel: str
) -> None:
    """From the first publish on: the first ones of a node once waited on Kafka's metadata
    together and were stored in the order they woke up."""
    async with gateway_cluster(kafka_url, channel, 2, FAST_PUBLISHER) as (first, second):
        receivers = [Recorder(second.url), Recorder(first.url)]
        publisher = Recorder(first.url)
        for client in (*receivers, publisher):
            await client.connect()
        for receiver in receivers:
            assert await receiver.ask("join", {"room": "r"}) == {"ok": True}
        acks: list[Any] = []
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def acked(n: int) -> Any:
            def record(reply: Any) -> None:
                acks.append((n, reply))
                if len(acks) == _EVENTS and not done.done():
                    done.set_result(None)

            return record

        for n in range(_EVENTS):  # never waiting for an ack before the next
            await publisher.client.emit(
                "publish", {"room": "r", "event": "n", "data": n}, callback=acked(n)
            )
        await asyncio.wait_for(done, 60)
        assert [reply for _, reply in acks if reply.get("ok") is not True] == []
        for receiver in receivers:
            got = await receiver.wait_for("n", _EVENTS, timeout=60)
            moved = [(i, n) for i, n in enumerate(got) if n != i]
            assert moved == [], f"{len(moved)} events out of the order sent: {moved[:10]}"
        for client in (*receivers, publisher):
            await client.close()


class _StallingProducer(FakeProducer):
    """Stalls its first send as aiokafka's does when a metadata refresh found the topic
    leaderless (a loop with a sleep): a send that comes meanwhile must not go first."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[Any]:
        if not self.stalled.is_set():
            self.stalled.set()
            await self.release.wait()
        return await super().send(topic, value, key, headers=headers)


async def test_a_sessions_records_reach_kafka_in_the_order_written_while_one_waits() -> None:
    """A session's "connected, no rooms" record stalled in aiokafka's metadata loop, and its
    "left, in room r" record went first: the stalled one became the session's last word,
    and the client recovered into no room (seen under load on a fresh broker). Another
    session's record is not held back meanwhile."""
    producer = _StallingProducer()
    publisher, store = await _store_on(producer)
    connected = Session("p", "s", "/", (), None, (0,), "e", "node")
    left = replace(connected, rooms=("r",), disconnected_at=1.0)
    first = asyncio.create_task(store.write({"p": connected}))
    await asyncio.wait_for(producer.stalled.wait(), 5)
    second = asyncio.create_task(store.write({"p": left}))
    await asyncio.wait_for(store.write({"q": replace(connected, pid="q")}), 5)
    assert [decode_session(v).pid for v in producer.sent if v] == ["q"]  # p's wait in turn
    producer.release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    written = [decode_session(v) for v in producer.sent if v]
    assert [(w.pid, w.rooms) for w in written] == [("q", ()), ("p", ()), ("p", ("r",))]
    await publisher.stop()


async def test_a_write_cancelled_waiting_for_a_turn_leaves_no_pid_waiting_for_good() -> None:
    """A write of several pids takes their turns at once and waits for them one by one.
    Cancelled while it waited (the node stopping), the turns it had not reached were never
    ended: every later write of those pids waited for good."""
    producer = _StallingProducer()
    publisher, store = await _store_on(producer)
    first = asyncio.create_task(store.write({"a": None}))
    await asyncio.wait_for(producer.stalled.wait(), 5)  # a's turn held
    both = asyncio.create_task(store.write({"a": None, "b": None}))
    await asyncio.sleep(0)  # waiting for a's turn
    both.cancel()
    await asyncio.gather(both, return_exceptions=True)
    producer.release.set()
    await asyncio.wait_for(first, 5)
    await asyncio.wait_for(store.write({"b": None}), 5)
    assert len(store._turns) == 0
    await publisher.stop()


async def _store_on(producer: FakeProducer) -> tuple[Publisher, SessionStore]:
    """A node's session store writing through ``producer``, and its started publisher."""
    publisher = Publisher(lambda: producer, timeout_s=5, logger=logging.getLogger("t"))
    await publisher.start()

    async def ready() -> Publisher:
        return publisher

    store = SessionStore(
        "c.sessions", "node", ManagerStats(), ready, Watermarks(lambda: None), logging.getLogger,
        max_record_bytes=1024,
    )  # fmt: skip
    return publisher, store
