"""Kafka and Redis from a Docker engine, where one answers: testcontainers' KRaft broker.

Without an engine (as on our CI machine) the project's own launchers start the real
services instead; ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL`` take precedence over both.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import docker
import requests

__all__ = ["KAFKA_IMAGE", "REDIS_IMAGE", "docker_engine_answers", "kafka", "redis"]

#: testcontainers' KafkaContainer speaks to Confluent's images; KRaft from 7.0 (Kafka 3.x).
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
REDIS_IMAGE = "redis:7"


def docker_engine_answers(timeout: float = 3.0) -> bool:
    """Whether the Docker engine at ``DOCKER_HOST`` (or the default socket) answers a ping."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if host.startswith("unix://") and not _accepts(host.removeprefix("unix://"), timeout):
        return False  # and the Docker SDK is not asked: it leaks its socket when refused
    try:
        client = docker.from_env(timeout=timeout)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except (docker.errors.DockerException, requests.RequestException):
        return False
    finally:
        client.close()


def _accepts(path: str, timeout: float) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


@contextlib.contextmanager
def kafka() -> Iterator[str]:
    """A single-node KRaft broker in a container, for the session; yields its bootstrap."""
    from testcontainers.community.kafka import KafkaContainer

    with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
        yield str(container.get_bootstrap_server())


@contextlib.contextmanager
def redis() -> Iterator[str]:
    """A redis-server in a container, for the session; yields its ``redis://`` URL."""
    from testcontainers.community.redis import RedisContainer

    with RedisContainer(REDIS_IMAGE) as container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
        yield f"redis://{host}:{port}/0"
