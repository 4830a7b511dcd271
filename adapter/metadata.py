"""Backoff between forced metadata updates of an aiokafka client.

aiokafka's producer (and its fetcher) ask for fresh metadata the moment an update fails
while a partition has no leader, as when the only broker has gone away: with no pause in
between, a node spun a core and logged thousands of errors a second for as long as the
broker was down. Kafka's Java client waits ``retry.backoff.ms`` between such refreshes;
this gives an aiokafka client the same pause. The replay consumer, which needs its first
metadata at once, is left alone.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

__all__ = ["pace_metadata_updates"]


def pace_metadata_updates(client: Any, backoff_s: float) -> None:
    """Make ``client.force_metadata_update()`` start at most once per ``backoff_s``.

    ``client`` is an ``aiokafka.AIOKafkaClient`` (a producer's ``client``, a consumer's
    ``_client``). Callers share the update that is waiting its turn or in flight, as
    aiokafka's own callers share one in flight: its ``partitions_for`` asks twice in a
    row (as it adds the topic, then for it), and the second ask waited out the backoff.
    """
    force = client.force_metadata_update
    loop = asyncio.get_running_loop()
    last = -math.inf
    pending: asyncio.Future[bool] | None = None

    async def paced() -> bool:
        nonlocal last
        wait = last + backoff_s - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        last = loop.time()
        return bool(await force())

    def update() -> asyncio.Future[bool]:
        nonlocal pending
        if pending is None or pending.done():
            pending = asyncio.ensure_future(paced())
        # Shielded: a caller that gives up (the broker watch's probe, on its timeout) once
        # cancelled the update every caller shared, and aiokafka's sender, waiting on it,
        # took the cancel for its own and ended for good, silently: no record was sent
        # again, while the node said it was ready.
        return asyncio.shield(pending)

    close = client.close

    async def closing() -> None:
        if pending is not None:
            pending.cancel()  # one waiting its turn would outlive the client
        await close()

    client.force_metadata_update = update
    client.close = closing
