"""The chaos harness of issue 9: faults under a steady numbered event stream, counted.

3 gateway nodes (recovery on), official JS clients and Python `AsyncRecoveringClient`s in
rooms, and pipelined publishers numbering their events per room. Each scenario runs its
cycles of one fault (a gateway node SIGKILLed or SIGTERMed, client transports dropped, a
node cut from Kafka, the broker restarted, on a three-broker cluster the partition leader
killed, two brokers down); the run then counts, per client, per room, per scenario and in
total, what was published, acked, refused, received, lost, duplicated and out of order,
and the reconnections recovered or not::

    python -m benchmarks.chaos [--scenario NAME ...] [--quick] [--cycles N] [--write-docs]

Never the shared broker: each run starts its own Kafka in a scratch directory.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
