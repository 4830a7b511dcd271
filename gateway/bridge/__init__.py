"""Kafka bridges: topics a company already has, delivered into Socket.IO rooms exactly once.

``config`` reads the TOML file, ``mapping`` turns one source record into the events
topic's record, ``pump`` runs the transactional loop, ``service`` runs them all.
"""

from __future__ import annotations

from .config import BridgeConfigError, BridgesConfig, InboundBridge, load, parse
from .mapping import BadRecord, Mapper
from .pump import BridgeStats, Pump
from .service import run_bridges

__all__ = [
    "BadRecord",
    "BridgeConfigError",
    "BridgeStats",
    "BridgesConfig",
    "InboundBridge",
    "Mapper",
    "Pump",
    "load",
    "parse",
    "run_bridges",
]
