"""The contestants: each runs as 3 nodes sharing its broker, and speaks the gateway protocol."""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .services import Broker, NodeCommand

__all__ = [
    "CONTESTANTS",
    "PEERS",
    "Contestant",
    "available",
    "gateway_has_recovery_flag",
    "unlimited",
]

PEERS = Path(__file__).resolve().parent / "peers"

# How one node is started: (contestant, port, broker URL, channel) -> its command.
Launcher = Callable[["Contestant", int, str, str], NodeCommand]


@dataclass(frozen=True, slots=True)
class Contestant:
    name: str
    title: str
    broker: Broker
    recovers: bool  # whether a reconnecting client gets what it missed
    launch: Launcher
    flags: tuple[str, ...] = ()  # more `serve` flags, for our gateway's contestants

    def command(self, port: int, broker_url: str, channel: str) -> NodeCommand:
        return self.launch(self, port, broker_url, channel)


@functools.cache
def _serve_help() -> str:
    return subprocess.run(
        [sys.executable, "-m", "socketio_kafka.gateway", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def gateway_has_recovery_flag() -> bool:
    """Whether ``serve`` takes ``--recovery/--no-recovery`` (durable redelivery, issue 3)."""
    return "--no-recovery" in _serve_help()


def unlimited() -> list[str]:
    """The per-socket and per-address rate limits (issue 11) out of the way: a benchmark
    measures what a node delivers, and its load generator sends from few sockets."""
    if "--event-rate" not in _serve_help():
        return []
    return ["--event-rate", "10000000", "--connect-rate", "10000000"]


def _gateway(contestant: Contestant, port: int, broker_url: str, channel: str) -> NodeCommand:
    broker = ["--kafka", broker_url]
    if contestant.broker == "redis":
        broker = ["--adapter", "redis", "--redis-url", broker_url]
    # Recovery is on by default once the gateway has it: say which one this node runs.
    recovery = []
    if gateway_has_recovery_flag():
        recovery = ["--recovery" if contestant.recovers else "--no-recovery"]
    argv = [
        sys.executable, "-m", "socketio_kafka.gateway", "serve",
        "--port", str(port), "--channel", channel, "--log-level", "warning",
        "--no-ws-compression", *broker, *recovery, *unlimited(), *contestant.flags,
    ]  # fmt: skip
    return NodeCommand(argv)


def _node_peer(adapter: str) -> Launcher:
    def launch(contestant: Contestant, port: int, broker_url: str, channel: str) -> NodeCommand:
        env = {"PORT": str(port), "REDIS_URL": broker_url, "ADAPTER": adapter, "CHANNEL": channel}
        return NodeCommand(["node", str(PEERS / "server.js")], env)

    return launch


CONTESTANTS = (
    Contestant("kafka", "socketio-kafka (AsyncKafkaManager)", "kafka", False, _gateway),
    Contestant(
        "kafka-recovery",
        "socketio-kafka, recovery on (its default)",
        "kafka",
        True,
        _gateway,
    ),
    # The latency end of the trade (README, "Kafka client defaults"): an idle node's
    # fetches long-poll, answered at the first record, instead of waiting out the 5 ms
    # interval; a busy node's are paced as the default's (up to 20 ms; 40 until session
    # 28). Until session 24 its publishes never lingered instead: half as much off the
    # median, 20-60% off the plateau (benchmarks/RESULTS.md, "Session 24").
    Contestant(
        "kafka-low-latency",
        "socketio-kafka, recovery on, no fetch interval when idle",
        "kafka",
        True,
        _gateway,
        ("--fetch-interval-ms", "0", "--fetch-interval-max-ms", "20"),
    ),
    Contestant("redis", "python-socketio + AsyncRedisManager", "redis", False, _gateway),
    Contestant(
        "node-redis",
        "Node socket.io + @socket.io/redis-adapter",
        "redis",
        False,
        _node_peer("redis"),
    ),
    Contestant(
        "node-redis-streams",
        "Node socket.io + redis-streams-adapter, recovery on",
        "redis",
        True,
        _node_peer("redis-streams"),
    ),
)


def available(contestant: Contestant) -> bool:
    """Contestants with recovery need a gateway that has it; every other one always runs."""
    return contestant.broker != "kafka" or not contestant.recovers or gateway_has_recovery_flag()
