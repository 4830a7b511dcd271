"""The gateway's collector: what survives a full collection left out of the next, a bound
on what that keeps, and every pause timed."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

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


# In a process of its own: frozen objects stay frozen, and a test process's own cycles would
# stay with them.
_FREEZING = """
import gc, json, weakref
from socketio_kafka.gateway.collector import FREEZER

class Node:
    pass

def cycles(n):
    made = [Node() for _ in range(n)]
    for node in made:
        node.me = node
    return made

FREEZER.install()
gc.collect()
start = FREEZER.frozen
kept = cycles(start)  # the frozen objects double
gc.collect()
frozen = gc.get_freeze_count()
walked = len(gc.get_objects())
first = weakref.ref(kept[0])
del kept
gc.collect()
leaked = first() is not None
fulls = 3
while not FREEZER.thaws and fulls < 20:
    gc.collect()
    fulls += 1
gc.collect()
print(json.dumps({"start": start, "frozen": frozen, "walked": walked, "leaked": leaked,
                  "thawed_at": fulls, "freed": first() is None, "after": gc.get_freeze_count()}))
"""


def test_what_survives_a_full_collection_is_left_out_of_the_next_and_a_thaw_frees_cycles() -> None:
    """A full collection walked every connection of the node (1.5 s at 20,000). Frozen
    after each, the next walks what was made since; a cycle frozen alive and dropped after
    is kept, until the frozen objects grew by half and a full collection walks them all."""
    done = subprocess.run(
        [sys.executable, "-c", _FREEZING], capture_output=True, text=True, check=True
    )
    run = json.loads(done.stdout)
    assert run["frozen"] >= 2 * run["start"], run  # the survivors, frozen
    assert run["walked"] < 1_000, run  # what the next full collection walks
    assert run["leaked"], run
    assert run["thawed_at"] == 10, run  # counted every 10th full collection: grown past half
    assert run["freed"], run
    assert run["after"] < run["start"] + 1_000, run


_FOLLOWING = """
import gc, json
from socketio_kafka.gateway.collector import FREEZER, OBJECTS_PER_CONNECTION

class State:
    pass

connections = []
FREEZER.follow(lambda: len(connections))
FREEZER.install()
gc.collect()
start = FREEZER.frozen

def collect(times):
    for _ in range(times):
        gc.collect()

# Connections of OBJECTS_PER_CONNECTION tracked objects each (a list and its states), held:
# the frozen objects grow to 4 times the start's.
for _ in range(3 * start // OBJECTS_PER_CONNECTION):
    connections.append([State() for _ in range(OBJECTS_PER_CONNECTION - 1)])
collect(25)
grown = {"frozen": FREEZER.frozen, "thaws": FREEZER.thaws}
# Cycles frozen alive, then dropped, as many objects as the connections and start-up, with
# the connections the node holds unchanged.
cycles = [State() for _ in range(4 * start)]
for state in cycles:
    state.me = state
collect(1)
del cycles
collect(25)
print(json.dumps({"start": start, "grown": grown, "leaked": {"thaws": FREEZER.thaws,
                  "after": gc.get_freeze_count()}}))
"""


def test_frozen_objects_that_grow_with_the_connections_are_not_thawed_and_a_leak_is() -> None:
    """A thaw is a full collection of everything, 1.5 s at 20,000 connections: once a
    node's frozen objects grew by half, a node growing from 0 to 20,000 made about 9. What
    its connections account for is not counted as growth; cycles kept beside them are."""
    done = subprocess.run(
        [sys.executable, "-c", _FOLLOWING], capture_output=True, text=True, check=True
    )
    run = json.loads(done.stdout)
    assert run["grown"]["frozen"] > 3.5 * run["start"], run
    assert run["grown"]["thaws"] == 0, run
    assert run["leaked"]["thaws"] == 1, run
    assert run["leaked"]["after"] < run["grown"]["frozen"] * 1.1, run  # the cycles freed


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


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_the_quick_collector_run_keeps_nothing_of_the_connections_that_left(
    kafka_bootstrap: str,
) -> None:
    """Official clients come and go (closed, and reset) on a node beside its load; after
    them, with its collector freezing, it keeps what it kept before (each left connection
    kept about 13 objects while websockets' parser held it in a cycle)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.collector", f"--kafka={kafka_bootstrap}", "--quick"],
        capture_output=True,
        text=True,
        timeout=290,
        check=True,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    freezing, before = figures["arms"]["freezing"], figures["arms"]["before"]
    assert freezing["full"]["count"] >= 1, figures  # each froze what it found
    assert abs(freezing["kept_per_churned_connection"]) < 3, figures
    assert abs(before["kept_per_churned_connection"]) < 3, figures


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_a_node_growing_by_its_connections_is_not_thawed(kafka_bootstrap: str) -> None:
    """Official clients come and stay: the node's frozen objects grow past twice their
    start, by its connections, and it never walks them all again (session 32's freezer,
    which thawed at any growth by half, did in the same run)."""
    done = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.collector", f"--kafka={kafka_bootstrap}",
            "--quick", "--grow",
        ],
        capture_output=True,
        text=True,
        timeout=290,
        check=True,
    )  # fmt: skip
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    freezing, growth = figures["arms"]["freezing"], figures["arms"]["growth"]
    assert freezing["frozen_after"] > 2 * freezing["frozen_before"], figures
    assert freezing["thaws"] == 0, figures
    assert growth["thaws"] >= 1, figures
