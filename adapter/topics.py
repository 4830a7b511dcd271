"""Create the manager's topics if missing, and refuse ones that would lose events."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from .errors import TopicLayoutError

__all__ = ["TopicLayout", "TopicSpec", "ensure_topic"]

_VISIBLE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What the manager asks of one topic."""

    name: str
    partitions: int
    replication_factor: int
    cleanup_policy: str
    retention_ms: int
    max_message_bytes: int


@dataclass(frozen=True, slots=True)
class TopicLayout:
    """What the broker says a topic is."""

    name: str
    partitions: int
    cleanup_policy: str
    created: bool


async def ensure_topic(admin: AIOKafkaAdminClient, spec: TopicSpec) -> TopicLayout:
    """Create ``spec.name`` if it does not exist, then check its layout against ``spec``."""
    # list_topics, not describe_topics: a metadata request naming a missing topic makes
    # brokers with auto.create.topics.enable create it with their default layout.
    created = spec.name not in await admin.list_topics() and await _create(admin, spec)
    partitions = await _visible_partition_count(admin, spec.name)
    policy = await _cleanup_policy(admin, spec.name)
    layout = TopicLayout(spec.name, partitions, policy, created)
    _check(spec, layout)
    return layout


def _check(spec: TopicSpec, layout: TopicLayout) -> None:
    if layout.partitions != spec.partitions:
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


async def _create(admin: AIOKafkaAdminClient, spec: TopicSpec) -> bool:
    """Create the topic; False if another client created it first."""
    configs = {
        "cleanup.policy": spec.cleanup_policy,
        "max.message.bytes": str(spec.max_message_bytes),
    }
    if spec.cleanup_policy == "delete":
        configs["retention.ms"] = str(spec.retention_ms)
    topic = NewTopic(spec.name, spec.partitions, spec.replication_factor, topic_configs=configs)
    response = await admin.create_topics([topic])
    for entry in response.to_object()["topic_errors"]:
        error = for_code(entry["error_code"])
        if error is TopicAlreadyExistsError:
            return False
        if entry["error_code"]:
            raise TopicLayoutError(f"cannot create topic {spec.name!r}: {error.__name__}")
    return True


async def _visible_partition_count(admin: AIOKafkaAdminClient, name: str) -> int:
    """The partition count, once the broker's metadata shows the (maybe just created) topic."""
    deadline = asyncio.get_running_loop().time() + _VISIBLE_TIMEOUT_S
    while (partitions := await _partition_count(admin, name)) is None:
        if asyncio.get_running_loop().time() > deadline:
            raise TopicLayoutError(f"topic {name!r} exists but its metadata never showed up")
        await asyncio.sleep(0.1)
    return partitions


async def _partition_count(admin: AIOKafkaAdminClient, name: str) -> int | None:
    for topic in await admin.describe_topics([name]):
        if topic["topic"] == name and topic["error_code"] == 0 and topic["partitions"]:
            return len(topic["partitions"])
    return None


async def _cleanup_policy(admin: AIOKafkaAdminClient, name: str) -> str:
    resource = ConfigResource(ConfigResourceType.TOPIC, name, {"cleanup.policy": None})
    for response in await admin.describe_configs([resource]):
        for entry in _config_entries(response.to_object()):
            if entry["config_names"] == "cleanup.policy":
                return str(entry["config_value"])
    return "delete"


def _config_entries(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry for res in obj["resources"] for entry in res["config_entries"]]
