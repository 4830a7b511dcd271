"""What a chaos run does: the load, the scenarios and their cycles, full and quick."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

__all__ = ["FULL", "QUICK", "SCENARIOS", "Load", "Plan", "Stack", "stack_of"]

Stack = Literal["single", "cluster"]

#: Every scenario, in the order a run takes them, and the Kafka it needs.
SCENARIOS: dict[str, Stack] = {
    "gateway-kill": "single",
    "gateway-term": "single",
    "client-drops": "single",
    "node-cut": "single",
    "broker-restart": "single",
    "leader-kill": "cluster",
    "two-down": "cluster",
}


def stack_of(scenario: str) -> Stack:
    return SCENARIOS[scenario]


@dataclass(frozen=True, slots=True)
class Load:
    """The steady stream: ``publishers`` (one per node) each send numbered events to every
    room at ``rate`` a second, pipelined; receivers spread over rooms and nodes."""

    rooms: tuple[str, ...] = ("r0", "r1", "r2")
    publishers: int = 3
    rate: float = 33.3
    js_receivers: int = 24
    py_receivers: int = 6
    ack_timeout_ms: int = 30_000

    @property
    def events_per_s(self) -> float:
        return self.publishers * len(self.rooms) * self.rate


@dataclass(frozen=True, slots=True)
class Plan:
    load: Load
    cycles: dict[str, int]
    #: How long each fault lasts before its repair.
    node_down_s: float = 3.0
    cut_s: float = 30.0
    broker_down_s: float = 10.0
    leader_down_s: float = 15.0
    two_down_s: float = 20.0
    #: With one broker of three back, before the last one returns.
    one_back_s: float = 20.0
    #: Steady load before the first fault, after each repair, and after the last one.
    warmup_s: float = 8.0
    steady_s: float = 4.0
    #: Load after each leader-kill repair: two cycles make the three minutes the issue asks.
    leader_steady_s: float = 60.0
    cooldown_s: float = 8.0
    #: The nodes' ``--kafka-timeout-ms``: a publish Kafka has not confirmed by then is
    #: refused, so an outage longer than this shows as refusals, not as a stall.
    kafka_timeout_ms: int = 5000
    seed: int = 9
    scenarios: tuple[str, ...] = field(default_factory=lambda: tuple(SCENARIOS))

    def with_scenarios(self, names: tuple[str, ...], cycles: int | None) -> Plan:
        counts = dict(self.cycles)
        if cycles is not None:
            counts.update({name: cycles for name in names})
        return replace(self, scenarios=names, cycles=counts)

    def json(self) -> dict[str, Any]:
        return {**asdict(self), "events_per_s": round(self.load.events_per_s)}


FULL = Plan(
    load=Load(),
    cycles={
        "gateway-kill": 20,
        "gateway-term": 5,
        "client-drops": 10,
        "node-cut": 1,
        "broker-restart": 3,
        "leader-kill": 2,
        "two-down": 1,
    },
)

QUICK = Plan(
    load=Load(rate=10, js_receivers=6, py_receivers=3),
    cycles={
        "gateway-kill": 3,
        "gateway-term": 1,
        "client-drops": 1,
        "node-cut": 1,
        "broker-restart": 1,
        "leader-kill": 1,
        "two-down": 1,
    },
    cut_s=8,
    broker_down_s=5,
    leader_down_s=6,
    two_down_s=10,
    one_back_s=10,
    warmup_s=4,
    steady_s=2,
    leader_steady_s=2,
    cooldown_s=4,
)
