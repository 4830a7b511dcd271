"""The gateway on python-socketio's Redis manager (``--adapter redis``): the benchmarks' peer."""

from __future__ import annotations

import uuid

import httpx
import pytest

from .support.clients import Recorder, connect_all
from .support.cluster import gateway_cluster

pytestmark = pytest.mark.redis

# gateway_cluster always passes --kafka; a node on Redis never reads it.
UNUSED_KAFKA = "kafka://127.0.0.1:1"


async def test_join_and_publish_across_three_nodes_on_redis(redis_url: str) -> None:
    channel = f"test-{uuid.uuid4().hex[:12]}"
    args = ["--adapter", "redis", "--redis-url", redis_url]
    async with gateway_cluster(UNUSED_KAFKA, channel, nodes=3, extra_args=args) as gateways:
        clients = await connect_all([Recorder(g.url) for g in gateways])
        try:
            for client in clients:
                assert await client.ask("join", {"room": "lobby"}) == {"ok": True}
            reply = await clients[0].ask(
                "publish", {"room": "lobby", "event": "chat", "data": {"text": "hi"}}
            )
            assert reply["ok"] is True
            for client in clients[1:]:
                assert await client.wait_for("chat", 1) == [{"text": "hi"}]
            # The sender is skipped; a barrier event from node 2 shows it got nothing before.
            await clients[1].ask("publish", {"room": "lobby", "event": "done", "data": 1})
            await clients[0].wait_for("done", 1)
            assert clients[0].events("chat") == []
        finally:
            for client in clients:
                await client.close()


async def test_a_node_on_redis_reports_ready_and_metrics(redis_url: str) -> None:
    channel = f"test-{uuid.uuid4().hex[:12]}"
    args = ["--adapter", "redis", "--redis-url", redis_url]
    async with (
        gateway_cluster(UNUSED_KAFKA, channel, nodes=1, extra_args=args) as [gateway],
        httpx.AsyncClient() as http,
    ):
        assert (await http.get(f"{gateway.url}/readyz")).json() == {"ready": True}
        metrics = (await http.get(f"{gateway.url}/metrics")).text
        assert "socketio_kafka_ready 1.0" in metrics
        assert "socketio_kafka_published" not in metrics  # no counters to show on Redis
