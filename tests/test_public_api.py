"""The public API is pinned: a change here is a change users see."""

from __future__ import annotations

import socketio_kafka.adapter as adapter


def test_adapter_exports() -> None:
    assert sorted(adapter.__all__) == [
        "AsyncKafkaManager",
        "AsyncRecoveringClient",
        "BrokerUnavailable",
        "ConfigError",
        "KafkaOptions",
        "ManagerStats",
        "OffsetError",
        "OutboxLimits",
        "PayloadError",
        "PublishError",
        "RecordDecodeError",
        "RecoveringAsyncServer",
        "RecoveryOptions",
        "ReplayGap",
        "SecurityError",
        "SocketIOKafkaError",
        "TopicLayoutError",
    ]
    for name in adapter.__all__:
        assert getattr(adapter, name) is not None


def test_errors_form_one_tree() -> None:
    for name in adapter.__all__:
        obj = getattr(adapter, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, adapter.SocketIOKafkaError)
    assert adapter.BrokerUnavailable.retriable
    assert not adapter.TopicLayoutError.retriable
    assert not adapter.SecurityError.retriable
