"""A node's /metrics moves with what its clients do: real node, real Kafka, real clients."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import socketio
from prometheus_client.parser import text_string_to_metric_families

from socketio_kafka.adapter.histogram import LatencyHistogram

from .support.clients import Recorder
from .support.cluster import GatewayProcess, gateway_cluster
from .support.recovering import RecoveringRecorder

#: ``(sample name, sorted labels)`` -> value, as one scrape read them.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def test_a_histogram_counts_each_value_in_its_bucket_and_reads_cumulative() -> None:
    histogram = LatencyHistogram((0.01, 0.1))
    histogram.observe(0.01)  # on a bound: that bound's bucket (Prometheus's le is <=)
    histogram.observe(0.05, times=2)
    histogram.observe(7.0)
    assert histogram.counts == [1, 2, 1]
    assert histogram.cumulative() == [(0.01, 1), (0.1, 3), (math.inf, 4)]
    assert histogram.sum == pytest.approx(7.11)


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{url}/metrics", timeout=5)).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape_until(
    url: str, predicate: Callable[[Samples], bool], what: str, timeout: float = 15
) -> Samples:
    """Scrape until ``predicate`` holds of the samples (counters move after the acks)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate(samples := await scrape(url)):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {samples}")
        await asyncio.sleep(0.05)
    return samples


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return sample(after, name, **labels) - sample(before, name, **labels)


@pytest.fixture
async def node(kafka_url: str, channel: str) -> AsyncIterator[GatewayProcess]:
    async with gateway_cluster(kafka_url, channel, nodes=1) as [gateway]:
        yield gateway


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_a_publish_counts_in_produced_and_out(node: GatewayProcess) -> None:
    sender, receiver = Recorder(node.url), Recorder(node.url)
    before = await scrape(node.url)
    try:
        for client in (sender, receiver):
            await client.connect()
            assert await client.ask("join", {"room": "r"}) == {"ok": True}
        reply = await sender.ask("publish", {"room": "r", "event": "e", "data": 1})
        assert reply["ok"] is True
        await receiver.wait_for("e", 1)
        after = await scrape_until(
            node.url,
            lambda s: moved(before, s, "socketio_kafka_events_out_total", delivery="live") >= 1,
            "the delivery counted",
        )
    finally:
        await asyncio.gather(sender.close(), receiver.close())
    assert moved(before, after, "socketio_kafka_connects_total", session="fresh") == 2
    # The app's namespace reads 0 on a node without sockets (an alert on it can fire).
    assert before[("socketio_kafka_connected_sockets", (("namespace", "/"),))] == 0
    assert sample(after, "socketio_kafka_connected_sockets", namespace="/") == 2
    assert moved(before, after, "socketio_kafka_events_in_total", event="join") == 2
    assert moved(before, after, "socketio_kafka_events_in_total", event="publish") == 1
    # The sender is skipped: one socket got the event.
    assert moved(before, after, "socketio_kafka_events_out_total", delivery="live") == 1
    assert moved(before, after, "socketio_kafka_events_out_total", delivery="replayed") == 0
    # The publish was acknowledged by Kafka, so it is in the histogram (with the node's
    # own session-topic records, which the producer also sends).
    assert moved(before, after, "socketio_kafka_published_total") == 1
    count = sample(after, "socketio_kafka_produce_latency_seconds_count")
    assert moved(before, after, "socketio_kafka_produce_latency_seconds_count") >= 1
    assert sample(after, "socketio_kafka_produce_latency_seconds_bucket", le="+Inf") == count
    assert 0 < sample(after, "socketio_kafka_produce_latency_seconds_sum") < 30 * count


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_a_recovery_and_an_unknown_session_are_counted_by_outcome(
    node: GatewayProcess,
) -> None:
    away, sender = RecoveringRecorder(), Recorder(node.url)
    stranger = socketio.AsyncClient(reconnection=False)
    before = await scrape(node.url)
    try:
        await away.connect(node.url)
        assert await away.client.call("join", {"room": "r"}) == {"ok": True}
        await sender.connect()
        await away.drop_transport()
        for n in range(3):
            assert (await sender.ask("publish", {"room": "r", "event": "m", "data": n}))["ok"]
        # Back through the client's own reconnection: it claims its pid and offset.
        await away.client.connect(node.url, transports=["websocket"])
        assert away.client.recovered["/"] is True
        assert await away.wait_count("m", 3) == [0, 1, 2]
        # A pid no node ever handed out: served, with a fresh session.
        await stranger.connect(
            node.url, transports=["websocket"], auth={"pid": uuid.uuid4().hex, "offset": "x"}
        )
        after = await scrape_until(
            node.url,
            lambda s: moved(before, s, "socketio_kafka_connects_total", session="fresh") >= 3,
            "the stranger's connect counted",
        )
    finally:
        await asyncio.gather(away.close(), sender.close())
        await stranger.disconnect()
        await stranger.shutdown()

    def recoveries(outcome: str, reason: str = "") -> float:
        name = "socketio_kafka_recoveries_total"
        return moved(before, after, name, outcome=outcome, reason=reason)

    assert recoveries("recovered") == 1
    assert recoveries("fresh", "unknown_session") == 1
    assert recoveries("retry") == recoveries("failed") == 0
    assert moved(before, after, "socketio_kafka_connects_total", session="recovered") == 1
    # away's first connection, the sender, the stranger.
    assert moved(before, after, "socketio_kafka_connects_total", session="fresh") == 3
    assert moved(before, after, "socketio_kafka_events_out_total", delivery="replayed") == 3
    # Kafka took every session record: none waits to be written again.
    assert ("socketio_kafka_sessions_unsaved", ()) in after
    assert sample(after, "socketio_kafka_sessions_unsaved") == 0


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_lag_is_reported_per_partition_and_drains_to_zero(node: GatewayProcess) -> None:
    sender = Recorder(node.url)
    await sender.connect()
    try:
        # Rooms over every partition (keyed by namespace and room).
        for n in range(30):
            reply = await sender.ask("publish", {"room": f"room-{n}", "event": "e", "data": n})
            assert reply["ok"] is True
    finally:
        await sender.close()
    partitions = [str(p) for p in range(6)]  # the node's default layout

    def caught_up(samples: Samples) -> bool:
        lag = [
            samples.get(("socketio_kafka_consumer_lag", (("partition", p),))) for p in partitions
        ]
        return lag == [0.0] * len(partitions) and (
            sample(samples, "socketio_kafka_records_consumed_total") >= 30
        )

    samples = await scrape_until(node.url, caught_up, "no lag on any of the 6 partitions")
    lagging = {labels for name, labels in samples if name == "socketio_kafka_consumer_lag"}
    assert lagging == {(("partition", p),) for p in partitions}
