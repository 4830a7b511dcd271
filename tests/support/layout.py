"""A manager whose start a test expects its topic layout to refuse."""

from __future__ import annotations

import pytest

from socketio_kafka.adapter import AsyncKafkaManager, TopicLayoutError


async def refused_start(manager: AsyncKafkaManager, match: str) -> None:
    """``manager.start()`` raises `TopicLayoutError` matching ``match`` and leaves it not
    ready; it is stopped either way, so a start that was not refused leaves no Kafka client
    to the next test."""
    try:
        with pytest.raises(TopicLayoutError, match=match):
            await manager.start()
        assert not manager.ready
    finally:
        await manager.stop()
