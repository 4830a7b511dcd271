"""A mass reconnect after a node dies: 50 clients of a SIGKILLed node recover on the two
survivors at once, each gets exactly its own missed events in order, and the survivors
read each partition for all of them together, not once per client. The benchmark's run of
it with official JS clients loses, repeats and reorders nothing (no time bound)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest

from benchmarks.mass_recovery import Sizes, measure, sessions_saved
from socketio_kafka.adapter.routing import Audience, partition_of

from .support.cluster import CROWD, gateway_cluster
from .support.harness import Harness
from .support.recovering import RecoveringRecorder
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

CLIENTS, OWN, OTHER_ROOMS, PER_OTHER_ROOM = 50, 20, 20, 100
PARTITIONS = 6  # the gateway's default
_OWN_ROOMS = [f"own-{n}" for n in range(CLIENTS)]


@pytest.fixture
async def harness(kafka_url: str, channel: str) -> AsyncIterator[Harness]:
    # Replays read Kafka here (no history): the shared reads are what is tested.
    flags = (*CROWD, "--replay-history-mb=0")
    async with gateway_cluster(kafka_url, channel, 3, flags) as cluster, Harness(cluster) as h:
        yield h


async def _client(url: str, room: str) -> RecoveringRecorder:
    client = await RecoveringRecorder().connect(url)
    assert await client.client.call("join", {"room": room}) == {"ok": True}
    return client


def _on_partitions_of(sid: str, room: str) -> int:
    """The gap's records on the partitions a replay of this client reads."""
    mine = Audience.of("/", sid, [room]).partitions(PARTITIONS)
    own = sum(OWN for r in _OWN_ROOMS if partition_of(f"/#{r}".encode(), PARTITIONS) in mine)
    others = [f"other-{n}" for n in range(OTHER_ROOMS)]
    return own + sum(
        PER_OTHER_ROOM for r in others if partition_of(f"/#{r}".encode(), PARTITIONS) in mine
    )


async def test_clients_of_a_killed_node_recover_at_once_sharing_the_reads(
    harness: Harness, kafka_bootstrap: str, channel: str
) -> None:
    rooms = _OWN_ROOMS
    clients = [await _client(harness.gateways[0].url, room) for room in rooms]
    try:
        async with asyncio.timeout(30):
            await sessions_saved(
                kafka_bootstrap, channel, {c.sid: r for c, r in zip(clients, rooms, strict=True)}
            )
        harness.gateways[0].stop(signal.SIGKILL)
        await wait_until(lambda: not any(c.client.connected for c in clients), 15, "the drops")
        # The gap: 20 events of each client's own among 2,000 to rooms nobody recovers.
        await asyncio.gather(
            *(harness.control(1, "burst", event="own", tag=r, count=OWN, room=r) for r in rooms),
            *(
                harness.control(2, "burst", event="other", tag="x", count=PER_OTHER_ROOM, room=r)
                for r in (f"other-{n}" for n in range(OTHER_ROOMS))
            ),
        )
        await harness.settle()
        before = await harness.stats()

        survivors = [g.url for g in harness.gateways[1:]]
        await asyncio.gather(
            *(
                c.client.connect(survivors[n % 2], transports=["websocket"])
                for n, c in enumerate(clients)
            )
        )
        for client, room in zip(clients, rooms, strict=True):
            assert client.client.recovered["/"] is True
            events = await client.wait_count("own", OWN)
            assert events == [{"tag": room, "seq": seq} for seq in range(OWN)]
            assert client.events("other") == []
        after = await harness.stats()

        read = sum(
            a["replay_records_read"] - b["replay_records_read"]
            for a, b in zip(after, before, strict=True)
        )
        # Read one by one, each replay read at least the gap's records on its partitions.
        alone = sum(_on_partitions_of(c.sid, room) for c, room in zip(clients, rooms, strict=True))
        assert read < alone / 2, (read, alone)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def test_the_benchmark_with_official_clients_recovers_every_one(kafka_bootstrap: str) -> None:
    """Onto survivors that already hold idle clients of their own, as in production."""
    sizes = Sizes(clients=20, own=10, others=1_000, rooms=100, resident=30)
    figures = await measure(kafka_bootstrap, sizes)
    assert figures["resident"] == 30
    assert figures["recovered_all"] == 20
    assert figures["connected_before_recovered"] == 20  # each reply timed before its replay
    for who in (figures, figures["lone"], figures["warm_up"]):
        assert {k: who[k] for k in ("lost", "duplicated", "out_of_order", "not_recovered")} == {
            "lost": 0,
            "duplicated": 0,
            "out_of_order": 0,
            "not_recovered": 0,
        }
    assert figures["others_received"] == 0
    assert figures["replay_records_decoded"] == 20 * 10
