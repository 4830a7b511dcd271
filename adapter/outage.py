"""How a Kafka outage reads: two lines of our own, and the Kafka client's repeats folded.

While the broker was away, aiokafka logged about 70 ERROR lines a second per node
(connection refused, metadata) and the node's own log said almost nothing. A
`BrokerWatch` asks Kafka for metadata once a second and logs one line when it stops
answering (with the cause) and one when it is back (how long it was away, how many
publishes were refused, how many client lines were folded). Its answer is also what
``/readyz`` reads: readiness never waits on Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

__all__ = ["BrokerWatch", "RepeatFilter", "fold_kafka_client_logs"]

_PROBE_EVERY_S = 1.0
_PROBE_TIMEOUT_S = 2.0
#: A node counts Kafka as away after this many probes in a row go unanswered.
_MISSES = 2


class RepeatFilter(logging.Filter):
    """Lets one record per logger and message template through every ``interval_s``."""

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}
        #: Records held back so far.
        self.folded = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        if now - self._last.get(key, -self._interval_s) < self._interval_s:
            self.folded += 1
            return False
        if len(self._last) > 1000:  # templates are few; a bound all the same
            self._last.clear()
        self._last[key] = now
        return True


_FILTER = RepeatFilter()


def fold_kafka_client_logs() -> RepeatFilter:
    """Rate-limit aiokafka's own loggers (each of them: filters are not inherited)."""
    names = [
        n for n in logging.root.manager.loggerDict if n == "aiokafka" or n.startswith("aiokafka.")
    ]
    for name in names:
        log = logging.getLogger(name)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)
    return _FILTER


class BrokerWatch:
    """Kafka's reachability, probed in the background and logged on each change."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        refused: Callable[[], int],
        logger: logging.Logger,
    ) -> None:
        self._probe = probe
        self._refused = refused
        self._logger = logger
        self._misses = 0
        self._away_since: float | None = None
        self._refused_before = 0
        self._folded_before = 0
        self.cause = ""

    @property
    def reachable(self) -> bool:
        return self._away_since is None

    async def run(self) -> None:
        """Probe forever, once a second (run it under a `Supervisor`)."""
        while True:
            await self.check()
            await asyncio.sleep(_PROBE_EVERY_S)

    async def check(self) -> None:
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                await self._probe()
        except Exception as exc:  # any failure to answer is an outage to report
            self._missed(exc)
        else:
            self._answered()

    def _missed(self, exc: BaseException) -> None:
        self._misses += 1
        if self._away_since is not None or self._misses < _MISSES:
            return
        self._away_since = time.monotonic()
        self._refused_before = self._refused()
        self._folded_before = _FILTER.folded
        self.cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._logger.error(
            "kafka unreachable (%s); publishes are refused until it is back", self.cause
        )

    def _answered(self) -> None:
        self._misses = 0
        if self._away_since is None:
            return
        away = time.monotonic() - self._away_since
        self._away_since = None
        self._logger.warning(
            "kafka reachable again after %.1fs away; %d publishes refused meanwhile, "
            "%d repeated kafka client log lines folded",
            away,
            self._refused() - self._refused_before,
            _FILTER.folded - self._folded_before,
        )
