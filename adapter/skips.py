"""One log line for a record that is skipped, with the position that finds it again."""

from __future__ import annotations

import logging

from aiokafka import ConsumerRecord

from .errors import RecordDecodeError

__all__ = ["log_skipped", "log_unexpected"]


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
