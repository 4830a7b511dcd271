"""The inbound bridge: source records in, emits to ``<channel>.events`` out, exactly once
(`transactional.TransactionalPump`'s loop). Gateway nodes read the events topic
read_committed, so clients see a batch's events exactly when its offsets are committed.
"""

from __future__ import annotations

from socketio_kafka.adapter.options import KafkaOptions

from .config import InboundBridge
from .mapping import Mapper
from .transactional import BridgeStats, MissingTopic, Record, Send, Skipped, TransactionalPump

__all__ = ["BridgeStats", "MissingTopic", "Pump"]


class Pump(TransactionalPump):
    """Runs one inbound bridge until cancelled; each `run` starts from what Kafka has
    committed, so the supervisor can restart it at any point. Example::

        pump = Pump(bridge, options, ["broker:9092"], "socketio.events", instance="a")
        supervisor.start(f"bridge:{bridge.name}", pump.run)
    """

    bridge: InboundBridge

    def __init__(
        self,
        bridge: InboundBridge,
        options: KafkaOptions,
        bootstrap: list[str],
        events_topic: str,
        instance: str | None = None,
    ) -> None:
        super().__init__(bridge, bridge.topics, [events_topic], options, bootstrap, instance)
        self._events_topic = events_topic
        self._mapper = Mapper(bridge, f"bridge:{bridge.name}", options.max_record_bytes)

    def _outputs(self, record: Record, done: BridgeStats) -> list[Send]:
        out = self._map(record, done, self._mapper.map)
        if isinstance(out, Skipped):
            return out.sends
        if out is None:
            done.tombstones_passed += 1
            return []
        done.events += 1
        return [(self._events_topic, out.key, out.value, out.headers)]
