"""A node raises its open-file limit to what it may hold, and says when that is too few."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from socketio_kafka.gateway.openfiles import OWN_DESCRIPTORS, raise_open_file_limit

from .support.cluster import gateway_cluster

_LOW = 1024  # Docker 29's soft limit (moby/moby#51485)


@pytest.fixture
def hard_limit() -> Iterator[int]:
    """This process's hard limit, its soft one lowered to Docker's for the test (children
    inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 4 * _LOW:
        pytest.skip(f"a hard open-file limit of {hard} leaves nothing to raise to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (_LOW, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_limit_is_raised_to_the_hard_one(
    hard_limit: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "socketio_kafka.gateway"):
        assert raise_open_file_limit(2 * _LOW) == hard_limit
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard_limit, hard_limit)
    assert not caplog.records


def test_more_connections_than_the_limit_holds_are_warned_of(
    hard_limit: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "socketio_kafka.gateway"):
        raise_open_file_limit(hard_limit)
    [record] = caplog.records
    assert record.getMessage().startswith(f"max_connections {hard_limit} needs about")
    assert f"past about {hard_limit - OWN_DESCRIPTORS} are reset" in record.getMessage()


def _soft_limit(pid: int) -> int:
    [line] = [
        line
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
        if line.startswith("Max open files")
    ]
    return int(line.split()[3])


@pytest.mark.kafka
@pytest.mark.timeout(90)
async def test_serve_started_at_dockers_soft_limit_raises_it_and_warns(
    hard_limit: int, kafka_url: str, channel: str
) -> None:
    too_many = ("--max-connections", str(hard_limit))
    async with gateway_cluster(kafka_url, channel, nodes=1, extra_args=too_many) as [node]:
        assert node.process is not None
        assert _soft_limit(node.process.pid) == hard_limit
        assert f"max_connections {hard_limit} needs about" in node.log()
