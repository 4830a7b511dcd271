"""One client's publishes to one room reach every receiver in the order it sent them, even
when it sends the next before the previous ack: python-socketio runs each event handler in a
task of its own, and the order is made true by `adapter/turns.py`, not left to the tasks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from .support.clients import Recorder
from .support.cluster import gateway_cluster

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

_EVENTS = 1500


async def test_pipelined_publishes_from_a_fresh_node_arrive_in_the_order_sent(
    kafka_url: str, channel: str
) -> None:
    """From the first publish on: the first ones of a node once waited on Kafka's metadata
    together and were stored in the order they woke up."""
    async with gateway_cluster(kafka_url, channel, nodes=2) as (first, second):
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
