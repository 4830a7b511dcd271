"""The Kafka under a chaos run: one private broker (with the relay one gateway node reaches
it through) or a private three-broker cluster (RF=3, ``min.insync.replicas=2``), both in
the run's scratch directory, never the shared broker."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from socketio_kafka.gateway.local_cluster import LocalKafkaCluster
from socketio_kafka.gateway.local_kafka import LocalKafka

from ..services import BenchmarkError, free_port
from .relay import Relay

__all__ = ["BrokerCluster", "SingleBroker", "describe"]

Json = dict[str, Any]
_ADMIN_TIMEOUT_S = 10.0


class SingleBroker:
    """One broker; with ``relay``, a second listener that node 0 reaches through a `Relay`."""

    def __init__(self, work: Path, relay: bool) -> None:
        self._relay_port = free_port() if relay else None
        self.kafka = LocalKafka(work / "kafka", relay_port=self._relay_port)
        self.relay: Relay | None = None
        self.bootstrap = ""

    def start(self) -> str:
        self.bootstrap = self.kafka.start()
        if self._relay_port is not None:
            target = self.kafka.relay_target_port
            if target is None:
                raise BenchmarkError("the broker started without its relay listener")
            self.relay = Relay(self._relay_port, target)
            self.relay.start()
        return self.bootstrap

    def node_bootstrap(self, index: int) -> str:
        """Node 0 goes through the relay (when there is one), the others straight."""
        if index == 0 and self._relay_port is not None:
            return f"127.0.0.1:{self._relay_port}"
        return self.bootstrap

    def restart(self) -> None:
        """Start the broker again after `stop`: it must come back where it was."""
        if self.kafka.start() != self.bootstrap:
            raise BenchmarkError(f"Kafka came back elsewhere than {self.bootstrap}")
        if self.relay is not None and self.kafka.relay_target_port != self.relay.target_port:
            raise BenchmarkError("the relay listener came back on another port")

    def stop(self) -> None:
        self.kafka.stop()

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
        self.kafka.stop()


class BrokerCluster:
    """Three combined controller+broker nodes."""

    def __init__(self, work: Path) -> None:
        self.cluster = LocalKafkaCluster(work / "kafka-cluster", brokers=3)
        self.bootstrap = ""

    def start(self) -> str:
        self.bootstrap = self.cluster.start()
        return self.bootstrap

    def node_bootstrap(self, index: int) -> str:
        return self.bootstrap

    def kill(self, node_id: int) -> None:
        self._node(node_id).kill()

    def revive(self, node_id: int) -> None:
        self._node(node_id).start()

    def up(self) -> list[int]:
        return [s.node_id for s in self.cluster.status() if s.up]

    def leaders(self, topic: str) -> Counter[int]:
        """How many of ``topic``'s partitions each broker leads."""
        described = describe(self.bootstrap, topic)
        return Counter(p["leader"] for p in described if p["leader"] >= 0)

    def in_sync(self, topic: str) -> bool:
        """Every partition of ``topic`` has all three replicas in sync."""
        try:
            described = describe(self.bootstrap, topic)
        except BenchmarkError:
            return False
        return bool(described) and all(len(p["isr"]) == 3 for p in described)

    def close(self) -> None:
        self.cluster.stop()

    def _node(self, node_id: int) -> Any:
        return next(n for n in self.cluster.nodes if n.node_id == node_id)


def describe(bootstrap: str, topic: str) -> list[Json]:
    """The partitions of ``topic`` (leader, replicas, isr), from a fresh admin client."""
    try:
        return asyncio.run(_describe(bootstrap, topic))
    except (KafkaError, OSError, TimeoutError) as exc:
        raise BenchmarkError(f"cannot describe {topic}: {exc!r}") from exc


async def _describe(bootstrap: str, topic: str) -> list[Json]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        async with asyncio.timeout(_ADMIN_TIMEOUT_S):
            await admin.start()
            [found] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return list(found["partitions"])
