"""Every limit refuses the client over it, with a clear error, and serves the others.

Real gateway processes on real Kafka, real python-socketio clients. Clients name their
address with X-Forwarded-For (the node runs with ``--trust-forwarded-for``), as clients
behind nginx do: all of them are 127.0.0.1 here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import socketio

from benchmarks.flood import Upgrade, frame, read_frame, upgrade
from socketio_kafka.gateway.app import create_app
from socketio_kafka.gateway.guard import ATTACHMENT_OVERHEAD
from socketio_kafka.gateway.inbound import InboundBudget
from socketio_kafka.gateway.inflight import EVENT_OVERHEAD, InFlight
from socketio_kafka.gateway.limits import (
    Limits,
    LogEvery,
    NodeLimits,
    TokenBuckets,
    client_address,
)
from socketio_kafka.gateway.settings import Settings

from .support.cluster import GatewayProcess, gateway_cluster
from .support.rawclient import close_code, websocket_barrage
from .support.server import run_server
from .support.waiting import wait_until


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    clock = _Clock()
    buckets = TokenBuckets(rate=2, burst=4, clock=clock)
    assert [buckets.take("a") for _ in range(5)] == [True] * 4 + [False]
    assert buckets.take("b")  # another key has its own bucket
    clock.now = 0.5  # one token back
    assert [buckets.take("a") for _ in range(2)] == [True, False]


def test_buckets_stay_bounded_under_a_flood_of_keys() -> None:
    clock = _Clock()
    buckets = TokenBuckets(rate=1, burst=2, max_buckets=100, clock=clock)
    for i in range(10_000):
        buckets.take(f"10.0.{i // 256}.{i % 256}")
    assert len(buckets) <= 100
    clock.now = 10.0  # every bucket refilled: idle, dropped at the next eviction
    for i in range(101):
        buckets.take(f"new-{i}")
    assert len(buckets) <= 100


def test_a_refusal_is_counted_each_time_and_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    limits = NodeLimits(Limits(event_rate=1), clock=clock)
    with caplog.at_level("WARNING", "socketio_kafka.gateway"):
        refused = [limits.check_event("s1") for _ in range(10)]
        clock.now = 61.0
        limits.refuse("event_rate", "s1")
    assert refused[:2] == [None, None]
    assert set(refused[2:]) == {"rate limited"}
    assert limits.refusals["event_rate"] == 9
    assert len(caplog.records) == 2


def test_log_lines_are_due_once_a_key_and_a_flood_of_keys_stays_bounded() -> None:
    """A minute of refusals from 10,000 addresses: the identity server's table was rebuilt,
    whole, at every refusal after that, and grew on."""
    clock = _Clock()
    throttle = LogEvery(60.0, 100, clock)
    assert [throttle.due("a"), throttle.due("a")] == [True, False]
    assert all(throttle.due(n) for n in range(1000))
    assert len(throttle._logged) <= 100
    clock.now = 61.0
    assert throttle.due("a")


def test_a_connection_refused_past_its_rate_within_a_second_is_a_flood() -> None:
    clock = _Clock()
    limits = NodeLimits(Limits(event_rate=150), clock=clock)  # burst 300
    for _ in range(300):
        assert limits.check_event("s1") is None
    verdicts = [limits.check_event("s1") is not None and limits.flooding("s1") for _ in range(151)]
    assert verdicts == [False] * 150 + [True]
    clock.now = 1.0  # a new second: refusals counted afresh
    assert limits.check_event("s1") is None  # a hundred tokens back
    limits.forget("s1")
    assert not limits.flooding("s1")


def test_an_address_refused_past_its_rate_within_a_second_is_reset_at_accept() -> None:
    clock = _Clock()
    limits = NodeLimits(Limits(connect_rate=1), clock=clock)  # burst 2, flood past 100
    assert [limits.refuses_early("10.0.0.1") for _ in range(3)] == [False] * 3  # peeks only
    environ = {"asgi.scope": {"client": ("10.0.0.1", 5000)}}
    assert [limits.admit(environ, 0) for _ in range(2)] == [None, None]
    verdicts = []
    for _ in range(101):
        assert limits.refuses_early("10.0.0.1")
        verdicts.append(limits.floods_connections("10.0.0.1"))
    assert verdicts == [False] * 100 + [True]
    assert limits.floods_connections("10.0.0.1")  # for the rest of the second
    assert not limits.floods_connections("10.0.0.2")  # another address
    assert limits.refusals["connect_rate"] == 101 + 2  # each reset is a refusal too
    clock.now = 1.0  # a new second: answered again, counted afresh
    assert not limits.floods_connections("10.0.0.1")


def test_the_client_address_is_the_peer_unless_the_proxy_is_trusted() -> None:
    """Behind a trusted proxy, the hop it added (the last): a client writes the others."""
    environ = {
        "asgi.scope": {"client": ("192.0.2.7", 5000)},
        # What nginx's $proxy_add_x_forwarded_for makes of a client's forged header.
        "HTTP_X_FORWARDED_FOR": "1.2.3.4, 203.0.113.9",
    }
    assert client_address(environ) == "192.0.2.7"
    assert client_address(environ, trust_forwarded_for=True) == "203.0.113.9"


def test_the_addresses_of_one_ipv6_host_share_its_limits() -> None:
    """A host holds a /64 and may use a new address of it for each connection: keyed on
    the whole address, every connection came with a new client's rate and burst."""
    limits = NodeLimits(Limits(connect_rate=1), clock=_Clock())  # burst 2

    def admit(address: str) -> str | None:
        return limits.admit({"asgi.scope": {"client": (address, 5000)}}, 0)

    assert [admit(f"2001:db8:1:2::{n:x}") for n in range(1, 3)] == [None, None]
    assert admit("2001:db8:1:2:ffff::9") == "connection rate limited"  # the same /64
    assert admit("2001:db8:1:3::1") is None  # another
    assert client_address({"asgi.scope": {"client": ("::ffff:192.0.2.7", 1)}}) == "192.0.2.7"


def test_events_in_flight_are_bounded_per_connection_and_by_what_the_node_leaves() -> None:
    node = InboundBudget(1000, lambda limit, peer: None)
    in_flight = InFlight(max_events=3, max_bytes=500, node=node)
    assert [in_flight.admit("a", 100) for _ in range(4)] == [True, True, True, False]  # count
    assert in_flight.admit("b", 400)
    assert not in_flight.admit("b", 101)  # b's bytes
    in_flight.release("a", 100)
    assert in_flight.held("a") == (2, 200)
    node.hold(_Holder(), 350)  # unfinished messages: 350 + 600 in flight of 1000
    assert not in_flight.admit("c", 51)  # what the node's unfinished messages leave
    assert in_flight.admit("c", 50)
    for sid, nbytes in (("a", 100), ("a", 100), ("b", 400), ("c", 50)):
        in_flight.release(sid, nbytes)
    assert (in_flight.bytes, in_flight.held("a"), node.bytes) == (0, (0, 0), 350)


class _Holder:
    client = None

    def cut_inbound(self) -> None:
        raise AssertionError("an event in flight never cuts an unfinished message")


async def test_publishes_waiting_for_a_slow_kafka_are_refused_past_their_bounds_then_taken(
    kafka_url: str, channel: str
) -> None:
    """python-socketio reads on while handlers wait: a client within its event rate had
    every publish waiting on a stalled Kafka held in the node, 240 MiB for one client in
    10 s. Past its connection's bound (events, bytes), or the node's, a publish is refused
    at once ("busy"), its client kept; once Kafka is back, all goes through. In process,
    Kafka slowed at the publisher (as a partition without a leader holds a record)."""
    settings = Settings(
        channel=channel,
        max_payload_bytes=200_000,
        max_in_flight_events=8,
        max_in_flight_bytes=1_000_000,
        max_node_inbound_bytes=1_500_000,
    )
    app = create_app(settings, kafka_url)
    manager, sio = app.state.node.manager, app.state.node.sio
    kafka_back = asyncio.Event()

    big = "x" * 150_000
    busy = {"ok": False, "error": "busy: too many events still being handled; retry later"}
    async with manager, run_server(app) as url:
        small, heavy, other, listener = [await _connect(url, "127.0.0.1") for _ in range(4)]
        assert await listener.call("join", {"room": "r"}) == {"ok": True}
        publisher = manager._publisher
        real_enqueue = publisher.enqueue

        async def slow_enqueue(*args: Any, **kwargs: Any) -> Any:
            await kafka_back.wait()
            return await real_enqueue(*args, **kwargs)

        publisher.enqueue = slow_enqueue
        try:

            def send(client: socketio.AsyncClient, data: Any, n: int) -> list[asyncio.Task[Any]]:
                event = {"room": "r", "event": "said", "data": data}
                return [
                    asyncio.create_task(client.call("publish", event, timeout=60)) for _ in range(n)
                ]

            async def refused(tasks: list[asyncio.Task[Any]], n: int) -> None:
                await wait_until(lambda: sum(t.done() for t in tasks) >= n, 15, f"{n} refusals")
                assert [t.result() for t in tasks if t.done()] == [busy] * n

            waiting = send(small, 1, 10)  # past its count: 8
            await refused(waiting, 2)
            heavy_waiting = send(heavy, big, 20)  # past its bytes: 6 of 154 kB
            await refused(heavy_waiting, 14)
            assert sio.in_flight.bytes <= 1_000_000 + 8 * (EVENT_OVERHEAD + 100)
            other_waiting = send(other, big, 10)  # past what the node leaves: 3 more
            await refused(other_waiting, 7)
            assert sio.in_flight.bytes <= settings.max_node_inbound_bytes
            assert sio.limits.refusals["in_flight"] == 23
            refusals = 'socketio_kafka_limit_refusals_total{limit="in_flight"}'
            assert await _scrape(url, refusals) == 23
            assert await _scrape(url, "socketio_kafka_in_flight_bytes") == sio.in_flight.bytes
            assert all(c.connected for c in (small, heavy, other))
        finally:
            kafka_back.set()
            publisher.enqueue = real_enqueue
        taken = await asyncio.gather(*waiting, *heavy_waiting, *other_waiting)
        assert sum(reply["ok"] for reply in taken) == 8 + 6 + 3
        await wait_until(lambda: len(listener.received) == 17, 15, "the 17 taken")  # type: ignore[attr-defined]
        assert sio.in_flight.bytes == 0
        replies = await asyncio.gather(*send(heavy, big, 6), *send(other, "again", 1))
        assert all(reply["ok"] for reply in replies)
        await wait_until(lambda: "again" in listener.received, 15, "the publish after")  # type: ignore[attr-defined]
        for client in (small, heavy, other, listener):
            await client.disconnect()


@asynccontextmanager
async def _node(kafka_url: str, channel: str, *flags: str) -> AsyncIterator[GatewayProcess]:
    args = ["--trust-forwarded-for", *flags]
    async with gateway_cluster(kafka_url, channel, nodes=1, extra_args=args) as (node,):
        yield node


async def _connect(
    url: str, address: str, transports: Sequence[str] = ("websocket",)
) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    client.received = []  # type: ignore[attr-defined]
    client.on("said", client.received.append)  # type: ignore[attr-defined]
    await client.connect(
        url,
        transports=list(transports),
        headers={"X-Forwarded-For": address},
        auth={"recovery": False},
    )
    return client


async def _handshake(url: str, address: str) -> httpx.Response:
    """An Engine.IO handshake, as every client begins; a refused one carries the message
    in its body (python-engineio closes its session before reading it: raw HTTP here)."""
    async with httpx.AsyncClient() as http:
        return await http.get(
            f"{url}/socket.io/",
            params={"EIO": "4", "transport": "polling"},
            headers={"X-Forwarded-For": address},
        )


async def _refusal(url: str, address: str) -> Any:
    response = await _handshake(url, address)
    assert response.status_code == 401, response.text
    return response.json()


async def _served(talker: socketio.AsyncClient, listener: socketio.AsyncClient) -> None:
    """``talker`` publishes to a room ``listener`` is in, and ``listener`` gets it."""
    assert await listener.call("join", {"room": "quiet"}) == {"ok": True}
    reply = await talker.call("publish", {"room": "quiet", "event": "said", "data": "hi"})
    assert reply["ok"] is True
    await wait_until(lambda: "hi" in listener.received, 15, "the quiet clients' event")  # type: ignore[attr-defined]


async def _metric(node: GatewayProcess, series: str) -> float:
    """One series of the node's /metrics, by its name and labels."""
    return await _scrape(node.url, series)


async def _scrape(url: str, series: str) -> float:
    """One series of /metrics at ``url``, by its name and labels."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{url}/metrics")).text
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert found is not None, text
    return float(found.group(1))


async def _connected(node: GatewayProcess) -> float:
    return await _metric(node, 'socketio_kafka_connected_sockets{namespace="/"}')


async def _refusals(node: GatewayProcess, limit: str) -> float:
    return await _metric(node, f'socketio_kafka_limit_refusals_total{{limit="{limit}"}}')


async def test_a_full_node_refuses_new_connections_and_serves_its_clients(
    kafka_url: str, channel: str
) -> None:
    async with _node(kafka_url, channel, "--max-connections", "2") as node:
        clients = [await _connect(node.url, f"10.0.0.{i}") for i in (1, 2)]
        assert await _refusal(node.url, "10.0.0.3") == {"message": "too many connections"}
        await _served(*clients)
        assert await _refusals(node, "connections") == 1
        for client in clients:
            await client.disconnect()


async def test_an_address_connecting_too_fast_is_refused_and_others_are_not(
    kafka_url: str, channel: str
) -> None:
    async with _node(kafka_url, channel, "--connect-rate", "1") as node:
        refused = None
        for _ in range(20):  # a burst of 2: refused long before 20 attempts at 1 a second
            response = await _handshake(node.url, "10.0.0.66")
            if response.status_code != 200:
                refused = response
                break
        assert refused is not None
        assert refused.status_code == 401
        assert refused.json() == {"message": "connection rate limited"}
        assert await _refusal(node.url, "10.0.0.66") == {"message": "connection rate limited"}
        talker, listener = [await _connect(node.url, f"10.0.1.{i}") for i in (1, 2)]
        await _served(talker, listener)
        assert await _refusals(node, "connect_rate") >= 2
        assert node.log().count("refused 10.0.0.66") == 1  # once a minute per address
        await talker.disconnect()
        await listener.disconnect()


async def test_websocket_handshakes_past_the_rate_are_refused_once_each(
    kafka_url: str, channel: str
) -> None:
    """Refused by the protocol's gate before the app once the bucket is empty (bare 403,
    as the app's own refusal), each counted once."""
    async with _node(kafka_url, channel, "--connect-rate", "1") as node:
        host, port = node.url.removeprefix("http://").split(":")
        statuses = []
        for _ in range(10):  # a burst of 2: most refused
            up = await upgrade(host, int(port), "127.0.0.9")
            up.writer.transport.abort()
            statuses.append(up.status)
        assert statuses[:2] == [101, 101]
        assert set(statuses) == {101, 403}
        assert await _refusals(node, "connect_rate") == statuses.count(403)
        talker, listener = [await _connect(node.url, f"10.0.6.{i}") for i in (1, 2)]
        await _served(talker, listener)
        for client in (talker, listener):
            await client.disconnect()


async def test_an_address_flooding_handshakes_is_reset_as_it_connects_and_others_are_not(
    kafka_url: str, channel: str
) -> None:
    """Past its rate and 100 refusals within a second, an address's connections are reset
    before a byte is read; another address is served, and the next second the first is
    answered again. Judged on the peer (no proxy trusted): 127.0.0.x addresses."""
    flags = ["--connect-rate", "1"]
    async with gateway_cluster(kafka_url, channel, nodes=1, extra_args=flags) as (node,):
        host, port = node.url.removeprefix("http://").split(":")

        async def attempt(source: str) -> int | str:
            try:
                up = await upgrade(host, int(port), source)
            except (ConnectionError, asyncio.IncompleteReadError):
                return "reset"
            up.writer.transport.abort()
            return up.status

        seen: list[int | str] = []
        async with asyncio.timeout(20):
            while "reset" not in seen:  # 16 at a time: 101 refusals well within a second
                seen += await asyncio.gather(*(attempt("127.0.0.11") for _ in range(16)))
        assert seen.count(101) <= 2  # the burst
        assert seen.count(403) >= 101
        assert await attempt("127.0.0.12") == 101
        assert await _refusals(node, "connect_rate") == seen.count(403) + seen.count("reset")

        async def answered() -> bool:
            return await attempt("127.0.0.11") == 403

        deadline = time.monotonic() + 10
        while not await answered():  # a new second
            assert time.monotonic() < deadline, "never answered again"
            await asyncio.sleep(0.1)


async def test_a_socket_flooding_events_is_rate_limited_and_others_are_not(
    kafka_url: str, channel: str
) -> None:
    async with _node(kafka_url, channel, "--event-rate", "5") as node:
        flooder, talker, listener = [await _connect(node.url, f"10.0.2.{i}") for i in (1, 2, 3)]
        assert await listener.call("join", {"room": "r"}) == {"ok": True}
        replies = await asyncio.gather(
            *(flooder.call("publish", {"room": "r", "event": "said", "data": i}) for i in range(40))
        )
        accepted = [i for i, reply in enumerate(replies) if reply["ok"]]
        refused = [reply for reply in replies if not reply["ok"]]
        assert refused
        assert all(r == {"ok": False, "error": "rate limited"} for r in refused)
        for i in range(40):  # without an ack: dropped, and nothing tells the flooder
            await flooder.emit("publish", {"room": "r", "event": "said", "data": 100 + i})
        # The others are served at once, and the listener got exactly what was accepted.
        reply = await talker.call("publish", {"room": "r", "event": "said", "data": "end"})
        assert reply["ok"] is True
        await wait_until(lambda: "end" in listener.received, 15, "the talker's event")  # type: ignore[attr-defined]
        got: list[Any] = listener.received  # type: ignore[attr-defined]
        assert sorted(d for d in got if isinstance(d, int) and d < 100) == accepted
        assert len([d for d in got if isinstance(d, int) and d >= 100]) < 40
        assert await _refusals(node, "event_rate") > len(refused)
        for client in (flooder, talker, listener):
            await client.disconnect()


async def test_a_socket_that_floods_past_its_refusals_is_disconnected_and_others_are_not(
    kafka_url: str, channel: str
) -> None:
    async with _node(kafka_url, channel, "--event-rate", "5") as node:
        talker, listener = [await _connect(node.url, f"10.0.4.{i}") for i in (2, 3)]
        flooder = socketio.AsyncClient(reconnection=False)  # with a session to keep
        await flooder.connect(
            node.url, transports=["websocket"], headers={"X-Forwarded-For": "10.0.4.1"}
        )
        # Without acks, as a flood goes: 10 accepted (the burst), then more than 100
        # refused within a second (the floor; its rate is 5), which closes its connection.
        for i in range(300):
            if not flooder.connected:
                break
            await flooder.emit("publish", {"room": "r", "event": "said", "data": i})
        await wait_until(lambda: not flooder.connected, 15, "the flooder's disconnect")
        await _served(talker, listener)
        assert "kept sending events far past its rate limit" in node.log()
        assert "Traceback" not in node.log(), node.log()
        assert await _connected(node) == 2  # the flooder's socket is gone
        for client in (talker, listener):
            await client.disconnect()
        await flooder.shutdown()


async def test_a_connection_flooding_connects_is_refused_then_cut_and_others_are_not(
    kafka_url: str, channel: str
) -> None:
    """CONNECTs went past the event rate: one connection sent 20,000 (each a token's check
    and an answer), every one answered, and it was never cut."""
    async with _node(kafka_url, channel, "--event-rate", "5") as node:
        talker, listener = [await _connect(node.url, f"10.0.5.{i}") for i in (2, 3)]
        connects = ['40{"token": "not-a-token"}'] * 2000
        assert await websocket_barrage(node.url, connects, read_s=1.0) is False  # cut
        await _served(talker, listener)
        assert "kept sending CONNECTs far past its rate limit" in node.log()
        assert await _refusals(node, "event_rate") > 100
        for client in (talker, listener):
            await client.disconnect()


async def _ended(reader: asyncio.StreamReader) -> float:
    """When the node ended a connection: its close frame, its EOF or its reset."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while (await read_frame(reader))[0] != 0x8:
            pass
    return time.monotonic()


async def test_a_flooder_that_reads_nothing_is_reset_at_the_cut_and_read_no_further(
    kafka_url: str, channel: str
) -> None:
    """A flooder writes on and answers no close. Closing its WebSocket left the node reading
    and parsing all it wrote until uvicorn's close timeout, 10 s later (170,000 frames a
    second in benchmarks/flood.py); the cut resets its connection instead."""
    async with _node(kafka_url, channel, "--event-rate", "5") as node:
        talker, listener = [await _connect(node.url, f"10.0.5.{i}") for i in (2, 3)]
        host, port = node.url.removeprefix("http://").split(":")
        up = await upgrade(host, int(port), "127.0.0.5")
        assert up.status == 101, up.body
        assert (await read_frame(up.reader))[1].startswith(b"0{")  # Engine.IO open
        up.writer.write(frame("40"))
        assert (await read_frame(up.reader))[1].startswith(b"40{")  # Socket.IO connected
        ended = asyncio.create_task(_ended(up.reader))
        batch = b"".join(
            frame(f'42["publish",{{"room":"r","event":"said","data":{n}}}]') for n in range(100)
        )
        async with asyncio.timeout(30):  # at most 10 s after the cut, even unfixed
            with contextlib.suppress(ConnectionError):
                while True:  # written as fast as the node reads, until it lets go
                    up.writer.write(batch)
                    await up.writer.drain()
        lost = time.monotonic()
        assert lost - await ended < 3, "the node read on after it ended the connection"
        up.writer.transport.abort()
        assert "kept sending events far past its rate limit" in node.log()
        # Nothing of the flooder is read after the reset: the events the node read
        # grow by the talker's one publish alone.
        publishes = 'socketio_kafka_events_in_total{event="publish"}'
        read, refused = await _metric(node, publishes), await _refusals(node, "event_rate")
        await _served(talker, listener)
        assert await _metric(node, publishes) == read + 1
        assert await _refusals(node, "event_rate") == refused
        assert await _connected(node) == 2
        assert "Traceback" not in node.log(), node.log()
        for client in (talker, listener):
            await client.disconnect()


#: Two binary events the payload limit (100,000 bytes) refuses, each frame under it: more
#: attachments announced than it could hold; attachments together over it.
_OVERSIZED = {
    "announced": [frame('459999-["x",{"_placeholder":true,"num":0}]')],
    "together": [
        frame('452-["x",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'),
        frame("a" * 60_000, opcode=0x2),
        frame("b" * 60_000, opcode=0x2),
    ],
}


@pytest.mark.parametrize("oversized", list(_OVERSIZED))
async def test_a_binary_event_over_the_payload_limit_closes_its_connection_at_once(
    kafka_url: str, channel: str, oversized: str
) -> None:
    """The node answers with Engine.IO's CLOSE and closes the WebSocket, also for a client
    that keeps its end open: engineio's disconnect left the connection to its writer's idle
    timeout (45 s), with the client's frames read meanwhile (gateway/guard.py)."""
    async with _node(kafka_url, channel, "--max-payload-bytes", "100000") as node:
        up = await _opened(node)
        try:
            up.writer.write(b"".join(_OVERSIZED[oversized]))
            async with asyncio.timeout(10):
                await _told_to_close(up)
        finally:
            up.writer.transport.abort()
        assert "than the payload limit" in node.log()
        client = await _connect(node.url, "10.0.0.1")
        assert await _connected(node) == 1  # the refused socket is gone from the node
        await client.disconnect()


async def test_a_connection_without_a_namespace_is_closed_at_the_connect_timeout(
    kafka_url: str, channel: str
) -> None:
    """An Engine.IO connection that connects no Socket.IO namespace, over WebSocket or
    polling, or disconnects its last, is closed after ``--connect-timeout`` and counted, as
    Node's socket.io does: python-socketio kept it (and its slot of ``--max-connections``)
    for as long as its client answered the heartbeat. A connected one is served on."""
    async with _node(kafka_url, channel, "--connect-timeout", "1") as node:
        connected, silent, left = await _opened(node), await _opened(node, connect=False), None
        try:
            left = await _opened(node)
            left.writer.write(frame("41"))  # its namespace disconnected, the connection kept
            async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
                query = {"EIO": "4", "transport": "polling"}
                opened = await http.get("/socket.io/", params=query)
                sid = json.loads(opened.text[1:])["sid"]
                assert (await http.get("/socket.io/", params={**query, "sid": sid})).text == "1"
            async with asyncio.timeout(10):
                await _told_to_close(silent)
                await _told_to_close(left)
                # Seconds after its own timeout would have been due, the connected one is
                # served.
                connected.writer.write(frame('421["join",{"room":"z"}]'))
                while not (await read_frame(connected.reader))[1].startswith(b"431"):
                    pass
            assert await _refusals(node, "connect_timeout") == 3
        finally:
            for up in (connected, silent, left):
                if up is not None:
                    up.writer.transport.abort()


async def _opened(node: GatewayProcess, *, connect: bool = True) -> Upgrade:
    """A raw Engine.IO WebSocket to ``node``, open, and with ``connect`` its Socket.IO
    namespace connected."""
    up = await upgrade("127.0.0.1", node.port, "127.0.0.1")
    assert up.status == 101, up.body
    assert (await read_frame(up.reader))[1].startswith(b"0{")  # Engine.IO open
    if connect:
        up.writer.write(frame("40"))
        assert (await read_frame(up.reader))[1].startswith(b"40{")  # Socket.IO connected
    return up


async def _told_to_close(up: Upgrade) -> None:
    """Engine.IO's CLOSE, past any packets before it, then the WebSocket's close."""
    while await read_frame(up.reader) != (0x1, b"1"):
        pass
    assert (await read_frame(up.reader))[0] == 0x8


#: Two ways to leave 60,000 bytes of a message unfinished on a connection: a WebSocket
#: message but for its last byte; the first of a binary event's two attachments.
_UNFINISHED = {
    "frame": [frame("4" * 60_000)[:-1]],
    "attachments": [
        frame("40"),
        frame('452-["publish",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'),
        frame("x" * 60_000, opcode=0x2),
    ],
}


@pytest.mark.parametrize("unfinished", list(_UNFINISHED))
async def test_unfinished_messages_past_the_nodes_bound_close_the_oldest(
    kafka_url: str, channel: str, unfinished: str
) -> None:
    """Three connections each leave 60 kB of a message unfinished: past
    ``--max-node-inbound-bytes`` the first is closed (a WebSocket message with 1013, try
    again later; a packet's attachments reset, as a flooder is) and counted, the node shows
    what the others hold, and Socket.IO clients are served (gateway/inbound.py)."""
    flags = ("--max-payload-bytes", "100000", "--max-node-inbound-bytes", "150000")
    async with _node(kafka_url, channel, *flags) as node:
        ups = [await upgrade("127.0.0.1", node.port, "127.0.0.1") for _ in range(3)]
        try:
            for up in ups:
                assert up.status == 101
                up.writer.write(b"".join(_UNFINISHED[unfinished]))
                await up.writer.drain()
            assert await close_code(ups[0].reader) == (1013 if unfinished == "frame" else None)
            clients = [await _connect(node.url, f"10.0.0.{i}") for i in (1, 2)]
            await _served(*clients)
            for client in clients:
                await client.disconnect()
            assert await _refusals(node, "inbound_bytes") == 1
            held = await _metric(node, "socketio_kafka_inbound_bytes")
            if unfinished == "frame":  # past the bound at the third's first 30,003 bytes read
                assert 90_000 < held <= 2 * 59_999
            else:  # each attachment whole, with its overhead (gateway/guard.py)
                assert held == 2 * (60_000 + ATTACHMENT_OVERHEAD)
                # The second's packet gets its last attachment: whole, it holds nothing.
                # A join's ack after it says the node has read both.
                ups[1].writer.write(frame("y", opcode=0x2) + frame('421["join",{"room":"z"}]'))
                async with asyncio.timeout(10):
                    while not (await read_frame(ups[1].reader))[1].startswith(b"431"):
                        pass
                held = await _metric(node, "socketio_kafka_inbound_bytes")
                assert held == 60_000 + ATTACHMENT_OVERHEAD
        finally:
            for up in ups:
                up.writer.transport.abort()


async def test_a_socket_in_too_many_rooms_is_refused_another_join(
    kafka_url: str, channel: str
) -> None:
    async with _node(kafka_url, channel, "--max-rooms-per-socket", "2") as node:
        joiner, talker, listener = [await _connect(node.url, f"10.0.3.{i}") for i in (1, 2, 3)]
        for room in ("a", "b"):
            assert await joiner.call("join", {"room": room}) == {"ok": True}
        assert await joiner.call("join", {"room": "c"}) == {"ok": False, "error": "too many rooms"}
        assert await joiner.call("join", {"room": "a"}) == {"ok": True}  # already in it
        assert await joiner.call("leave", {"room": "a"}) == {"ok": True}
        assert await joiner.call("join", {"room": "c"}) == {"ok": True}
        await _served(talker, listener)
        assert await _refusals(node, "rooms") == 1
        for client in (joiner, talker, listener):
            await client.disconnect()
