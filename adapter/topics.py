"""Create the manager's topics if missing, and refuse ones that would lose events."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    InvalidReplicationFactorError,
    KafkaError,
    TopicAlreadyExistsError,
    for_code,
)

from .errors import BrokerUnavailable, TopicLayoutError

__all__ = [
    "ClusterDefaults",
    "Replication",
    "TopicLayout",
    "TopicSpec",
    "cluster_defaults",
    "ensure_topic",
    "replication_for",
]

_VISIBLE_TIMEOUT_S = 10.0
#: Kafka's usual production layout: three copies, a write acknowledged by two of them, so
#: one broker may be lost without refusing writes and a second without losing acked ones.
_DEFAULT_FACTOR = 3
_DEFAULT_INSYNC = 2


@dataclass(frozen=True, slots=True)
class Replication:
    """How many copies of each partition Kafka keeps, and how many must hold a write
    before it is acknowledged (``acks=all``). ``required``: set by the user, so an existing
    topic with less is refused; a default only warns."""

    factor: int
    min_insync: int
    required: bool = False


@dataclass(frozen=True, slots=True)
class ClusterDefaults:
    """What the brokers give a topic made without settings. Its operator sets them for the
    cluster as it is meant to be, where a count of the brokers up now misses one restarting."""

    replication_factor: int = 1
    min_insync: int = 1


async def cluster_defaults(admin: AIOKafkaAdminClient, broker: int) -> ClusterDefaults:
    """``broker``'s ``default.replication.factor`` and ``min.insync.replicas``; Kafka's own
    defaults where they cannot be read (a principal not allowed to describe them)."""
    keys = {"default.replication.factor": None, "min.insync.replicas": None}
    resource = ConfigResource(ConfigResourceType.BROKER, str(broker), keys)
    try:
        configs = await _configs(admin, resource) or {}
    except KafkaError:
        return ClusterDefaults()
    values = {name: int(value) for name, value in configs.items() if value.isdigit()}
    return ClusterDefaults(
        values.get("default.replication.factor", 1), values.get("min.insync.replicas", 1)
    )


def replication_for(
    factor: int | None,
    min_insync: int | None,
    brokers: int,
    cluster: ClusterDefaults = ClusterDefaults(),
) -> Replication:
    """The layout for new topics: what was asked, else up to 3 replicas, 2 in sync, as the
    brokers up can hold, and never weaker than the brokers' defaults (a topic's
    ``min.insync.replicas`` overrides theirs)."""
    chosen = factor
    if chosen is None:
        chosen = max(1, min(_DEFAULT_FACTOR, brokers), cluster.replication_factor)
    insync = min_insync
    if insync is None:
        insync = min(max(cluster.min_insync, min(_DEFAULT_INSYNC, chosen - 1)), chosen)
    return Replication(chosen, insync, required=factor is not None or min_insync is not None)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What the manager asks of one topic. ``partitions`` of an existing topic must match
    unless ``any_partitions`` (a topic whose readers take its layout as it is)."""

    name: str
    partitions: int
    replication: Replication
    cleanup_policy: str
    retention_ms: int
    max_message_bytes: int
    any_partitions: bool = False


@dataclass(frozen=True, slots=True)
class TopicLayout:
    """What the broker says a topic is."""

    name: str
    partitions: int
    cleanup_policy: str
    created: bool
    #: The fewest replicas any partition has.
    replicas: int
    min_insync_replicas: int


async def ensure_topic(
    admin: AIOKafkaAdminClient, spec: TopicSpec, logger: logging.Logger
) -> TopicLayout:
    """Create ``spec.name`` if it does not exist, then check its layout against ``spec``.

    Raises `TopicLayoutError` for a layout that would lose events, or a replication weaker
    than a required one; a replication weaker than the default is logged as a warning.
    `BrokerUnavailable` (retried by the manager's start) when the broker does not show the
    topic, or its configs, within 10 s.
    """
    # list_topics, not describe_topics: a metadata request naming a missing topic makes
    # brokers with auto.create.topics.enable create it with their default layout.
    created = spec.name not in await admin.list_topics() and await _create(admin, spec)
    partitions, replicas = await _visible_partitions(admin, spec.name)
    configs = await _topic_configs(admin, spec.name)
    layout = TopicLayout(
        spec.name,
        len(partitions),
        configs.get("cleanup.policy", "delete"),
        created,
        min(replicas),
        int(configs.get("min.insync.replicas", "1")),
    )
    _check(spec, layout)
    if weaker := _weaker_replication(spec, layout):
        if spec.replication.required:
            raise TopicLayoutError(weaker)
        logger.warning("%s", weaker)
    return layout


def _weaker_replication(spec: TopicSpec, layout: TopicLayout) -> str | None:
    wanted = spec.replication
    if layout.replicas >= wanted.factor and layout.min_insync_replicas >= wanted.min_insync:
        return None
    return (
        f"topic {spec.name!r} has {layout.replicas} replica(s) and min.insync.replicas="
        f"{layout.min_insync_replicas}, weaker than the {wanted.factor} and {wanted.min_insync}"
        f" this node {'is configured for' if wanted.required else 'would create'}: an acked"
        " event survives fewer broker failures (raise them with kafka-reassign-partitions"
        " and kafka-configs, or use another channel)"
    )


def _check(spec: TopicSpec, layout: TopicLayout) -> None:
    if layout.partitions != spec.partitions and not spec.any_partitions:
        raise TopicLayoutError(
            f"topic {spec.name!r} has {layout.partitions} partitions, this node is configured "
            f"for {spec.partitions}: set partitions={layout.partitions} or use another channel"
        )
    wanted = set(spec.cleanup_policy.split(","))
    actual = set(layout.cleanup_policy.split(","))
    if wanted != actual:
        raise TopicLayoutError(
            f"topic {spec.name!r} has cleanup.policy={layout.cleanup_policy!r}, "
            f"this node needs {spec.cleanup_policy!r}"
        )
    if layout.min_insync_replicas > layout.replicas:
        raise TopicLayoutError(
            f"topic {spec.name!r} has {layout.replicas} replica(s) but min.insync.replicas="
            f"{layout.min_insync_replicas}: Kafka refuses every publish to it (acks=all)"
        )


async def _create(admin: AIOKafkaAdminClient, spec: TopicSpec) -> bool:
    """Create the topic; False if another client created it first. A required in-sync
    count its replicas cannot hold is refused first: the topic made refused every publish,
    and stayed."""
    if spec.replication.min_insync > spec.replication.factor:
        raise TopicLayoutError(
            f"cannot create topic {spec.name!r}: min_insync_replicas="
            f"{spec.replication.min_insync} needs as many replicas, and it would get"
            f" {spec.replication.factor} (set replication_factor, --replication-factor)"
        )
    configs = {
        "cleanup.policy": spec.cleanup_policy,
        "max.message.bytes": str(spec.max_message_bytes),
        "min.insync.replicas": str(spec.replication.min_insync),
    }
    if spec.cleanup_policy == "delete":
        configs["retention.ms"] = str(spec.retention_ms)
    factor = spec.replication.factor
    topic = NewTopic(spec.name, spec.partitions, factor, topic_configs=configs)
    response = await admin.create_topics([topic])
    for entry in response.to_object()["topic_errors"]:
        error = for_code(entry["error_code"])
        if error is TopicAlreadyExistsError:
            return False
        if error is InvalidReplicationFactorError:
            brokers = len((await admin.describe_cluster())["brokers"])
            raise TopicLayoutError(
                f"cannot create topic {spec.name!r} with {factor} replicas: the cluster has"
                f" {brokers} broker(s) (set replication_factor, --replication-factor)"
            )
        if entry["error_code"]:
            raise TopicLayoutError(f"cannot create topic {spec.name!r}: {error.__name__}")
    return True


async def _visible_partitions(admin: AIOKafkaAdminClient, name: str) -> tuple[list[int], list[int]]:
    """Partition ids and replica counts, once the metadata shows the (maybe new) topic."""
    deadline = asyncio.get_running_loop().time() + _VISIBLE_TIMEOUT_S
    while not (found := await _partitions(admin, name))[0]:
        if asyncio.get_running_loop().time() > deadline:
            # A broker just started, or a controller moving: Kafka not ready yet, not a
            # layout to fix (the start retries it).
            raise BrokerUnavailable(f"topic {name!r} exists but its metadata has not shown up")
        await asyncio.sleep(0.1)
    return found


async def _partitions(admin: AIOKafkaAdminClient, name: str) -> tuple[list[int], list[int]]:
    for topic in await admin.describe_topics([name]):
        if topic["topic"] == name and topic["error_code"] == 0 and topic["partitions"]:
            parts = topic["partitions"]
            return [p["partition"] for p in parts], [len(p["replicas"]) for p in parts]
    return [], []


async def _topic_configs(admin: AIOKafkaAdminClient, name: str) -> dict[str, str]:
    """The topic's configs, once the broker asked knows the (maybe new) topic: on a cluster,
    one that has not seen it yet answers with an error and no entries, which read as the
    defaults would refuse a compacted topic as ``delete``."""
    deadline = asyncio.get_running_loop().time() + _VISIBLE_TIMEOUT_S
    while (configs := await _described_configs(admin, name)) is None:
        if asyncio.get_running_loop().time() > deadline:
            raise BrokerUnavailable(f"topic {name!r} exists but its configs have not shown up")
        await asyncio.sleep(0.1)
    return configs


async def _described_configs(admin: AIOKafkaAdminClient, name: str) -> dict[str, str] | None:
    keys = {"cleanup.policy": None, "min.insync.replicas": None}
    return await _configs(admin, ConfigResource(ConfigResourceType.TOPIC, name, keys))


async def _configs(admin: AIOKafkaAdminClient, resource: ConfigResource) -> dict[str, str] | None:
    """The configs of ``resource`` asked for; None when the broker answers with an error."""
    configs: dict[str, str] = {}
    for response in await admin.describe_configs([resource]):
        for res in response.to_object()["resources"]:
            if res["error_code"]:
                return None
            configs |= {
                str(e["config_names"]): str(e["config_value"]) for e in res["config_entries"]
            }
    return configs
