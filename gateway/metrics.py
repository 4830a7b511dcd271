"""Prometheus metrics of one node, read from the manager's counters at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from socketio_kafka.adapter import AsyncKafkaManager
from socketio_kafka.adapter.manager import Health

from .brokers import RedisManager

__all__ = ["NodeCollector", "node_registry"]

_COUNTERS = {
    "published": "Records this node produced to Kafka",
    "publish_errors": "Records Kafka did not accept",
    "records_consumed": "Records consumed from the events topic",
    "records_passed": "Records consumed undecoded: their headers named no local recipient",
    "records_skipped": "Undecodable records skipped",
    "handler_errors": "Records whose handling raised",
    "connect_failures": "Failed attempts to connect to Kafka",
    "session_records_skipped": "Undecodable records skipped on the sessions topic",
    "sessions_expired": "Sessions this node ended after the recovery window",
    "slow_consumers_cut": "Sockets cut for not reading what was queued for them",
    "replay_records_read": "Records recoveries read back from the events topic",
    "replay_records_decoded": "Records recoveries decoded (the rest passed by their headers)",
}


class NodeCollector(Collector):
    """Reads counters from the manager instead of mirroring them: nothing to keep in sync."""

    def __init__(self, manager: AsyncKafkaManager | RedisManager) -> None:
        self._manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        # python-socketio's Redis manager keeps no counters: readiness and sockets only.
        if isinstance(self._manager, AsyncKafkaManager):
            for name, doc in _COUNTERS.items():
                counter = CounterMetricFamily(f"socketio_kafka_{name}", doc)
                counter.add_metric([], getattr(self._manager.stats, name))
                yield counter
            yield from _health_metrics(self._manager.health())
        ready = GaugeMetricFamily("socketio_kafka_ready", "1 when the node is ready")
        ready.add_metric([], 1.0 if self._manager.ready else 0.0)
        yield ready
        sockets = GaugeMetricFamily(
            "socketio_kafka_connected_sockets",
            "Sockets connected to this node",
            labels=["namespace"],
        )
        for namespace in list(self._manager.get_namespaces()):
            count = sum(1 for _ in self._manager.get_participants(namespace, None))
            sockets.add_metric([namespace], count)
        yield sockets


def _health_metrics(health: Health) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    restarts = CounterMetricFamily(
        "socketio_kafka_task_restarts", "Background tasks that raised and were restarted"
    )
    restarts.add_metric([], health.task_restarts)
    replaced = CounterMetricFamily(
        "socketio_kafka_producers_replaced", "Kafka producers replaced after they wedged"
    )
    replaced.add_metric([], health.producers_replaced)
    yield from (restarts, replaced)


def node_registry(manager: AsyncKafkaManager | RedisManager) -> CollectorRegistry:
    """A registry of this node's own (not the process-global one: tests run several apps)."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(manager))
    return registry
