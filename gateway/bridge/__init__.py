"""Kafka bridges: topics a company already has, delivered into Socket.IO rooms exactly once.

``config`` reads the TOML file, ``mapping`` turns one source record into the events
topic's record, ``transactional`` is the exactly-once loop, ``pump`` runs it for an
inbound bridge and ``outbound`` for client publishes out to a topic, ``service`` runs
them all.
"""

from __future__ import annotations

from .config import BridgeConfigError, BridgesConfig, InboundBridge, OutboundRoute, load, parse
from .mapping import BadRecord, Mapper
from .outbound import OutboundPump, publish_record
from .pump import BridgeStats, Pump
from .service import run_bridges

__all__ = [
    "BadRecord",
    "BridgeConfigError",
    "BridgeStats",
    "BridgesConfig",
    "InboundBridge",
    "Mapper",
    "OutboundPump",
    "OutboundRoute",
    "Pump",
    "load",
    "parse",
    "publish_record",
    "run_bridges",
]
