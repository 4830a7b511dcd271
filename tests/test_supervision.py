"""Nothing dies silently: supervised background tasks, a producer that heals, and a
``/readyz`` that says why a node is not ready (issue 8)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError, OutOfOrderSequenceNumber

from socketio_kafka.adapter import AsyncKafkaManager, PublishError
from socketio_kafka.adapter import manager as manager_module
from socketio_kafka.adapter.outage import BrokerWatch
from socketio_kafka.adapter.publisher import Publisher
from socketio_kafka.adapter.sessions import NODE_PREFIX, Session, encode_session
from socketio_kafka.adapter.store import NODE_STALE_S
from socketio_kafka.adapter.supervisor import Supervisor
from socketio_kafka.gateway.app import create_app
from socketio_kafka.gateway.settings import Settings

from .support.clients import Recorder
from .support.producers import FakeProducer
from .support.server import run_server
from .support.waiting import wait_until

_LOG = logging.getLogger("tests.supervision")


async def test_a_task_that_raises_is_logged_counted_shown_down_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    release = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise ValueError(f"bug number {len(runs)}")
        await release.wait()

    supervisor = Supervisor(_LOG, max_backoff_s=0.5)
    with caplog.at_level(logging.ERROR, logger=_LOG.name):
        supervisor.start("flaky", flaky)
        await wait_until(lambda: "flaky" in supervisor.down, 5, "the task to be down")
        assert "ValueError: bug number 1" in supervisor.down["flaky"]
        await wait_until(lambda: len(runs) == 3, 5, "the second restart")
    assert supervisor.restarts == 2
    assert supervisor.down == {}
    assert supervisor.running == ["flaky"]
    failures = [r for r in caplog.records if "background task 'flaky' failed" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.exc_info is not None for r in failures)  # with its traceback
    release.set()
    await wait_until(lambda: supervisor.running == [], 5, "the task to end")
    await supervisor.stop()
    await supervisor.stop()


async def test_a_task_started_on_demand_runs_once_at_a_time() -> None:
    """`Supervisor.ensure` (the session writer): a second call while the task runs, or
    waits to restart, starts nothing; one after it returned starts it again."""
    runs: list[int] = []
    release = asyncio.Event()

    async def work() -> None:
        runs.append(len(runs))
        await release.wait()

    supervisor = Supervisor(_LOG)
    supervisor.ensure("writer", work)
    supervisor.ensure("writer", work)
    await wait_until(lambda: runs == [0], 5, "the first run")
    release.set()
    await wait_until(lambda: supervisor.running == [], 5, "the run to end")
    supervisor.ensure("writer", work)
    await wait_until(lambda: runs == [0, 1], 5, "a second run")
    await supervisor.stop()


async def test_a_wedged_producer_is_replaced_and_publishing_resumes() -> None:
    wedged = FakeProducer(OutOfOrderSequenceNumber())
    fresh = FakeProducer(None)
    made = iter([wedged, fresh])
    publisher = Publisher(lambda: next(made), timeout_s=5, logger=_LOG, topics=("t", "u"))
    await publisher.start()
    # Each producer knows its topics' partitions before it sends: until then aiokafka's
    # send waits for metadata in a loop that a later send can overtake.
    assert wedged.learned == ["t", "u"]

    with pytest.raises(PublishError, match="OutOfOrderSequenceNumber") as refused:
        await publisher.send_many("t", [(b"k", b"1")])
    assert refused.value.retriable
    await wait_until(lambda: not publisher.replacing, 5, "the replacement")
    await publisher.send_many("t", [(b"k", b"2")])
    assert (fresh.sent, publisher.replaced, wedged.stopped) == ([b"2"], 1, True)
    assert fresh.learned == ["t", "u"]
    await publisher.stop()
    assert fresh.stopped


async def test_a_producer_whose_sender_ended_is_replaced_until_a_fresh_one_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiokafka's sender task sends every batch; once it has ended (an unexpected error
    in it), the producer still takes records and fails them all."""
    first = FakeProducer()
    unstartable = FakeProducer(start_error=KafkaConnectionError("no broker"))
    fresh = FakeProducer()
    made = iter([first, unstartable, fresh])
    publisher = Publisher(lambda: next(made), timeout_s=5, logger=_LOG)
    await publisher.start()
    assert publisher.sending
    with caplog.at_level(logging.WARNING, logger=_LOG.name):
        first._sender.sender_task.set_exception(RuntimeError("a bug in the sender"))
        await wait_until(lambda: unstartable.stopped, 5, "a replacement that fails to start")
        await wait_until(lambda: not publisher.replacing, 5, "the failed replacement's end")
        assert (publisher.producer, publisher.sending) == (first, False)
        with pytest.raises(PublishError, match="Unexpected error during batch delivery"):
            await publisher.send_many("t", [(b"k", b"1")])
        await wait_until(lambda: publisher.replaced == 1, 5, "a second replacement")
    await publisher.send_many("t", [(b"k", b"2")])
    assert (fresh.sent, publisher.sending, first.stopped) == ([b"2"], True, True)
    assert "sender task ended (RuntimeError('a bug in the sender'))" in caplog.text
    await publisher.stop()


async def test_a_broker_watch_reports_an_outage_in_two_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusal = KafkaConnectionError("refused")
    answers: list[Exception | None] = [None, *[refusal] * 6, None]
    refused = [0]

    async def probe() -> None:
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    watch = BrokerWatch(probe, lambda: refused[0], _LOG)
    with caplog.at_level(logging.WARNING, logger=_LOG.name):
        await watch.check()
        await watch.check()
        assert watch.reachable  # one miss is not an outage
        await watch.check()
        assert not watch.reachable
        assert "KafkaConnectionError" in watch.cause
        refused[0] = 42
        while answers:
            await watch.check()
    assert watch.reachable
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("kafka unreachable (KafkaConnectionError")
    assert "kafka reachable again after" in lines[1]
    assert "42 publishes refused meanwhile" in lines[1]


@pytest.fixture
async def node(kafka_url: str, channel: str) -> AsyncIterator[tuple[Any, str]]:
    app = create_app(Settings(channel=channel), kafka_url)
    manager = app.state.node.manager
    async with run_server(app) as url:
        await manager.start()
        try:
            yield manager, url
        finally:
            await manager.stop()


@pytest.mark.kafka
@pytest.mark.timeout(60)
async def test_a_consume_loop_that_fails_is_restarted_and_loses_nothing(
    node: tuple[Any, str],
) -> None:
    manager, url = node
    failing = asyncio.Event()
    failing.set()
    dispatch = manager._dispatch

    async def broken_dispatch(record: Any) -> bool:
        if failing.is_set():
            raise RuntimeError("a bug in delivery")
        return await dispatch(record)

    client = await Recorder(url).connect()
    try:
        assert await client.ask("join", {"room": "r"}) == {"ok": True}
        manager._dispatch = broken_dispatch
        await manager.emit("e", 1, room="r")
        async with httpx.AsyncClient() as http:

            async def readyz() -> httpx.Response:
                return await http.get(f"{url}/readyz", timeout=1)

            await wait_until(lambda: not manager.health().ready, 10, "the loop to be down")
            response = await readyz()
            assert response.status_code == 503
            assert any("'consume' down" in r for r in response.json()["reasons"])
            failing.clear()
            await manager.emit("e", 2, room="r")
            assert await client.wait_for("e", 2) == [1, 2]
            await wait_until(lambda: manager.health().ready, 15, "the loop to be back")
            assert (await readyz()).status_code == 200
            metrics = (await http.get(f"{url}/metrics")).text
        assert manager.health().task_restarts >= 1
        assert "socketio_kafka_task_restarts_total" in metrics
        assert client.client.connected
    finally:
        await client.close()


@pytest.mark.kafka
@pytest.mark.timeout(60)
async def test_a_consume_loop_stuck_in_a_handler_makes_the_node_unready(
    node: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app's disconnect handler, run by the consume loop for a kick from another node,
    that hangs: the node delivered nothing while /readyz said 200 and the lag stayed 0."""
    manager, url = node
    monkeypatch.setattr(manager_module, "_STUCK_S", 3.0)  # over the 1 s poll
    release = asyncio.Event()
    dispatch = manager._dispatch

    async def hanging_dispatch(record: Any) -> bool:
        await release.wait()
        return await dispatch(record)

    client = await Recorder(url).connect()
    try:
        assert await client.ask("join", {"room": "r"}) == {"ok": True}
        manager._dispatch = hanging_dispatch
        await manager.emit("e", 1, room="r")
        await wait_until(lambda: not manager.health().ready, 10, "the node to be unready")
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{url}/readyz", timeout=1)
        assert response.status_code == 503
        assert any("consume loop has not turned" in r for r in response.json()["reasons"])
        release.set()
        assert await client.wait_for("e", 1) == [1]
        await wait_until(lambda: manager.health().ready, 10, "the node ready again")
    finally:
        release.set()
        await client.close()


@pytest.mark.kafka
@pytest.mark.timeout(60)
async def test_a_stop_ends_a_consume_loop_whose_handler_swallowed_the_cancel(
    node: tuple[Any, str],
) -> None:
    """python-socketio's ``_trigger_event`` swallows a cancel that reaches an app handler;
    the consume loop runs such handlers (a disconnect for another node's kick). It read
    on, and the node's stop waited for it for good."""
    manager, _ = node
    entered = asyncio.Event()
    swallowed = asyncio.Event()
    dispatch = manager._dispatch

    async def swallowing_dispatch(record: Any) -> bool:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed.set()
        return await dispatch(record)

    manager._dispatch = swallowing_dispatch
    await manager.emit("e", 1, room="r")
    await asyncio.wait_for(entered.wait(), 15)
    await asyncio.wait_for(manager.stop(), 10)
    assert swallowed.is_set()
    assert not manager.ready


@pytest.mark.kafka
@pytest.mark.timeout(60)
async def test_a_producer_whose_sender_dies_is_replaced_and_the_node_publishes_again(
    node: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    manager, url = node
    client = await Recorder(url).connect()
    try:
        assert await client.ask("join", {"room": "r"}) == {"ok": True}
        sender = manager._publisher.producer._sender

        async def broken(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("a bug in aiokafka's sender")

        sender._send_produce_req = broken
        with caplog.at_level(logging.ERROR):
            # The node's heartbeat or this emit meets the broken sender first.
            try:
                await manager.emit("e", 1, room="r")
                expected = [1, 2]
            except PublishError:
                expected = [2]
            await wait_until(lambda: manager.health().producers_replaced == 1, 15, "a fresh one")
        assert "kafka producer's sender task ended" in caplog.text
        await manager.emit("e", 2, room="r")
        assert await client.wait_for("e", len(expected)) == expected
        assert manager.health().ready
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{url}/metrics")).text
        assert "socketio_kafka_producers_replaced_total 1.0" in metrics
    finally:
        await client.close()


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_a_sweep_of_100000_expired_sessions_never_makes_a_heartbeat_late(
    kafka_url: str, channel: str
) -> None:
    """Peers count a node unheard of for 3 s as dead, its live sessions claimable: the
    sweep that ends a dead node's sessions must not hold this node's own heartbeat. Half
    of them were left an hour ago; the other half were still connected when their node
    was last heard of, an hour ago (found by a look at every session, a chunk a turn)."""
    manager = AsyncKafkaManager(kafka_url, channel=channel)
    manager.enable_recovery(60)
    async with manager:
        left = time.time() - 3600
        table = manager.store.table
        table.apply(NODE_PREFIX + b"a-dead-node", b"{}", int(left * 1000))
        for n in range(100_000):
            pid = f"pid-{n}"
            session = Session(
                pid, f"sid-{n}", "/", (), None, (0,) * 6, manager.epoch, "a-dead-node",
                left if n % 2 else None,
            )  # fmt: skip
            table.apply(pid.encode(), encode_session(session), 0, n)
        beats: list[float] = []

        def heard() -> bool:
            seen = manager.store.table.heartbeats.get(manager.host_id)
            if seen is not None and (not beats or seen != beats[-1]):
                beats.append(seen)
            return manager.stats.sessions_expired >= 100_000

        await wait_until(heard, 90, "the sweep of 100,000 sessions")
        await wait_until(lambda: len(manager.store.table.sessions) == 0, 30, "the tombstones read")
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert len(beats) >= 3, beats
    assert max(gaps) < NODE_STALE_S, gaps


@pytest.mark.timeout(30)
async def test_an_unready_manager_says_why_its_start_is_retrying() -> None:
    """`/readyz` said only "not connected to Kafka yet" while the log had the cause."""
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        manager = AsyncKafkaManager(f"kafka://127.0.0.1:{port}", channel="unit")
        starting = asyncio.create_task(manager.start())
        try:
            await wait_until(lambda: "last try" in " ".join(manager.health().reasons), 15)
            (reason,) = manager.health().reasons
            assert reason.startswith("not connected to Kafka yet (last try: connect failed (")
            assert f"127.0.0.1:{port}" in reason
        finally:
            starting.cancel()
            await manager.stop()
