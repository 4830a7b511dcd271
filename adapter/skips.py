"""One log line for a record that is skipped, with the position that finds it again."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError

from .errors import RecordDecodeError

__all__ = [
    "UNREADABLE",
    "log_skipped",
    "log_unexpected",
    "log_unreadable",
    "read_past_unreadable",
]

#: What aiokafka's consumer raises for a record it cannot parse, at every fetch of it: its
#: C parser lets a header key that is not UTF-8 out as a bare UnicodeDecodeError, its
#: Python one wraps it in CorruptRecordException (as it does a batch whose CRC fails).
#: The records of that fetch parsed before it are dropped with it. A batch compressed with
#: a codec this process lacks is refused the same way (the codecs are a dependency; one
#: Kafka adds later would not be).
UNREADABLE = (CorruptRecordException, UnicodeDecodeError, UnsupportedCodecError)


def log_skipped(
    logger: logging.Logger, record: ConsumerRecord[bytes, bytes], exc: RecordDecodeError
) -> None:
    """A record that is not ours or is malformed: bad input, counted and skipped."""
    logger.warning(
        "skipping undecodable record %s[%d]@%d: %s",
        record.topic,
        record.partition,
        record.offset,
        exc,
    )


def log_unexpected(logger: logging.Logger, record: ConsumerRecord[bytes, bytes]) -> None:
    """A record whose reading met a bug: logged with the traceback, and still skipped."""
    logger.exception(
        "skipping record %s[%d]@%d: unexpected error reading it",
        record.topic,
        record.partition,
        record.offset,
    )


Take = Callable[[TopicPartition, list[ConsumerRecord[bytes, bytes]]], Awaitable[None]]
Skip = Callable[[TopicPartition, int, Exception], None]
_POLL_TIMEOUT_MS = 1000


async def read_past_unreadable(
    consumer: AIOKafkaConsumer, tps: Collection[TopicPartition], take: Take, skip: Skip
) -> None:
    """After aiokafka refused a fetch (`UNREADABLE`): read ``tps`` from where ``consumer``
    is positioned (where their records stopped being handled) up to their end now, one
    record at a time, handing each to ``take``. A record refused first in line is the
    unreadable one: handed to ``skip`` (partition, offset, error) and read past.
    """
    end = await consumer.end_offsets(list(tps))
    for tp in sorted(tps):
        # A paused partition (``take`` held it at an operation) is read on by the caller.
        while tp not in consumer.paused() and await consumer.position(tp) < end[tp]:
            try:
                fetched = await consumer.getmany(tp, timeout_ms=_POLL_TIMEOUT_MS, max_records=1)
            except UNREADABLE as exc:
                offset = await consumer.position(tp)
                consumer.seek(tp, offset + 1)
                skip(tp, offset, exc)
                continue
            await take(tp, fetched.get(tp, []))


def log_unreadable(logger: logging.Logger, tp: TopicPartition, offset: int, exc: Exception) -> None:
    logger.warning("skipping unreadable record %s[%d]@%d: %r", tp.topic, tp.partition, offset, exc)
