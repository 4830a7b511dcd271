"""The gateway's collector: start-up left out of full collections, and every pause timed."""

from __future__ import annotations

import gc
import subprocess
import sys

from socketio_kafka.gateway.collector import PAUSE_BUCKETS_S, CollectorPauses

_STARTED_NODE = """
import gc
from socketio_kafka.gateway.app import create_app
from socketio_kafka.gateway.collector import pace_collector
from socketio_kafka.gateway.settings import Settings

create_app(Settings(), "kafka://127.0.0.1:1")  # built, not started: no broker needed
pace_collector()
print(gc.get_freeze_count(), len(gc.get_objects()), *gc.get_threshold())
"""


def test_a_paced_node_leaves_its_start_up_out_of_every_collection() -> None:
    """A full collection walks every tracked object: start-up's modules, functions and
    classes were most of an idle node's (30 ms a collection here)."""
    done = subprocess.run(
        [sys.executable, "-c", _STARTED_NODE], capture_output=True, text=True, check=True
    )
    frozen, tracked, *thresholds = map(int, done.stdout.split())
    assert thresholds == [5_000, 50, 100]
    assert frozen > 20_000, frozen
    assert tracked < frozen / 10, (tracked, frozen)


def test_every_collection_is_timed_by_its_generation() -> None:
    pauses = CollectorPauses()
    pauses.install()
    pauses.install()  # once, however often asked
    try:
        gc.collect()
    finally:
        pauses.uninstall()
    young, _, full = pauses.by_generation
    assert sum(full.counts) == 1
    assert full.sum > 0
    assert len(full.counts) == len(PAUSE_BUCKETS_S) + 1
    before = sum(young.counts)
    gc.collect(0)  # uninstalled: not timed
    assert sum(young.counts) == before
