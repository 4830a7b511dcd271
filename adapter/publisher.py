"""The manager's producer: records in, acknowledgements or a `PublishError` out.

aiokafka's idempotent producer can reach states it never leaves: after a broker outage
under load, every later batch to a busy partition was refused with
``OutOfOrderSequenceNumber`` until the process restarted. Kafka's Java client resets
its producer id there; aiokafka does not, so `Publisher` does the equivalent: it replaces
the producer with a fresh idempotent one. Publishes meanwhile fail with a retriable
`PublishError`, and records reach Kafka in order again from the new producer on.
aiokafka's errors are translated here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka.errors import (
    DuplicateSequenceNumber,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)

from .errors import BrokerUnavailable, PublishError
from .histogram import LatencyHistogram
from .stopping import stop_producer

__all__ = ["WEDGED", "Delivery", "Headers", "Producer", "Publisher", "Record"]

#: Errors after which an idempotent producer refuses every later batch of a partition.
WEDGED: tuple[type[KafkaError], ...] = (
    OutOfOrderSequenceNumber,
    DuplicateSequenceNumber,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    ProducerFenced,
    UnknownProducerId,
)
_CLOSE_TIMEOUT_S = 5.0

#: Kafka record headers, as aiokafka's producer takes them.
Headers = Sequence[tuple[str, bytes]]
#: ``(key, value)``, or ``(key, value, headers)``.
Record = tuple[bytes, bytes | None] | tuple[bytes, bytes | None, Headers]


class Producer(Protocol):
    """What `Publisher` needs of an aiokafka producer (a seam for in-process tests)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def partitions_for(self, topic: str) -> Any: ...

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[Any]: ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """Records handed to a producer, not yet acknowledged by Kafka."""

    producer: Producer
    futures: Sequence[Awaitable[Any]]
    #: None: the caller bounds the wait (`Publisher.enqueue`).
    deadline: float | None
    #: When they were handed over (`time.monotonic`).
    started: float


class Publisher:
    """One idempotent producer at a time, replaced when it wedges.

    ``build`` makes a new, unstarted producer; ``timeout_s`` bounds each publish (aiokafka
    retries a batch for as long as the broker is away; a caller needs an answer). Each
    record Kafka acknowledges is observed in ``latency``, from hand-over to ack; ``handed``
    is told how many records each `enqueue` handed over (`Pacing` counts them all, the
    session store's too).

    A producer learns the partitions of ``topics`` before it is used. Until it knows a
    topic's, aiokafka's ``send`` waits for metadata in a loop with a sleep (again after a
    refresh that found the topic leaderless), and a send that comes while an earlier one
    sleeps there goes first; it also waits while its partition's one pending batch is full.
    Callers that need two records of one key in order take the key's turn around `enqueue`
    (`adapter/turns.py`: the manager's events, the session store's records): a lock for
    all would hold every partition behind one whose leader is away.
    """

    def __init__(
        self,
        build: Callable[[], Producer],
        timeout_s: float,
        logger: logging.Logger,
        latency: LatencyHistogram | None = None,
        topics: Sequence[str] = (),
        handed: Callable[[int], None] | None = None,
    ) -> None:
        self._build = build
        self._handed = handed
        self._topics = tuple(topics)
        self._timeout_s = timeout_s
        self._logger = logger
        self._latency = latency
        self._producer: Producer | None = None
        self._replacing: asyncio.Task[None] | None = None
        self._linger_ms: float | None = None
        #: How many producers were replaced because they wedged.
        self.replaced = 0

    @property
    def producer(self) -> Producer | None:
        return self._producer

    @property
    def replacing(self) -> bool:
        """True while a wedged producer is being replaced: publishes are refused."""
        return self._replacing is not None and not self._replacing.done()

    @property
    def sending(self) -> bool:
        """False once the producer's sender task has ended: nothing it takes is sent.
        It is then replaced, and again at each publish while a replacement fails."""
        return self._producer is None or not _sender(self._producer).done()

    async def start(self) -> None:
        producer = self._build()
        await producer.start()
        try:
            await self._learn_topics(producer)
        except BaseException:
            await producer.stop()
            raise
        self._producer = self._watched(producer)

    async def _learn_topics(self, producer: Producer) -> None:
        """All at once: one metadata request for every topic."""

        async def learn(topic: str) -> None:
            try:
                await producer.partitions_for(topic)  # bounded by aiokafka's request timeout
            except KafkaError as exc:
                raise BrokerUnavailable(f"no metadata for topic {topic!r} ({exc!r})") from exc

        await asyncio.gather(*map(learn, self._topics))

    async def stop(self) -> None:
        """Flush and close. Safe to call twice."""
        if self._replacing is not None:
            self._replacing.cancel()
            await asyncio.gather(self._replacing, return_exceptions=True)
            self._replacing = None
        producer, self._producer = self._producer, None
        if producer is not None and not await stop_producer(producer, self._timeout_s):
            self._logger.warning(
                "kafka producer not flushed within %ss: its unsent records failed", self._timeout_s
            )

    def set_linger(self, ms: float) -> None:
        """Let records wait up to ``ms`` to share a request, from the producer's next batch
        on (`adapter/pacing.py`), in this producer and the ones that replace it."""
        self._linger_ms = ms
        if self._producer is not None:
            self._lingering(self._producer)

    def _watched(self, producer: Producer) -> Producer:
        """``producer``, lingering as set, replaced if its sender task ends under it.

        aiokafka's sender sends every batch; when it raises (aiokafka logs "Unexpected
        error in sender routine") or is cancelled, the producer still takes records and
        fails or keeps them all. Ended by our own stop or swap, it is no longer current.
        """

        def ended(task: asyncio.Task[None]) -> None:
            if producer is not self._producer:
                return
            cause = "cancelled" if task.cancelled() else repr(task.exception())
            self._logger.error("kafka producer's sender task ended (%s)", cause)
            self._replace(producer, f"its sender task ended ({cause})")

        _sender(producer).add_done_callback(ended)
        return self._lingering(producer)

    def _lingering(self, producer: Producer) -> Producer:
        # aiokafka reads its accumulator's linger as it opens each batch; no public setter
        # (tests/test_pacing.py checks on real Kafka that a publish waits for it).
        accumulator = getattr(producer, "_message_accumulator", None)
        if accumulator is not None and self._linger_ms is not None:
            accumulator._linger_time = self._linger_ms / 1000
        return producer

    async def send_many(self, topic: str, records: Sequence[Record]) -> None:
        """Queue every record, then wait for all: one linger and one round trip for all."""
        await self.confirm(await self.enqueue(topic, records, self.deadline()))

    def deadline(self) -> float:
        """When a publish that starts now gives up, on the event loop's clock."""
        return asyncio.get_running_loop().time() + self._timeout_s

    async def enqueue(
        self, topic: str, records: Sequence[Record], deadline: float | None
    ) -> Delivery:
        """Hand the records to the producer, in order: those of a key reach Kafka in the
        order they were handed over (one partition, one idempotent producer).

        Raises `PublishError` when the producer does not take them by ``deadline``. None:
        the caller bounds the wait itself (the manager's publish, one timeout for the whole
        of it: each costs a timer and loop look-ups, on the path every publish takes).
        """
        started = time.monotonic()
        producer = self._producer
        if producer is None or self.replacing:
            raise PublishError("the Kafka producer is being replaced after an error; retry")
        try:
            if deadline is None:
                futures = [await _send(producer, topic, record) for record in records]
            else:
                async with asyncio.timeout_at(deadline):
                    futures = [await _send(producer, topic, record) for record in records]
        except KafkaError as exc:
            raise self._refused(producer, exc) from exc
        except TimeoutError as exc:
            self._heal(producer)
            raise PublishError(
                f"Kafka did not take the record within {self._timeout_s}s (not written)"
            ) from exc
        if self._handed is not None:
            self._handed(len(futures))
        return Delivery(producer, futures, deadline, started)

    async def confirm(self, delivery: Delivery) -> list[Any]:
        """The records' metadata, once Kafka acknowledged every one (by the delivery's
        deadline, if it has one)."""
        try:
            if delivery.deadline is None:
                outcomes = await _outcomes(delivery.futures)
            else:
                async with asyncio.timeout_at(delivery.deadline):
                    outcomes = await _outcomes(delivery.futures)
        except TimeoutError as exc:
            self._heal(delivery.producer)
            raise PublishError(
                f"Kafka did not confirm the record within {self._timeout_s}s "
                "(it may still be written)"
            ) from exc
        for outcome in outcomes:
            if isinstance(outcome, KafkaError):
                raise self._refused(delivery.producer, outcome) from outcome
            if isinstance(outcome, BaseException):
                raise outcome
        if self._latency is not None:
            self._latency.observe(time.monotonic() - delivery.started, len(outcomes))
        return outcomes

    def _refused(self, producer: Producer, exc: KafkaError) -> PublishError:
        if isinstance(exc, (*WEDGED, ProducerClosed)) and producer is self._producer:
            self._replace(producer, f"it refused a record with {type(exc).__name__}")
        else:
            self._heal(producer)
        return PublishError(f"Kafka did not accept the record: {exc!r}")

    def _heal(self, producer: Producer) -> None:
        """Replace ``producer`` if its sender has ended: a replacement that failed to start
        is tried again by the next publish that fails."""
        if producer is self._producer and _sender(producer).done():
            self._replace(producer, "its sender task had ended")

    def _replace(self, wedged: Producer, why: str) -> None:
        if self.replacing:
            return
        self._logger.warning("kafka producer: %s; replacing it with a fresh producer", why)
        self._replacing = asyncio.get_running_loop().create_task(self._swap(wedged))

    async def _swap(self, wedged: Producer) -> None:
        fresh = self._build()
        try:
            await fresh.start()
            await self._learn_topics(fresh)
        except Exception as exc:  # the old one stays; its next refusal tries again
            await fresh.stop()
            self._logger.warning("a fresh kafka producer did not start (%r)", exc)
            return
        self._producer = self._watched(fresh)
        self.replaced += 1
        # Its unsent batches fail (their callers already had, or get, an error).
        try:
            await stop_producer(wedged, _CLOSE_TIMEOUT_S)
        except KafkaError:
            self._logger.debug("the wedged producer did not close cleanly", exc_info=True)
        self._logger.warning("kafka producer replaced; publishing again")


async def _outcomes(futures: Sequence[Awaitable[Any]]) -> list[Any]:
    """Each future's result or exception; one (a publish) is awaited without a gather."""
    if len(futures) != 1:
        return await asyncio.gather(*futures, return_exceptions=True)
    try:
        return [await futures[0]]
    except Exception as exc:  # returned, as gather(return_exceptions=True) would
        return [exc]


def _sender(producer: Producer) -> asyncio.Task[None]:
    # aiokafka's task that sends the batches (tests/test_seams.py checks it is there).
    internals: Any = producer
    task: asyncio.Task[None] = internals._sender.sender_task
    return task


def _send(producer: Producer, topic: str, record: Record) -> Awaitable[Awaitable[Any]]:
    if len(record) == 3:
        key, value, headers = record
        return producer.send(topic, value, key=key, headers=list(headers))
    key, value = record
    return producer.send(topic, value, key=key)
