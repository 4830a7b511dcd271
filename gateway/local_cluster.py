"""A local three-node Apache Kafka (KRaft) cluster on 127.0.0.1, for failure tests.

Every node is a combined controller and broker with its own data dir under the cluster's,
its own ports and the cluster's id; the quorum is static (``controller.quorum.voters``
names every node), so the ports of a node never change while any node runs::

    cluster = LocalKafkaCluster(brokers=3)
    bootstrap = cluster.start()  # "127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"
    cluster.nodes[0].kill()      # SIGKILL, as a crash
    cluster.nodes[0].start()     # back on its ports with its data: it rejoins and catches up
    cluster.stop()

Topics get 3 replicas and need 2 in sync (``min.insync.replicas=2``): one node down loses no
acknowledged write and refuses none; two down refuse writes with ``acks=all``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ._process import HOST, LOCK_FILE, choose_port, free_port, locked, port_in_use, state_root
from .errors import InvalidSettings, ServiceError
from .local_kafka import KAFKA_VERSION, LocalKafka, _cluster_id

__all__ = ["ClusterNode", "LocalKafkaCluster", "NodeStatus"]

LAYOUT_FILE = "cluster.json"

# A SIGKILLed node leads its partitions until the controller fences it, one session timeout
# after its last heartbeat; Kafka's 9 s would stall every write to them that long. Three
# nodes on one machine see no network delays, so a shorter session is safe.
_HEARTBEAT_MS = 500
_SESSION_MS = 3000


@dataclass(frozen=True)
class NodeStatus:
    """One node as ``LocalKafkaCluster.status()`` reports it."""

    node_id: int
    address: str | None  # its client address; None before the cluster's first start
    pid: int | None  # None: down

    @property
    def up(self) -> bool:
        return self.pid is not None


@dataclass(frozen=True)
class _NodePorts:
    client: int
    controller: int


@dataclass(frozen=True)
class _Layout:
    """What every node of the cluster shares: the cluster id and each node's ports."""

    cluster_id: str
    nodes: tuple[_NodePorts, ...]  # node id i + 1 at index i

    @property
    def voters(self) -> str:
        return ",".join(
            f"{node_id}@{HOST}:{ports.controller}"
            for node_id, ports in enumerate(self.nodes, start=1)
        )


class ClusterNode(LocalKafka):
    """One node of a `LocalKafkaCluster`: a `LocalKafka` with the cluster's id and quorum.

    ``start()`` brings back a stopped or killed node on its own ports with its data;
    ``stop()`` ends it cleanly (SIGTERM), ``kill()`` as a crash (SIGKILL).
    """

    def __init__(
        self, cluster: LocalKafkaCluster, node_id: int, relay_port: int | None = None
    ) -> None:
        super().__init__(
            cluster.data_dir / f"node-{node_id}",
            None,
            version=cluster.version,
            cache_dir=cluster.cache_dir,
            heap=cluster.heap,
            relay_port=relay_port,
        )
        self.node_id = node_id
        self._cluster = cluster

    def _layout(self) -> _Layout:
        layout = _read_layout(self._cluster.layout_path)
        if layout is None:
            raise ServiceError(f"{self._cluster.data_dir} holds no cluster: start the cluster")
        return layout

    def _choose_ports(self, previous: Mapping[str, int]) -> dict[str, int]:
        # The voters of every other node name this controller port: it cannot move.
        mine = self._layout().nodes[self.node_id - 1]
        ports = {"client": choose_port(mine.client, None)}
        ports["controller"] = choose_port(mine.controller, None, avoid={mine.client})
        return self._optional_ports(ports, previous)

    def _settings(self, ports: Mapping[str, int]) -> dict[str, str]:
        return {
            **self._node_settings(ports, node_id=self.node_id),
            "controller.quorum.voters": self._layout().voters,
            "default.replication.factor": "3",
            "min.insync.replicas": "2",
            "offsets.topic.replication.factor": "3",
            "transaction.state.log.replication.factor": "3",
            "transaction.state.log.min.isr": "2",
            "share.coordinator.state.topic.replication.factor": "3",
            "share.coordinator.state.topic.min.isr": "2",
            "broker.heartbeat.interval.ms": str(_HEARTBEAT_MS),
            "broker.session.timeout.ms": str(_SESSION_MS),
        }

    def _format_options(self) -> list[str]:
        # A static quorum: the voters come from the config, so neither --standalone nor
        # --initial-controllers (those are for a dynamic quorum).
        return ["-t", self._layout().cluster_id, "-c", str(self.config_path)]


class LocalKafkaCluster:
    """``brokers`` combined controller+broker nodes whose files live under ``data_dir``.

    ``start()`` starts the nodes that are not running and reuses those that are, from any
    process; ``stop()`` ends exactly this cluster's nodes.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        brokers: int = 3,
        *,
        heap: str = "512m",
        version: str = KAFKA_VERSION,
        cache_dir: Path | None = None,
        relay_ports: Sequence[int] | None = None,
    ) -> None:
        if brokers < 3:
            raise InvalidSettings(
                f"a cluster has at least 3 nodes (3 replicas, 2 in sync), not {brokers};"
                " one node is LocalKafka"
            )
        if relay_ports is not None and len(relay_ports) != brokers:
            raise InvalidSettings(f"relay_ports needs one port per node ({brokers})")
        self.data_dir = (data_dir or state_root() / "kafka-cluster").expanduser().resolve()
        self.brokers = brokers
        self.heap = heap
        self.version = version
        self.cache_dir = cache_dir
        layout = _read_layout(self.layout_path)
        count = len(layout.nodes) if layout is not None else brokers
        self.nodes = [
            ClusterNode(self, node_id, relay_ports[node_id - 1] if relay_ports else None)
            for node_id in range(1, count + 1)
        ]
        if layout is not None:
            self._assign(layout)

    @property
    def layout_path(self) -> Path:
        return self.data_dir / LAYOUT_FILE

    @property
    def bootstrap_servers(self) -> str | None:
        """Every node's client address, comma-separated; None before the first start."""
        if any(node.port is None for node in self.nodes):
            return None
        return ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    def start(self, timeout: float = 180.0) -> str:
        """Start every node not running (all at once: a lone node waits for a quorum);
        return the bootstrap list once each answers. If one fails, all are stopped."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with locked(self.data_dir / LOCK_FILE):
            self._assign(self._settle_layout())
        with ThreadPoolExecutor(len(self.nodes), thread_name_prefix="local-kafka-node") as pool:
            futures = [pool.submit(node.start, timeout) for node in self.nodes]
            errors = [error for future in futures if (error := future.exception()) is not None]
        if errors:
            self.stop()
            raise errors[0]
        return ",".join(future.result() for future in futures)

    def stop(self, timeout: float = 30.0) -> bool:
        """End every node at once (SIGTERM); return whether any was running.

        At once, so each broker's controlled shutdown still finds a quorum to answer it.
        """
        with ThreadPoolExecutor(len(self.nodes), thread_name_prefix="local-kafka-node") as pool:
            return any(list(pool.map(lambda node: node.stop(timeout), self.nodes)))

    def status(self) -> list[NodeStatus]:
        """Each node, up or down."""
        statuses = []
        for node in self.nodes:
            running = node.status()
            address = None if node.port is None else f"{HOST}:{node.port}"
            statuses.append(
                NodeStatus(node.node_id, address, running.pid if running is not None else None)
            )
        return statuses

    def _settle_layout(self) -> _Layout:
        """The layout to start with: made on first use; with no node running, ports taken
        by another process meanwhile are replaced (every node then reads the new voters)."""
        layout = _read_layout(self.layout_path)
        if layout is not None and len(layout.nodes) != self.brokers:
            raise ServiceError(
                f"{self.data_dir} holds a {len(layout.nodes)}-node cluster, not {self.brokers}"
            )
        if layout is not None and any(node.status() is not None for node in self.nodes):
            return layout
        previous = layout.nodes if layout is not None else ()
        taken: set[int] = set()
        nodes = []
        for index in range(self.brokers):
            old = previous[index] if previous else None
            client = _keep_or_pick(old.client if old else None, taken)
            controller = _keep_or_pick(old.controller if old else None, taken)
            nodes.append(_NodePorts(client, controller))
        settled = _Layout(layout.cluster_id if layout else _cluster_id(), tuple(nodes))
        if settled != layout:
            _write_layout(self.layout_path, settled)
        return settled

    def _assign(self, layout: _Layout) -> None:
        for node, ports in zip(self.nodes, layout.nodes, strict=True):
            node.port = ports.client


def _keep_or_pick(previous: int | None, taken: set[int]) -> int:
    port = (
        previous
        if previous is not None and previous not in taken and not port_in_use(previous)
        else free_port(taken)
    )
    taken.add(port)
    return port


def _read_layout(path: Path) -> _Layout | None:
    try:
        raw = json.loads(path.read_text())
        return _Layout(
            str(raw["cluster_id"]),
            tuple(_NodePorts(int(n["client"]), int(n["controller"])) for n in raw["nodes"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_layout(path: Path, layout: _Layout) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    nodes = [{"client": n.client, "controller": n.controller} for n in layout.nodes]
    partial.write_text(json.dumps({"cluster_id": layout.cluster_id, "nodes": nodes}, indent=2))
    partial.replace(path)
