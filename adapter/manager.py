"""`AsyncKafkaManager`: python-socketio's pub/sub client manager on Apache Kafka."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from socketio.async_manager import AsyncManager
from socketio.async_pubsub_manager import AsyncPubSubManager

from . import codec
from .errors import BrokerUnavailable, PublishError, RecordDecodeError
from .options import KafkaOptions, parse_kafka_urls
from .topics import TopicSpec, ensure_topic

__all__ = ["AsyncKafkaManager", "ManagerStats"]

_FIRST_RETRY_S = 0.25
_POLL_TIMEOUT_MS = 1000
_BATCH_OVERHEAD_BYTES = 64 * 1024
_PROBE_TIMEOUT_S = 2.0


@dataclass(slots=True)
class ManagerStats:
    """Counters a node exports as metrics."""

    published: int = 0
    publish_errors: int = 0
    records_consumed: int = 0
    records_skipped: int = 0
    handler_errors: int = 0
    connect_failures: int = 0


class AsyncKafkaManager(AsyncPubSubManager):  # type: ignore[misc]  # python-socketio is untyped
    """A client manager that shares every cross-node operation through a Kafka topic.

    Each node writes ``<channel>.events`` keyed by namespace and room, so one room's
    events keep their order, and reads every partition of it as an independent reader
    (no consumer group), fanning each record out to its own sockets. Emits are
    delivered through Kafka on every node, the emitting one included, so all nodes
    see one room's events in the same order.

    Example::

        mgr = AsyncKafkaManager("kafka://localhost:9092", channel="chat")
        sio = socketio.AsyncServer(async_mode="asgi", client_manager=mgr)
        await mgr.start()  # optional: otherwise it starts with the first connection

    A ``write_only=True`` manager only produces: any process can emit to clients with it.
    """

    name = "kafka"

    def __init__(
        self,
        url: str | Iterable[str] = "kafka://localhost:9092",
        channel: str = "socketio",
        write_only: bool = False,
        logger: logging.Logger | None = None,
        json: Any = None,
        *,
        options: KafkaOptions | None = None,
    ) -> None:
        super().__init__(channel=channel, write_only=write_only, logger=logger, json=json)
        self.bootstrap_servers = parse_kafka_urls(url)
        self.options = options or KafkaOptions()
        self.events_topic = f"{channel}.events"
        self.stats = ManagerStats()
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions = 0
        self._consume_task: asyncio.Task[None] | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._start_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the producer is connected and the consumer is positioned."""
        return self._ready.is_set()

    async def broker_reachable(self) -> bool:
        """Whether Kafka answers a metadata request within 2 s: for readiness probes."""
        producer = self._producer
        if producer is None or not self._ready.is_set():
            return False
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                await producer.client.fetch_all_metadata()
        except (KafkaError, TimeoutError):
            return False
        return True

    async def start(self) -> None:
        """Connect and position the consumer; returns once ready.

        Retries with capped backoff while Kafka is unreachable; a topic whose layout
        would lose events raises `TopicLayoutError`. Safe to call twice.
        """
        async with self._start_lock:
            if self._ready.is_set():
                return
            await self._retry(self._connect, "connect")
            if not self.write_only:
                self._consume_task = asyncio.create_task(self._consume_loop())
            self._ready.set()
            self._get_logger().info(
                "kafka manager ready on %s (%s)",
                self.events_topic,
                ",".join(self.bootstrap_servers),
            )

    async def stop(self) -> None:
        """Stop consuming, flush what was produced, close every connection. Safe to call twice."""
        self._ready.clear()
        for task in (self._start_task, self._consume_task):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._start_task = self._consume_task = None
        await self._close_clients()

    async def __aenter__(self) -> AsyncKafkaManager:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def initialize(self) -> None:
        """Called by the server on its first connection: start, unless already started.

        Replaces `AsyncPubSubManager.initialize`, whose listener thread this class does
        not use (the consumer loop starts with `start`).
        """
        AsyncManager.initialize(self)
        if not self.write_only:
            self._start_in_background()

    # -- python-socketio's pub/sub seam ------------------------------------------------

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: str | None = None,
        skip_sid: str | list[str] | None = None,
        callback: Callable[..., Any] | None = None,
        to: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Publish an emit; every node, this one included, delivers it when consumed."""
        room = to or room
        if kwargs.get("ignore_queue"):
            await AsyncManager.emit(
                self, event, data, namespace, room=room, skip_sid=skip_sid, callback=callback
            )
            return
        namespace = namespace or "/"
        ack = None
        if callback is not None:
            if self.server is None:
                raise RuntimeError("Callbacks can only be issued from the context of a server.")
            if room is None:
                raise ValueError("Cannot use callback without a room set.")
            ack = (room, namespace, self._generate_ack_id(room, callback))
        message = codec.emit_message(
            event,
            data,
            namespace=namespace,
            room=room,
            skip_sid=skip_sid,
            callback=ack,
            host_id=self.host_id,
        )
        await self._publish(message)

    async def _publish(self, data: codec.Message) -> None:
        producer = await self._ready_producer()
        value = codec.encode(data)
        if len(value) > self.options.max_record_bytes:
            self.stats.publish_errors += 1
            raise PublishError(
                f"record of {len(value)} bytes exceeds max_record_bytes="
                f"{self.options.max_record_bytes}"
            )
        timeout = self.options.request_timeout_ms / 1000
        try:
            # aiokafka retries a batch while the broker is away; the caller needs an answer.
            async with asyncio.timeout(timeout):
                delivery = await producer.send(self.events_topic, value, key=codec.record_key(data))
                await delivery
        except KafkaError as exc:
            self.stats.publish_errors += 1
            raise PublishError(f"Kafka did not accept the record: {exc!r}") from exc
        except TimeoutError as exc:
            self.stats.publish_errors += 1
            raise PublishError(
                f"Kafka did not confirm the record within {timeout}s (it may still be written)"
            ) from exc
        self.stats.published += 1

    async def _listen(self) -> Any:
        """Unused: records are consumed by `_consume_loop`, which knows their offsets."""
        raise NotImplementedError

    # -- internals ---------------------------------------------------------------------

    def _start_in_background(self) -> None:
        if self._start_task is None and not self._ready.is_set():
            self._start_task = asyncio.create_task(self._start_logged())

    async def _start_logged(self) -> None:
        try:
            await self.start()
        except asyncio.CancelledError:
            raise
        except Exception:
            self._get_logger().exception("kafka manager failed to start")

    async def _ready_producer(self) -> AIOKafkaProducer:
        if not self._ready.is_set():
            self._start_in_background()
            timeout = self.options.request_timeout_ms / 1000
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError as exc:
                raise BrokerUnavailable(
                    f"Kafka at {','.join(self.bootstrap_servers)} not reachable within {timeout}s"
                ) from exc
        assert self._producer is not None
        return self._producer

    async def _retry(self, step: Callable[[], Awaitable[None]], what: str) -> None:
        delay = _FIRST_RETRY_S
        while True:
            try:
                await step()
            except BrokerUnavailable as exc:
                self.stats.connect_failures += 1
                self._get_logger().warning(
                    "kafka %s failed (%s); retrying in %.2fs", what, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.options.retry_backoff_max_s)
            else:
                return

    async def _connect(self) -> None:
        try:
            await self._ensure_topics()
            self._producer = AIOKafkaProducer(
                **self.options.producer_kwargs(self.bootstrap_servers)
            )
            await self._producer.start()
            if not self.write_only:
                self._consumer = await self._positioned_consumer()
        except (KafkaConnectionError, KafkaTimeoutError) as exc:
            await self._close_clients()
            raise BrokerUnavailable(repr(exc)) from exc
        except BaseException:
            await self._close_clients()
            raise

    async def _ensure_topics(self) -> None:
        admin = AIOKafkaAdminClient(**self.options.common_kwargs(self.bootstrap_servers))
        await admin.start()
        try:
            spec = TopicSpec(
                self.events_topic,
                self.options.partitions,
                self.options.replication_factor,
                "delete",
                self.options.retention_ms,
                self.options.max_record_bytes + _BATCH_OVERHEAD_BYTES,
            )
            self._partitions = (await ensure_topic(admin, spec)).partitions
        finally:
            await admin.close()

    async def _positioned_consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(**self.options.consumer_kwargs(self.bootstrap_servers))
        await consumer.start()
        try:
            partitions = [TopicPartition(self.events_topic, p) for p in range(self._partitions)]
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            for tp in partitions:  # resolve the lazy seek now: readiness means positioned
                await consumer.position(tp)
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    async def _close_clients(self) -> None:
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        if consumer is not None:
            await consumer.stop()
        if producer is not None:
            await producer.stop()

    async def _consume_loop(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        delay = _FIRST_RETRY_S
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=_POLL_TIMEOUT_MS)
            except KafkaError as exc:
                self._get_logger().warning("kafka fetch failed (%r); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.options.retry_backoff_max_s)
                continue
            delay = _FIRST_RETRY_S
            for records in batches.values():
                for record in records:
                    await self._dispatch(record)

    async def _dispatch(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            message = codec.decode(record.value)
        except RecordDecodeError as exc:
            self.stats.records_skipped += 1
            self._get_logger().warning(
                "skipping undecodable record %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
            return
        self.stats.records_consumed += 1
        try:
            await self._handle(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats.handler_errors += 1
            self._get_logger().exception(
                "error handling %s record %s[%d]@%d",
                message["method"],
                record.topic,
                record.partition,
                record.offset,
            )

    async def _handle(self, message: codec.Message) -> None:
        method = message["method"]
        if method == "emit":
            await self._handle_emit(message)
        elif method == "callback":
            await self._handle_callback(message)
        elif message.get("host_id") == self.host_id:
            return  # disconnect and close_room were already applied here before publishing
        elif method == "disconnect":
            await self._handle_disconnect(message)
        elif method == "enter_room":
            await self._handle_enter_room(message)
        elif method == "leave_room":
            await self._handle_leave_room(message)
        elif method == "close_room":
            await self._handle_close_room(message)
