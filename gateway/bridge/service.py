"""``socketio-kafka bridge FILE``: every inbound bridge and outbound route of the file,
supervised, until
SIGTERM or SIGINT; with ``--metrics-port``, their counters for Prometheus."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from socketio_kafka.adapter.options import KafkaOptions
from socketio_kafka.adapter.supervisor import Supervisor

from ..errors import InvalidSettings
from ..settings import log_level
from .config import BridgesConfig
from .outbound import OutboundPump
from .pump import Pump
from .transactional import TransactionalPump, logger

__all__ = ["BridgeCollector", "run_bridges"]

_COUNTERS = {
    "records": "Source records consumed and committed",
    "events": "Records written: emits to the events topic, or publishes to an outbound topic",
    "tombstones_passed": "Tombstones that became nothing",
    "passed": "Outbound: events-topic records that are no publish of the route's rooms",
    "repeats": "Outbound: publishes written twice to the events topic, written out once",
    "dead_lettered": "Bad source records copied to the dead-letter topic",
    "transactions": "Kafka transactions committed",
}


async def run_bridges(
    config: BridgesConfig,
    bootstrap: list[str],
    instance: str | None = None,
    metrics: tuple[str, int] | None = None,
    options: KafkaOptions | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until ``stop`` is set (by default: until SIGTERM or SIGINT); ``options``: the
    Kafka clients' (security), KafkaOptions' defaults if None."""
    options = options or KafkaOptions()
    topic = config.events_topic
    pumps: list[TransactionalPump] = [
        *(Pump(b, options, bootstrap, topic, instance) for b in config.inbound),
        *(OutboundPump(r, options, bootstrap, topic, instance) for r in config.outbound),
    ]
    supervisor = Supervisor(logger)
    if metrics is not None:
        registry = CollectorRegistry()
        registry.register(BridgeCollector(pumps, supervisor))
        try:
            start_http_server(metrics[1], metrics[0], registry)
        except OSError as exc:  # the port taken, the address not ours: the command's error
            raise InvalidSettings(f"--metrics-port {metrics[1]}: {exc.strerror or exc}") from exc
    stop = stop or _on_signals()
    for pump in pumps:
        supervisor.start(f"bridge:{pump.bridge.name}", pump.run)
    try:
        await stop.wait()
    finally:
        await supervisor.stop()


def _on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    return stop


class BridgeCollector(Collector):
    """The pumps' counters, read at scrape time (as gateway/metrics.py reads a node's)."""

    def __init__(self, pumps: Sequence[TransactionalPump], supervisor: Supervisor) -> None:
        self._pumps = pumps
        self._supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        for name, doc in _COUNTERS.items():
            family = CounterMetricFamily(f"socketio_kafka_bridge_{name}", doc, labels=["bridge"])
            for pump in self._pumps:
                family.add_metric([pump.bridge.name], getattr(pump.stats, name))
            yield family
        skipped = CounterMetricFamily(
            "socketio_kafka_bridge_records_skipped",
            "Source records skipped as bad, by kind",
            labels=["bridge", "kind"],
        )
        up = GaugeMetricFamily(
            "socketio_kafka_bridge_up", "1 unless the bridge waits to restart", labels=["bridge"]
        )
        for pump in self._pumps:
            for kind, count in sorted(pump.stats.bad_by_reason.items()):
                skipped.add_metric([pump.bridge.name, kind], count)
            down = f"bridge:{pump.bridge.name}" in self._supervisor.down
            up.add_metric([pump.bridge.name], 0.0 if down else 1.0)
        restarts = CounterMetricFamily(
            "socketio_kafka_task_restarts", "Background tasks that raised and were restarted"
        )
        restarts.add_metric([], self._supervisor.restarts)
        yield from (skipped, up, restarts)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=log_level(level), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
