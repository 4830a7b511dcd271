"""Memory per connection: the benchmark's quick form runs, the node holds every official
client it opened, and a connection costs a bounded share of its RSS; the lean queue the
connections wait on keeps asyncio.Queue's behaviour where engineio and uvicorn rely on it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from socketio_kafka.adapter.outbox import SlimQueue

#: Generous: about 30 KB today, 48 KB before issue 10; per-message deflate on would be
#: hundreds. RSS does not depend on how loaded the machine is, only on what the node keeps.
_KB_PER_CONNECTION = 60


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_the_quick_memory_run(kafka_bootstrap: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--quick", f"--kafka={kafka_bootstrap}"],
        capture_output=True,
        text=True,
        timeout=290,
        check=True,
    )
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["connections"] == 500
    assert figures["held_idle"] == figures["held_with_rooms"] == 500
    assert figures["clients_still_connected"] == 500
    assert 0 < figures["kb_per_connection_idle"] < _KB_PER_CONNECTION, figures
    assert 0 < figures["kb_per_connection_rooms"] < _KB_PER_CONNECTION, figures


async def test_a_getter_that_timed_out_takes_nothing() -> None:
    queue = SlimQueue()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), 0.01)  # engineio's writer, idle
    queue.put_nowait("a")
    queue.put_nowait("b")
    assert await asyncio.wait_for(queue.get(), 1) == "a"
    assert queue.get_nowait() == "b"
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_a_waiting_getter_gets_the_next_item_in_order() -> None:
    queue = SlimQueue()
    first, second = queue.get(), queue.get()
    queue.put_nowait(1)
    queue.put_nowait(2)
    queue.put_nowait(3)
    assert (await first, await second) == (1, 2)
    assert queue.qsize() == 1
    assert await queue.get() == 3


async def test_join_waits_for_every_item_done() -> None:
    queue = SlimQueue()
    await asyncio.wait_for(queue.join(), 1)  # nothing put: at once
    await queue.put("a")
    joined = asyncio.ensure_future(queue.join())
    assert queue.get_nowait() == "a"
    await asyncio.sleep(0)
    assert not joined.done()
    queue.task_done()
    await asyncio.wait_for(joined, 1)
    with pytest.raises(ValueError, match="too many"):
        queue.task_done()
