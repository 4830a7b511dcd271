"""One restore per session, cluster-wide: simultaneous claims of one pid, one winner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import socketio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from socketio_kafka.adapter import AsyncKafkaManager, RecoveringAsyncServer
from socketio_kafka.adapter.sessions import Session, SessionTable, decode_session, encode_session

from .support.recovering import RecoveringRecorder
from .support.server import run_server
from .support.waiting import wait_until

ROUNDS = 20
CONCURRENT = 5
LEFT = Session("p1", "s1", "/", ("room",), None, (0,), "ep", "node-a", disconnected_at=1.0)


def _claim(by: str, judged: int) -> Session:
    return Session("p1", "s1", "/", ("room",), None, (0,), "ep", by, claimed=judged)


def _fold(table: SessionTable, records: list[tuple[int, Session]]) -> list[Session | None]:
    return [table.apply(b"p1", encode_session(s), 0, offset) for offset, s in records]


def test_the_first_claim_of_a_record_wins_and_the_owner_hears_of_the_next() -> None:
    table = SessionTable()
    won, late = _claim("node-b", 7), _claim("node-c", 7)
    kept = _fold(table, [(7, LEFT), (8, won), (9, late)])
    assert (table.sessions["p1"], table.offsets["p1"]) == (won, 8)
    assert kept == [None, None, won]  # node-b writes its session again
    # Only its owner writes the session on: not the node it was taken from.
    assert _fold(table, [(10, LEFT)]) == [won]
    assert table.sessions["p1"] == won


def test_a_claim_whose_record_was_compacted_away_never_stands() -> None:
    # Compaction kept only the losing claim: no node reading from the start takes it.
    table = SessionTable()
    assert _fold(table, [(9, _claim("node-c", 7))]) == [None]
    assert "p1" not in table.sessions


class Node:
    """One recovering server; every socket joins the room its auth names (else ``room``)."""

    def __init__(self, kafka_url: str, channel: str) -> None:
        self.manager = AsyncKafkaManager(kafka_url, channel=channel)
        self.sio = RecoveringAsyncServer(
            client_manager=self.manager, async_mode="asgi", connection_state_recovery={}
        )
        self.sio.on("connect", self.on_connect)
        self.asgi = socketio.ASGIApp(self.sio)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        await self.sio.enter_room(sid, (auth or {}).get("room", "room"))

    def left(self, pid: str) -> bool:
        session = self.manager.store.table.sessions.get(pid)
        return session is not None and session.disconnected_at is not None


@pytest.fixture
async def nodes(kafka_url: str, channel: str) -> AsyncIterator[tuple[Node, Node]]:
    a, b = Node(kafka_url, channel), Node(kafka_url, channel)
    async with a.manager, b.manager:
        yield a, b


def _claimant(of: RecoveringRecorder) -> RecoveringRecorder:
    """A client presenting the same pid and offset: the dropped client, twice over."""
    claimant = RecoveringRecorder(of.auth)
    claimant.client.pids.update(of.client.pids)
    claimant.client.offsets.update(of.client.offsets)
    return claimant


async def _last_record(node: Node, pid: str) -> Session | None:
    """The last record of ``pid`` on the sessions topic: what compaction would keep."""
    consumer = AIOKafkaConsumer(
        node.manager.sessions_topic,
        bootstrap_servers=node.manager.bootstrap_servers,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        last = None
        while batches := await consumer.getmany(timeout_ms=200):
            for records in batches.values():
                last = next((r for r in reversed(records) if r.key == pid.encode()), last)
        return None if last is None or last.value is None else decode_session(last.value)
    finally:
        await consumer.stop()


async def _last_record_is_the_winners(reader: Node, pid: str, winner: Node) -> None:
    """The losing claim, rejected, does not stay the last: the winner writes after it."""
    deadline = asyncio.get_running_loop().time() + 10
    while (last := await _last_record(reader, pid)) is None or last.claimed is not None:
        assert asyncio.get_running_loop().time() < deadline, f"last record {last}"
    assert (last.owner, last.disconnected_at) == (winner.manager.host_id, None)


async def _one_round(a: Node, b: Node, urls: tuple[str, str], room: str) -> None:
    client = await RecoveringRecorder({"room": room}).connect(urls[0])
    sid, pid = client.sid, client.client.pids["/"]
    await a.sio.emit("before", 1, to=room)  # the claims carry an offset
    await client.wait_count("before", 1)
    await client.drop_transport()
    await wait_until(lambda: a.left(pid) and b.left(pid), 10, "both nodes seeing it left")
    claimants = (_claimant(client), _claimant(client))
    await client.close()
    await a.sio.emit("missed", 1, to=sid)
    try:
        await asyncio.gather(*(c.connect(url) for c, url in zip(claimants, urls, strict=True)))
        verdicts = sorted((c.client.recovered["/"], c.sid == sid) for c in claimants)
        assert verdicts == [(False, False), (True, True)], "exactly one restores the session"
        winner, loser = sorted(claimants, key=lambda c: c.sid != sid)
        await _last_record_is_the_winners(a, pid, (a, b)[claimants.index(winner)])
        assert await winner.wait_count("missed", 1) == [1]
        await b.sio.emit("after", 2, to=sid)
        await b.sio.emit("marker", 3, to=room)  # sent after "after": a barrier for both
        await winner.wait_count("marker", 1)
        await loser.wait_count("marker", 1)
        assert (winner.events("after"), winner.events("missed")) == ([2], [1])
        assert (loser.events("after"), loser.events("missed")) == ([], [])
    finally:
        for c in claimants:
            await c.close()


@pytest.mark.kafka
@pytest.mark.timeout(240)
async def test_simultaneous_claims_on_two_nodes_restore_the_session_once(
    nodes: tuple[Node, Node],
) -> None:
    # Rounds run CONCURRENT at a time, each in its own room: more claims in flight at
    # once than a sequence would make, and the losers' waits (`_settled`) overlap.
    a, b = nodes
    async with run_server(a.asgi) as url_a, run_server(b.asgi) as url_b:
        for first in range(0, ROUNDS, CONCURRENT):
            rooms = [f"room-{n}" for n in range(first, first + CONCURRENT)]
            await asyncio.gather(*(_one_round(a, b, (url_a, url_b), room) for room in rooms))


@pytest.mark.kafka
@pytest.mark.timeout(60)
async def test_a_rejected_claim_is_followed_by_the_owners_record(nodes: tuple[Node, Node]) -> None:
    # A claim that lost, read after the owner last wrote: compaction would keep it alone,
    # and a node reading the topic from the start would not know the live session.
    a, _ = nodes
    async with run_server(a.asgi) as url:
        client = await RecoveringRecorder().connect(url)
        try:
            pid = client.client.pids["/"]
            table = a.manager.store.table
            await a.sio.enter_room(client.sid, "other")  # its session written
            await wait_until(lambda: pid in table.sessions, 10, "its session read")
            judged = table.offsets[pid]
            await a.sio.enter_room(client.sid, "third")  # and overtaken
            await wait_until(lambda: table.offsets[pid] != judged, 10, "its next record read")
            late = replace(table.sessions[pid], owner="another-node", claimed=judged)
            producer = AIOKafkaProducer(bootstrap_servers=a.manager.bootstrap_servers)
            await producer.start()
            try:
                await producer.send_and_wait(
                    a.manager.sessions_topic, encode_session(late), key=pid.encode()
                )
            finally:
                await producer.stop()
            await _last_record_is_the_winners(a, pid, a)
            assert a.manager.store.table.sessions[pid].owner == a.manager.host_id
        finally:
            await client.close()


@pytest.mark.kafka
@pytest.mark.timeout(90)
async def test_a_claim_that_lost_to_an_attempt_gone_since_claims_again(
    nodes: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client's earlier attempt, on b, claimed first (a Kafka failover held both claims
    # back) and went: b restores the session, then writes it left. The attempt the client
    # waits on, on a, lost to that claim: it must restore the session, not start afresh.
    a, b = nodes
    earlier = RecoveringRecorder()
    real_claim = a.manager.store.claim

    async def the_earlier_attempt_first(claim: Session, wait: float = 3.0) -> bool:
        if not earlier.client.connected and not earlier.received:
            await earlier.connect(url_b)
            assert earlier.client.recovered["/"], "the earlier attempt restored the session"
            asyncio.get_running_loop().create_task(earlier.drop_transport())
        return await real_claim(claim, wait)

    monkeypatch.setattr(a.manager.store, "claim", the_earlier_attempt_first)
    async with run_server(a.asgi) as url_a, run_server(b.asgi) as url_b:
        client = await RecoveringRecorder().connect(url_a)
        sid, pid = client.sid, client.client.pids["/"]
        await a.sio.emit("before", 1, to="room")
        await client.wait_count("before", 1)
        await client.drop_transport()
        await wait_until(lambda: a.left(pid) and b.left(pid), 10, "both nodes seeing it left")
        await a.sio.emit("missed", 2, to=sid)
        earlier.client.pids.update(client.client.pids)
        earlier.client.offsets.update(client.client.offsets)
        later = _claimant(client)
        await client.close()
        try:
            await later.connect(url_a)
            assert earlier.events("missed") == [2]
            assert (later.client.recovered["/"], later.sid) == (True, sid)
            assert await later.wait_count("missed", 1) == [2]
            await b.sio.emit("after", 3, to=sid)
            assert await later.wait_count("after", 1) == [3]
        finally:
            await earlier.close()
            await later.close()
