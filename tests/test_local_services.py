"""The local service launchers against the real thing: a Kafka broker and a redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from socketio_kafka.gateway import _process
from socketio_kafka.gateway._process import ServiceState, free_port, read_state, write_state
from socketio_kafka.gateway.errors import (
    JavaNotFound,
    PortInUse,
    RedisNotFound,
    ServiceError,
    ServiceStartFailed,
)
from socketio_kafka.gateway.local_kafka import KAFKA_VERSION, LocalKafka
from socketio_kafka.gateway.local_redis import LocalRedis


def processes_with(argument: Path) -> list[int]:
    """Pids whose command line has ``argument``: how many copies of a service run."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.fsencode(argument) in entry.joinpath(
                "cmdline"
            ).read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # the process ended while we looked
            continue
    return found


@pytest.fixture
def listener() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# --- Kafka ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def address_of(service: LocalKafka | LocalRedis) -> str:
    status = service.status()
    assert status is not None, f"{service.name} is not running:\n{service.log_tail()}"
    return status.address


async def create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def list_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        return list(await admin.list_topics())
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def first_record(bootstrap: str, topic: str, timeout: float = 15.0) -> bytes:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        record = await asyncio.wait_for(consumer.getone(), timeout)
    finally:
        await consumer.stop()
    assert record.value is not None
    return bytes(record.value)


@pytest.mark.kafka
@pytest.mark.timeout(180)
async def test_kafka_serves_at_its_address(kafka: LocalKafka) -> None:
    bootstrap = address_of(kafka)
    topic = f"local-{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, topic)
    await produce(bootstrap, topic, b"hello")
    assert await first_record(bootstrap, topic) == b"hello"


@pytest.mark.kafka
@pytest.mark.timeout(60)
def test_second_launcher_reuses_the_running_broker(kafka: LocalKafka) -> None:
    status = kafka.status()
    assert status is not None
    assert status.data_dir == kafka.data_dir
    assert status.version == KAFKA_VERSION
    again = LocalKafka(kafka.data_dir)
    assert again.start() == status.address
    assert again.status() == status
    assert processes_with(kafka.config_path) == [status.pid]


@pytest.mark.kafka
@pytest.mark.timeout(60)
def test_another_port_for_a_running_broker_is_refused(kafka: LocalKafka) -> None:
    status = kafka.status()
    assert status is not None
    with pytest.raises(ServiceError, match="already runs on port"):
        LocalKafka(kafka.data_dir, port=free_port()).start()
    assert kafka.status() == status


@pytest.mark.kafka
@pytest.mark.timeout(180)
async def test_kafka_stops_and_restarts_with_its_data(kafka: LocalKafka) -> None:
    bootstrap = address_of(kafka)
    topic = f"kept-{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, topic)
    await produce(bootstrap, topic, b"kept")
    before = kafka.status()
    assert before is not None

    assert await asyncio.to_thread(kafka.stop)
    assert kafka.status() is None
    assert processes_with(kafka.config_path) == []
    assert not kafka.state_path.exists()
    assert not await asyncio.to_thread(kafka.stop)

    bootstrap = await asyncio.to_thread(kafka.start)
    after = kafka.status()
    assert after is not None
    assert after.pid != before.pid
    assert topic in await list_topics(bootstrap)
    assert await first_record(bootstrap, topic) == b"kept"


@pytest.mark.kafka
@pytest.mark.timeout(60)
def test_kafka_on_a_taken_port_is_refused(tmp_path: Path, listener: int) -> None:
    broker = LocalKafka(tmp_path, port=listener)
    with pytest.raises(PortInUse, match=str(listener)):
        broker.start()
    assert broker.status() is None


def test_kafka_without_java_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(JavaNotFound, match="JAVA_HOME"):
        LocalKafka(tmp_path / "kafka").start()


def test_a_stale_state_file_is_removed_and_its_pid_left_alone(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path)
    # Our own pid: alive, but not a broker of this data dir, so never to be signalled.
    state = ServiceState(os.getpid(), "127.0.0.1:1", "4.1.1", {"client": 1}, "2025-01-01")
    write_state(broker.state_path, state)
    assert read_state(broker.state_path) == state
    assert broker.status() is None
    assert not broker.state_path.exists()
    write_state(broker.state_path, state)
    assert not broker.stop()
    assert not broker.state_path.exists()


# --- Redis ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ping(url: str) -> bool:
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        return bool(client.ping())


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_redis_serves_at_its_url(local_redis: LocalRedis) -> None:
    url = address_of(local_redis)
    assert url.startswith("redis://127.0.0.1:")
    assert url.endswith("/0")
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_second_launcher_reuses_the_running_redis(local_redis: LocalRedis) -> None:
    status = local_redis.status()
    assert status is not None
    again = LocalRedis(local_redis.data_dir)
    assert again.start() == status.address
    assert again.status() == status
    assert processes_with(local_redis.config_path) == [status.pid]


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_redis_stops_and_restarts(local_redis: LocalRedis) -> None:
    before = local_redis.status()
    assert before is not None
    assert local_redis.stop()
    assert local_redis.status() is None
    assert processes_with(local_redis.config_path) == []
    assert not local_redis.stop()

    url = local_redis.start()
    assert url == before.address  # the port of the last run, while it is free
    assert ping(url)


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_redis_on_a_taken_port_is_refused(tmp_path: Path, listener: int) -> None:
    with pytest.raises(PortInUse, match=str(listener)):
        LocalRedis(tmp_path, port=listener).start()


def test_redis_without_a_binary_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RedisNotFound):
        LocalRedis(tmp_path / "redis").start()


@pytest.mark.timeout(60)
def test_a_service_that_exits_at_start_shows_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin" / "redis-server"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'FATAL: cannot start' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    server = LocalRedis(tmp_path / "redis")
    with pytest.raises(ServiceStartFailed, match="exited") as failure:
        server.start()
    assert "FATAL: cannot start" in failure.value.log_tail
    assert server.status() is None
    assert not server.state_path.exists()


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_stop_during_a_start_waits_for_it_then_ends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start writes its state once its process runs; before that (Kafka's jars being
    fetched, for minutes on a first run) a stop said "not running", and the service came
    up after it."""
    service = LocalRedis(tmp_path)
    # `decided`: the stop asked for the lock (it waits for the start), or it returned.
    launching, go, decided = threading.Event(), threading.Event(), threading.Event()
    launch, lock = LocalRedis._launch, _process.locked

    def slow_launch(self: LocalRedis, timeout: float) -> str:
        launching.set()
        assert go.wait(30)
        return launch(self, timeout)

    def locking(path: Path, *, blocking: bool = True) -> Any:
        if threading.current_thread().name == "stop":
            decided.set()
        return lock(path, blocking=blocking)

    monkeypatch.setattr(LocalRedis, "_launch", slow_launch)
    monkeypatch.setattr(_process, "locked", locking)
    stopped: list[bool] = []

    def stop() -> None:
        stopped.append(service.stop())
        decided.set()

    starting = threading.Thread(target=service.start)
    stopping = threading.Thread(target=stop, name="stop")
    starting.start()
    try:
        assert launching.wait(30)
        stopping.start()
        assert decided.wait(30)
    finally:
        go.set()
        starting.join(30)
        stopping.join(30)
        leftover = service.status() is not None and service.stop()
    assert stopped == [True]
    assert not leftover
    assert processes_with(service.config_path) == []


def _descriptors(pid: int) -> set[str]:
    """What `pid`'s open descriptors point at; one it closes while they are read is not held."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            held.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return held


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_service_keeps_none_of_the_launchers_inherited_descriptors(tmp_path: Path) -> None:
    """A caller that reads a pipe to its end (a shell's fd 3) waited for the service."""
    read, write = os.pipe()
    os.set_inheritable(write, True)
    service = LocalRedis(tmp_path)
    try:
        service.start()
        status = service.status()
        assert status is not None
        assert os.readlink(f"/proc/self/fd/{write}") not in _descriptors(status.pid)
    finally:
        service.stop()
        os.close(read)
        os.close(write)


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_service_is_started_without_the_launchers_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It outlives the launcher, its environment readable in /proc/<pid>/environ: a JWT key
    or Kafka's password the launcher had stayed there."""
    monkeypatch.setenv("SOCKETIO_KAFKA_JWT_SECRET", "jwt-s3cret")
    monkeypatch.setenv("SOCKETIO_KAFKA_KAFKA_PASSWORD", "kafka-s3cret")
    monkeypatch.setenv("SOCKETIO_KAFKA_DATA_DIR", str(tmp_path / "state"))
    service = LocalRedis(tmp_path)
    try:
        service.start()
        status = service.status()
        assert status is not None
        environ = Path(f"/proc/{status.pid}/environ").read_bytes().split(b"\0")
    finally:
        service.stop()
    names = {entry.partition(b"=")[0].decode() for entry in environ if entry}
    assert "SOCKETIO_KAFKA_JWT_SECRET" not in names
    assert "SOCKETIO_KAFKA_KAFKA_PASSWORD" not in names
    assert {"SOCKETIO_KAFKA_DATA_DIR", "PATH"} <= names  # paths, and the rest, are kept
    assert not any(b"s3cret" in entry for entry in environ)


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_a_secure_brokers_config_is_readable_by_its_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It holds the SASL user's password and the broker's TLS key: it was 0644."""

    def cut_short(self: LocalKafka, runtime: Any) -> None:
        raise KeyboardInterrupt  # the config is written; no broker needs to run

    monkeypatch.setattr(LocalKafka, "_format", cut_short)
    broker = LocalKafka(tmp_path, secure=True)
    broker.config_path.write_text("")  # a previous run's, as the umask made it
    broker.config_path.chmod(0o644)
    with pytest.raises(KeyboardInterrupt):
        broker.start()
    assert "PRIVATE KEY" in broker.config_path.read_text()
    assert broker.config_path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".server")] == []


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_a_secure_start_cut_short_in_its_format_promises_no_sasl_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its password file was written before the format: a plain start then formatted the
    storage without users, and a secure start after it printed a password SCRAM refused."""

    def cut_short(self: LocalKafka, runtime: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(LocalKafka, "_format", cut_short)
        with pytest.raises(KeyboardInterrupt):
            LocalKafka(tmp_path, secure=True).start()
    broker = LocalKafka(tmp_path)
    try:
        broker.start()
    finally:
        broker.stop()
    secure = LocalKafka(tmp_path, secure=True)
    try:
        with pytest.raises(ServiceError, match="formatted without SASL users"):
            secure.start()
    finally:
        secure.stop()
