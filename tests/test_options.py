"""URL parsing and option validation, without a broker."""

from __future__ import annotations

import pytest

from socketio_kafka.adapter import AsyncKafkaManager, ConfigError, KafkaOptions
from socketio_kafka.adapter.options import parse_kafka_urls
from socketio_kafka.adapter.topics import ClusterDefaults, Replication, replication_for


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        ("kafka://", ["localhost:9092"]),
        ("kafka://broker:9093", ["broker:9093"]),
        ("kafka://a:1,b:2/", ["a:1", "b:2"]),
        (["kafka://a:1", "b:2"], ["a:1", "b:2"]),
        ("127.0.0.1:9092", ["127.0.0.1:9092"]),
    ],
)
def test_kafka_urls(url: str | list[str], servers: list[str]) -> None:
    assert parse_kafka_urls(url) == servers


@pytest.mark.parametrize("url", ["redis://x:1", "kafka://nohost", "kafka://h:99999", []])
def test_bad_urls_are_config_errors(url: str | list[str]) -> None:
    with pytest.raises(ConfigError):
        parse_kafka_urls(url)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"partitions": 0},
        {"acks": 2},
        {"acks": 1},  # idempotence needs acks=all
        {"compression_type": "brotli"},
        {"max_record_bytes": 0},
        {"max_batch_size": 0},
        {"fetch_interval_ms": -1},
        {"fetch_interval_ms": 1001},  # nodes would miss each other's heartbeats
        {"fetch_interval_max_ms": 1001},
        {"fetch_interval_ms": 10, "fetch_interval_max_ms": 5},
        {"linger_ms": 5, "linger_max_ms": 4},
        {"replay_history_bytes": -1},
        {"replication_factor": 0},
        {"min_insync_replicas": 0},
        {"replication_factor": 2, "min_insync_replicas": 3},  # no write could ever succeed
        {"request_timeout_ms": 2**31},  # Kafka's int32: the producer's sender died on it
        {"request_timeout_ms": 0},
    ],
)
def test_bad_options_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        KafkaOptions(**kwargs)  # type: ignore[arg-type]


def test_an_idle_node_does_not_linger_and_a_busy_one_may() -> None:
    assert (KafkaOptions().linger_ms, KafkaOptions().max_linger_ms) == (0, 16)
    assert KafkaOptions().max_fetch_interval_ms == 20
    assert KafkaOptions(fetch_interval_ms=10).max_fetch_interval_ms == 40
    assert KafkaOptions(linger_ms=5).max_linger_ms == 40  # 8x what the app chose
    assert KafkaOptions(linger_max_ms=0).max_linger_ms == 0  # never lingers


def test_manager_has_the_constructor_shape_of_python_socketio_managers() -> None:
    manager = AsyncKafkaManager("kafka://h:1", "chat", True, None)
    assert manager.bootstrap_servers == ["h:1"]
    assert manager.channel == "chat"
    assert manager.write_only is True
    assert manager.events_topic == "chat.events"
    assert manager.ready is False


@pytest.mark.parametrize(
    ("factor", "insync", "brokers", "layout"),
    [
        (None, None, 1, Replication(1, 1)),  # a laptop's broker
        (None, None, 2, Replication(2, 1)),  # one broker may go without refusing writes
        (None, None, 3, Replication(3, 2)),
        (None, None, 9, Replication(3, 2)),
        (3, None, 1, Replication(3, 2, required=True)),  # asked for: the broker refuses it
        (None, 1, 3, Replication(3, 1, required=True)),
    ],
)
def test_new_topics_default_to_three_replicas_two_in_sync_where_the_cluster_can(
    factor: int | None, insync: int | None, brokers: int, layout: Replication
) -> None:
    assert replication_for(factor, insync, brokers) == layout


@pytest.mark.parametrize(
    ("brokers", "cluster", "layout"),
    [
        (2, ClusterDefaults(3, 2), Replication(3, 2)),  # one of three down: creation refused
        (3, ClusterDefaults(1, 2), Replication(3, 2)),
        (2, ClusterDefaults(1, 2), Replication(2, 2)),  # never under the brokers' in-sync
        (5, ClusterDefaults(5, 3), Replication(5, 3)),
        (1, ClusterDefaults(1, 2), Replication(1, 1)),  # one copy holds one in sync
    ],
)
def test_new_topics_are_never_weaker_than_the_brokers_defaults(
    brokers: int, cluster: ClusterDefaults, layout: Replication
) -> None:
    assert replication_for(None, None, brokers, cluster) == layout


@pytest.mark.parametrize(
    ("channel", "problem"),
    [
        ("", "must be letters"),
        ("chat room!", "must be letters"),
        ("é", "must be letters"),
        ("x" * 241, "240 characters at most"),
    ],
)
def test_a_channel_kafka_would_refuse_as_a_topic_is_refused_at_construction(
    channel: str, problem: str
) -> None:
    """ "" made the topics ``.events`` and ``.sessions``; a space failed only at start."""
    with pytest.raises(ConfigError, match=problem):
        AsyncKafkaManager("kafka://127.0.0.1:1", channel=channel)
    AsyncKafkaManager("kafka://127.0.0.1:1", channel="x" * 240)
