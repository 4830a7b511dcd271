"""Prometheus metrics of one node, read from the manager's counters at scrape time."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from socketio_kafka.adapter import AsyncKafkaManager
from socketio_kafka.adapter.histogram import LatencyHistogram
from socketio_kafka.adapter.manager import Health, ManagerStats
from socketio_kafka.adapter.pacing import Pacing
from socketio_kafka.adapter.publishes import PublishLedger
from socketio_kafka.adapter.recovery import OUTCOMES

from .auth import Refusal
from .brokers import RedisManager
from .collector import FREEZER, PAUSES, CollectorPauses, Freezer
from .guard import GuardedServer
from .identity import IdentityServer
from .protocol import EVENTS

__all__ = ["NodeCollector", "node_registry"]

_COUNTERS = {
    "published": "Records this node produced to Kafka",
    "publish_errors": "Records Kafka did not accept",
    "records_consumed": "Records consumed from the events topic",
    "records_passed": "Records consumed undecoded: their headers named no local recipient",
    "records_skipped": "Undecodable records skipped",
    "handler_errors": "Records whose handling raised",
    "barriers_held": "Other nodes' room operations and disconnects held until the emits "
    "their node wrote before them were taken here",
    "barriers_expired": "Of those, operations taken after waiting 5 s in vain",
    "connect_failures": "Failed attempts to connect to Kafka",
    "session_records_skipped": "Undecodable records skipped on the sessions topic",
    "sessions_expired": "Sessions this node ended after the recovery window",
    "session_data_dropped": "Sessions saved without their data, which will not be recovered: "
    "not JSON, or larger than a record or max_session_bytes allows",
    "sessions_too_large": "Sessions ended because their record was too large for Kafka even "
    "without their data (too many rooms): they cannot be recovered",
    "slow_consumers_cut": "Sockets cut for not reading what was queued for them",
    "over_node_budget": "Holds outrun and sockets cut because the node's sockets together "
    "kept more than it may (--max-node-queued-bytes): the largest first",
    "replay_records_read": "Records recoveries read back from the events topic",
    "replay_records_decoded": "Records recoveries decoded (the rest passed by their headers)",
    "replay_records_reused": "Records recoveries took from memory (the node's history of what "
    "it read lately, or what an earlier replay had read) instead of reading Kafka",
    "replay_partitions_skipped": "Partitions recoveries did not read: none of their rooms "
    "was written there while they were away",
    "replay_records_spared": "Offsets recoveries did not read past the last record of their "
    "rooms in a partition",
    "replays_outrun": "Replays outrun by more live events for the socket than it may hold: "
    "each read on past its end (the fifth in a row, cut)",
}


class NodeCollector(Collector):
    """Reads counters from the manager instead of mirroring them: nothing to keep in sync."""

    def __init__(
        self, manager: AsyncKafkaManager | RedisManager, server: GuardedServer | None = None
    ) -> None:
        self._manager = manager
        self._server = server

    def collect(self) -> Iterator[Metric]:
        manager = self._manager
        health = manager.health() if isinstance(manager, AsyncKafkaManager) else None
        # As /readyz answers (it said 1 through a Kafka outage, a task down, a drain).
        ready_now = not (self._server is not None and self._server.draining) and (
            manager.ready if health is None else health.ready
        )
        # python-socketio's Redis manager keeps no counters: readiness and sockets only.
        if isinstance(self._manager, AsyncKafkaManager):
            for name, doc in _COUNTERS.items():
                counter = CounterMetricFamily(f"socketio_kafka_{name}", doc)
                counter.add_metric([], getattr(self._manager.stats, name))
                yield counter
            assert health is not None
            yield from _health_metrics(health)
            yield from _flow_metrics(self._manager.stats)
            yield from _publish_id_metrics(self._manager.publishes)
            yield _lag(self._manager.lag())
            yield from _pacing_metrics(self._manager.pacing)
            yield from _memory_metrics(self._manager)
        ready = GaugeMetricFamily("socketio_kafka_ready", "1 when the node is ready")
        ready.add_metric([], 1.0 if ready_now else 0.0)
        yield ready
        sockets = GaugeMetricFamily(
            "socketio_kafka_connected_sockets",
            "Sockets connected to this node",
            labels=["namespace"],
        )
        occupied = set(self._manager.get_namespaces())
        served: set[str] = set()  # the app's, at 0 when empty rather than absent
        if self._server is not None:
            served.update(self._server.handlers, self._server.namespace_handlers)
            served.discard("*")
        for namespace in sorted(occupied | served):
            count = 0
            if namespace in occupied:
                count = sum(1 for _ in self._manager.get_participants(namespace, None))
            sockets.add_metric([namespace], count)
        yield sockets
        if self._server is not None:
            yield from _guard_metrics(self._server)
            yield from _connection_metrics(self._server)
        if isinstance(self._server, IdentityServer):
            yield _connect_refusals(self._server.refusals)
        yield _pause_metric(PAUSES)
        yield from _freezer_metrics(FREEZER)


def _guard_metrics(server: GuardedServer) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    refusals = CounterMetricFamily(
        "socketio_kafka_limit_refusals",
        "Connections, events and joins refused by a limit",
        labels=["limit"],
    )
    for limit, count in server.limits.refusals.items():
        refusals.add_metric([limit], count)
    draining = GaugeMetricFamily(
        "socketio_kafka_draining", "1 once the node drains: it takes no new connection"
    )
    draining.add_metric([], 1.0 if server.draining else 0.0)
    held = GaugeMetricFamily(
        "socketio_kafka_held_connections",
        "Connections from flooding addresses held unread before their reset",
    )
    held.add_metric([], server.holds.held_total)
    inbound = GaugeMetricFamily(
        "socketio_kafka_inbound_bytes",
        "Bytes of messages clients have begun and not finished sending that the node holds "
        "(WebSocket messages, request heads and bodies, binary events' attachments), at most "
        "--max-node-inbound-bytes",
    )
    inbound.add_metric([], server.inbound.bytes)
    in_flight = GaugeMetricFamily(
        "socketio_kafka_in_flight_bytes",
        "Bytes of events clients sent that the node has not finished handling (publishes "
        "waiting for Kafka), at most what unfinished messages leave of "
        "--max-node-inbound-bytes",
    )
    in_flight.add_metric([], server.in_flight.bytes)
    yield from (refusals, draining, held, inbound, in_flight)


def _connection_metrics(server: GuardedServer) -> Iterator[Metric]:
    connects = CounterMetricFamily(
        "socketio_kafka_connects",
        "Connections accepted: a fresh session, or a recovered one",
        labels=["session"],
    )
    for session in ("fresh", "recovered"):
        connects.add_metric([session], server.connects[session])
    events_in = CounterMetricFamily(
        "socketio_kafka_events_in",
        "Events clients sent this node, by name (the protocol's own, else other)",
        labels=["event"],
    )
    for event in (*sorted(EVENTS), "other"):
        events_in.add_metric([event], server.events_in[event])
    yield from (connects, events_in)
    if server.recovery is not None:
        recoveries = CounterMetricFamily(
            "socketio_kafka_recoveries",
            "Claims to recover a session, by outcome (and for a fresh session, why)",
            labels=["outcome", "reason"],
        )
        for outcome, reason in OUTCOMES:
            recoveries.add_metric([outcome, reason], server.recoveries[outcome, reason])
        yield recoveries
        yield _gauge(
            "sessions_unsaved",
            "Session records Kafka refused, written again until it takes them",
            server.unsaved_sessions,
        )


def _flow_metrics(stats: ManagerStats) -> Iterator[Metric]:
    events_out = CounterMetricFamily(
        "socketio_kafka_events_out",
        "Events queued on this node's sockets: live, or replayed to a recovering one",
        labels=["delivery"],
    )
    events_out.add_metric(["live"], stats.events_delivered)
    events_out.add_metric(["replayed"], stats.events_replayed)
    latency = stats.produce_latency
    yield events_out
    yield CounterMetricFamily(
        "socketio_kafka_events_written",
        "Of the live events, those written to their WebSocket at once, not queued",
        value=stats.events_written,
    )
    yield HistogramMetricFamily(
        "socketio_kafka_produce_latency_seconds",
        "Seconds from a record handed to the producer to Kafka's acknowledgement",
        buckets=_buckets(latency),
        sum_value=latency.sum,
    )


def _publish_id_metrics(ledger: PublishLedger) -> Iterator[Metric]:
    repeats = CounterMetricFamily(
        "socketio_kafka_publish_repeats",
        "Publishes with a client-chosen id repeated: acked again, or read again and dropped",
        labels=["outcome"],
    )
    repeats.add_metric(["acked"], ledger.counts["repeats_acked"])
    repeats.add_metric(["dropped"], ledger.counts["repeats_dropped"])
    yield repeats
    remembered = GaugeMetricFamily(
        "socketio_kafka_publish_ids", "Client publish ids remembered for the publish window"
    )
    remembered.add_metric([], ledger.remembered)
    yield remembered


def _pacing_metrics(pacing: Pacing) -> Iterator[GaugeMetricFamily]:
    for name, doc, value in (
        ("pacing_load", "How busy the node reads: 0 idle, 1 at the waits' maxima", pacing.load),
        ("fetch_interval_seconds", "The node's wait between two fetches", pacing.fetch_interval_s),
        ("linger_seconds", "How long a publish may wait for others", pacing.linger_ms / 1000),
    ):
        yield _gauge(name, doc, value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(f"socketio_kafka_{name}", doc)
    gauge.add_metric([], value)
    return gauge


def _memory_metrics(manager: AsyncKafkaManager) -> Iterator[GaugeMetricFamily]:
    """What sockets and recoveries keep in memory now: each bounded (README, "Recovery")."""
    replays = manager.shared_replays
    gauges = [
        (
            "sessions",
            "Live sessions of the whole cluster this node keeps, for any client that may "
            "reconnect to it",
            len(manager.store.table.sessions),
        ),
        (
            "kept_bytes",
            "What the node's outgoing queues and replays' holds keep together, estimated in "
            "bytes (each packet once)",
            manager.budget.bytes,
        ),
        (
            "replay_buffered_records",
            "Records found for recovering sessions, not yet taken by them",
            replays.held,
        ),
        ("replay_buffered_bytes", "Their bytes, as written in Kafka", replays.held_bytes),
        (
            "held_live_bytes",
            "Bytes of live events held for sockets until their replay is done",
            manager.holds.bytes,
        ),
    ]
    if replays.history is not None:
        gauges.append(
            (
                "replay_history_bytes",
                "Bytes of the latest records the node keeps for replays of short drops",
                replays.history.size,
            )
        )
    for name, doc, value in gauges:
        yield _gauge(name, doc, value)


def _pause_metric(pauses: CollectorPauses) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "socketio_kafka_gc_pause_seconds",
        "The garbage collector's pauses of this process (its event loop stalls meanwhile), "
        "by generation: 2 is a full collection",
        labels=["generation"],
    )
    for generation, pauses_of in enumerate(pauses.by_generation):
        family.add_metric(
            [str(generation)],
            _buckets(pauses_of),
            pauses_of.sum,
        )
    return family


def _freezer_metrics(freezer: Freezer) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    frozen = GaugeMetricFamily(
        "socketio_kafka_gc_frozen_objects",
        "Objects left out of the collector's collections when last counted "
        "(what survived the full ones)",
    )
    frozen.add_metric([], freezer.frozen)
    thaws = CounterMetricFamily(
        "socketio_kafka_gc_thaws",
        "Full collections of everything, the frozen objects included: as long a pause as "
        "the node's connections are many",
    )
    thaws.add_metric([], freezer.thaws)
    yield from (frozen, thaws)


def _buckets(histogram: LatencyHistogram) -> list[tuple[str, float]]:
    """Its cumulative buckets, each bound as Prometheus writes it (``+Inf``, ``0.005``)."""
    return [
        (floatToGoString(bound), count)  # type: ignore[no-untyped-call]  # untyped
        for bound, count in histogram.cumulative()
    ]


def _lag(lag: Mapping[int, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "socketio_kafka_consumer_lag",
        "Records of an events partition not yet taken by this node, as of its last fetch",
        labels=["partition"],
    )
    for partition, records in sorted(lag.items()):
        family.add_metric([str(partition)], records)
    return family


def _connect_refusals(refusals: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "socketio_kafka_connect_refusals",
        "Connections refused for their token, by reason",
        labels=["reason"],
    )
    for reason in sorted({*Refusal, *refusals}):
        family.add_metric([reason], refusals.get(reason, 0))
    return family


def _health_metrics(health: Health) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    restarts = CounterMetricFamily(
        "socketio_kafka_task_restarts", "Background tasks that raised and were restarted"
    )
    restarts.add_metric([], health.task_restarts)
    replaced = CounterMetricFamily(
        "socketio_kafka_producers_replaced",
        "Kafka producers replaced after they wedged or their sender ended",
    )
    replaced.add_metric([], health.producers_replaced)
    yield from (restarts, replaced)


def node_registry(
    manager: AsyncKafkaManager | RedisManager, server: GuardedServer | None = None
) -> CollectorRegistry:
    """A registry of this node's own (not the process-global one: tests run several apps),
    with the process's CPU, memory and file descriptors and its collector's work beside."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(manager, server))
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PAUSES.install()
    return registry
