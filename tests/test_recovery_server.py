"""RecoveringAsyncServer in an app of one's own: connect handlers, session data, options."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from socketio_kafka.adapter import (
    AsyncKafkaManager,
    ConfigError,
    KafkaOptions,
    RecoveringAsyncServer,
    RecoveryOptions,
    codec,
    recovery,
)
from socketio_kafka.adapter.routing import Audience, partition_of
from socketio_kafka.adapter.sessions import NODE_PREFIX, Session, encode_session

from .support.recovering import RecoveringRecorder
from .support.server import run_server
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


class App:
    """A small app: auth in its connect handler, session data, a room."""

    def __init__(
        self,
        kafka_url: str,
        channel: str,
        skip_middlewares: bool,
        options: KafkaOptions | None = None,
        max_session_bytes: int = RecoveryOptions().max_session_bytes,
    ) -> None:
        self.manager = AsyncKafkaManager(kafka_url, channel=channel, options=options)
        self.sio = RecoveringAsyncServer(
            client_manager=self.manager,
            async_mode="asgi",
            connection_state_recovery={
                "skip_middlewares": skip_middlewares,
                "max_session_bytes": max_session_bytes,
            },
        )
        self.connects: list[tuple[str, Any]] = []
        self.sio.on("connect", self.on_connect)
        self.sio.on("whoami", self.whoami)
        self.asgi = socketio.ASGIApp(self.sio)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> bool:
        self.connects.append((sid, auth))
        if auth.get("token") == "revoked":
            return False
        await self.sio.save_session(sid, {"user": auth["token"]})
        await self.sio.enter_room(sid, "room")
        return True

    async def whoami(self, sid: str) -> dict[str, Any]:
        session = await self.sio.get_session(sid)
        return {"user": session.get("user"), "recovered": self.sio.is_recovered(sid)}


@pytest.fixture
async def app(kafka_url: str, channel: str, request: pytest.FixtureRequest) -> AsyncIterator[App]:
    app = App(kafka_url, channel, skip_middlewares=request.param)
    async with app.manager:
        yield app


@pytest.fixture
async def other(kafka_url: str, channel: str) -> AsyncIterator[App]:
    """Another node of the same cluster, its manager started."""
    other = App(kafka_url, channel, skip_middlewares=True)
    async with other.manager:
        yield other


def _slow_session_writes(app: App) -> None:
    """Each write of ``app``'s session records waits half a second first, as Kafka's
    answer does through a leader's election."""
    store = app.manager.store
    write = store.write

    async def slow_write(records: Any) -> None:
        await asyncio.sleep(0.5)
        await write(records)

    store.write = slow_write  # type: ignore[method-assign]


async def _away_and_back(app: App, url: str, client: RecoveringRecorder) -> None:
    # Recoverable once its session is in Kafka (what an ack waits for): a client dropped
    # a few ms after its CONNECT reply could come back before it is.
    assert await app.sio.session_saved(client.sid)
    await client.drop_transport()
    await app.sio.emit("news", {"n": 1}, to="room")
    await client.client.connect(url, transports=["websocket"], auth=client.client.connection_auth)


@pytest.mark.parametrize("app", [True], indirect=True)
async def test_a_recovered_socket_skips_the_connect_handler_and_keeps_its_data(app: App) -> None:
    async with run_server(app.asgi) as url:
        client = RecoveringRecorder()
        await client.client.connect(url, transports=["websocket"], auth={"token": "alice"})
        try:
            sid = client.sid
            await _away_and_back(app, url, client)
            assert client.client.recovered["/"] is True
            assert await client.wait_count("news", 1) == [{"n": 1}]
            assert await client.client.call("whoami") == {"user": "alice", "recovered": True}
            assert [s for s, _ in app.connects] == [sid]
        finally:
            await client.close()


@pytest.mark.parametrize("app", [True], indirect=True)
async def test_a_client_back_before_its_session_is_in_kafka_recovers_it(app: App) -> None:
    """Dropped right after its CONNECT reply and back at once, while its session's records
    (connected, in its room; then left) are still on their way to Kafka, which takes half a
    second to answer each (as during a leader's election): the claim waits for this node's
    writes of the session, and recovers it. (It got a fresh session, "unknown session",
    and lost what it missed.)"""
    store = app.manager.store
    _slow_session_writes(app)
    async with run_server(app.asgi) as url:
        client = RecoveringRecorder()
        await client.client.connect(url, transports=["websocket"], auth={"token": "carol"})
        try:
            pid = client.client.pids["/"]
            await client.drop_transport()
            assert store.table.sessions.get(pid) is None, "already in Kafka"
            await app.sio.emit("news", {"n": 1}, to="room")
            auth = client.client.connection_auth
            await client.client.connect(url, transports=["websocket"], auth=auth)
            assert client.client.recovered["/"] is True
            assert await client.wait_count("news", 1) == [{"n": 1}]
            assert await client.client.call("whoami") == {"user": "carol", "recovered": True}
        finally:
            await client.close()


@pytest.mark.parametrize("app", [True], indirect=True)
async def test_a_client_back_on_another_node_before_its_session_is_in_kafka_recovers_it(
    app: App, other: App
) -> None:
    """Dropped right after its CONNECT reply and back at once on another node, while its
    node takes half a second to write each of its session's records: the other node knows
    the pid was minted a moment ago, waits for its records, and recovers the session.
    (It got a fresh session, "unknown session", and lost what it missed.)"""
    _slow_session_writes(app)
    client = RecoveringRecorder()
    try:
        async with run_server(app.asgi) as url, run_server(other.asgi) as other_url:
            await client.client.connect(url, transports=["websocket"], auth={"token": "erin"})
            sid, pid = client.sid, client.client.pids["/"]
            await client.drop_transport()
            assert other.manager.store.table.sessions.get(pid) is None, "already in Kafka"
            await app.sio.emit("news", {"n": 1}, to="room")
            auth = client.client.connection_auth
            await client.client.connect(other_url, transports=["websocket"], auth=auth)
            assert (client.client.recovered["/"], client.sid) == (True, sid)
            assert await client.wait_count("news", 1) == [{"n": 1}]
    finally:
        await client.close()


@pytest.mark.parametrize("app", [True], indirect=True)
async def test_a_pid_whose_session_ended_on_purpose_gets_a_fresh_session_at_once(
    app: App, other: App
) -> None:
    """A client that left on purpose and connects again with its old pid, at once and on
    another node (as socket.io-client does after ``disconnect()``, ``connect()``), is not
    kept waiting for a session that will not come: the node read its end. (python-socketio's
    client gives a connection up after 1 s without a CONNECT reply, by default; the node
    would have waited up to 3 s.)"""
    client = RecoveringRecorder()
    try:
        async with run_server(app.asgi) as url, run_server(other.asgi) as other_url:
            await client.client.connect(url, transports=["websocket"], auth={"token": "finn"})
            sid, pid = client.sid, client.client.pids["/"]
            await client.client.disconnect()
            table = other.manager.store.table
            await wait_until(lambda: table.ended_lately(pid), 10, "the end read elsewhere")
            client.client.pids["/"] = pid
            await client.client.connect(
                other_url, transports=["websocket"], auth={"token": "finn"}, wait_timeout=1
            )
            assert (client.client.recovered["/"], client.sid != sid) == (False, True)
            assert other.sio.recoveries["fresh", "unknown_session"] == 1
    finally:
        await client.close()


def test_a_pid_tells_when_it_was_minted_and_a_claim_waits_for_young_ones_alone() -> None:
    pid = recovery.new_pid()
    assert re.fullmatch(r"[0-9a-f]{32}", pid)
    assert 2.9 < recovery._arriving(pid) <= 3.0  # minted now: all of the wait
    now_ms = time.time_ns() // 1_000_000
    old, ahead, far = (f"{now_ms + ms:012x}{pid[12:]}" for ms in (-10_000, 1_000, 60_000))
    assert recovery._arriving(old) == 0
    assert recovery._arriving(ahead) == 3.0  # another node's clock, a second ahead
    # Not made so, or a forged time far off: no wait.
    for other in (far, "f" * 32, "z" * 32, pid[:31], "", "forged"):
        assert recovery._arriving(other) == 0


@pytest.mark.parametrize("app", [False], indirect=True)
async def test_without_skip_middlewares_the_connect_handler_decides(app: App) -> None:
    async with run_server(app.asgi) as url:
        client = RecoveringRecorder()
        await client.client.connect(url, transports=["websocket"], auth={"token": "bob"})
        try:
            sid = client.sid
            await _away_and_back(app, url, client)
            assert client.client.recovered["/"] is True
            assert app.connects[-1] == (sid, {"token": "bob"})  # pid/offset not in the auth
            assert await client.wait_count("news", 1) == [{"n": 1}]

            await client.drop_transport()
            client.client.connection_auth = {"token": "revoked"}
            with pytest.raises(socketio.exceptions.ConnectionError):
                await client.client.connect(
                    url, transports=["websocket"], auth={"token": "revoked"}
                )
            assert app.connects[-1] == (sid, {"token": "revoked"})
        finally:
            await client.close()


@pytest.mark.parametrize("app", [False], indirect=True)
async def test_without_skip_middlewares_the_connect_handler_sees_the_recovered_data(
    app: App,
) -> None:
    """The handler of a recovered socket ran before its data was restored: it saw {}, and
    what it saved was then overwritten with the data of the session record."""
    seen: list[dict[str, Any]] = []

    async def on_connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        session = await app.sio.get_session(sid)
        seen.append(dict(session))
        await app.sio.save_session(sid, {"user": auth["token"], "visits": len(seen)})

    async def mine(sid: str) -> dict[str, Any]:
        return dict(await app.sio.get_session(sid))

    app.sio.on("connect", on_connect)
    app.sio.on("mine", mine)
    async with run_server(app.asgi) as url:
        client = RecoveringRecorder()
        await client.client.connect(url, transports=["websocket"], auth={"token": "bob"})
        try:
            await _away_and_back(app, url, client)
            assert client.client.recovered["/"] is True
            assert seen == [{}, {"user": "bob", "visits": 1}]
            assert await client.client.call("mine") == {"user": "bob", "visits": 2}
        finally:
            await client.close()


@pytest.mark.parametrize("app", [True], indirect=True)
async def test_a_claim_on_a_node_still_starting_waits_for_its_sessions(
    app: App, kafka_url: str, channel: str
) -> None:
    # The second node's manager starts on its first connection, which is the claim
    # itself: judged before the sessions topic is read, it would get a fresh session.
    starting = App(kafka_url, channel, skip_middlewares=True)
    client = RecoveringRecorder()
    try:
        async with run_server(app.asgi) as url, run_server(starting.asgi) as other_url:
            await client.client.connect(url, transports=["websocket"], auth={"token": "carol"})
            sid = client.sid
            await client.drop_transport()
            await app.sio.emit("news", {"n": 1}, to="room")
            assert not starting.manager.ready
            await client.client.connect(
                other_url, transports=["websocket"], auth=client.client.connection_auth
            )
            assert (client.client.recovered["/"], client.sid) == (True, sid)
            assert await client.wait_count("news", 1) == [{"n": 1}]
    finally:
        await client.close()
        await starting.manager.stop()


@pytest.mark.parametrize("app", [True], indirect=True)
async def test_a_claim_is_judged_on_the_sessions_topic_as_it_is_now(
    app: App, kafka_url: str, channel: str
) -> None:
    # The other node reads Kafka once a second (the most allowed): it has seen the
    # session left, not restored.
    lagging = App(kafka_url, channel, True, KafkaOptions(fetch_interval_ms=1000))
    client, thief = RecoveringRecorder(), RecoveringRecorder()
    try:
        async with run_server(app.asgi) as url, run_server(lagging.asgi) as other_url:
            await lagging.manager.start()
            await client.client.connect(url, transports=["websocket"], auth={"token": "dave"})
            sid, pid = client.sid, client.client.pids["/"]
            await client.drop_transport()
            await wait_until(
                lambda: (
                    (s := lagging.manager.store.table.sessions.get(pid)) is not None
                    and s.disconnected_at is not None
                ),
                10,
                "the other node seeing the session left",
            )
            await client.client.connect(url, transports=["websocket"], auth={"token": "dave"})
            assert (client.client.recovered["/"], client.sid) == (True, sid)
            # The same claim on the other node, while the session is live again: refused.
            thief.client.pids["/"] = pid
            await thief.client.connect(other_url, transports=["websocket"], auth={"token": "eve"})
            assert (thief.client.recovered["/"], thief.sid != sid) == (False, True)
    finally:
        await thief.close()
        await client.close()
        await lagging.manager.stop()


@pytest.mark.parametrize("existing", [None, 3])
async def test_the_sessions_topic_is_read_with_the_partitions_it_has(
    kafka_bootstrap: str, kafka_url: str, channel: str, existing: int | None
) -> None:
    """A new sessions topic gets ``sessions_partitions`` (1); one that exists (a channel
    made when it had as many as the events topic) is read as it is: sessions left on one
    node are restored on the other either way."""
    first, second = App(kafka_url, channel, True), App(kafka_url, channel, True)
    clients = [RecoveringRecorder() for _ in range(6)]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        if existing is not None:
            configs = {"cleanup.policy": "compact"}
            await admin.create_topics(
                [NewTopic(f"{channel}.sessions", existing, 1, topic_configs=configs)]
            )
        async with (
            first.manager,
            second.manager,
            run_server(first.asgi) as url,
            run_server(second.asgi) as other_url,
        ):
            for n, client in enumerate(clients):
                auth = {"token": f"user-{n}"}
                await client.client.connect(url, transports=["websocket"], auth=auth)
            sids = [client.sid for client in clients]
            for client in clients:
                assert await first.sio.session_saved(client.sid)
                await client.drop_transport()
            await first.sio.emit("news", {"n": 1}, to="room")
            for client in clients:
                await client.client.connect(
                    other_url, transports=["websocket"], auth=client.client.connection_auth
                )
            assert [(c.client.recovered["/"], c.sid) for c in clients] == [
                (True, sid) for sid in sids
            ]
            for client in clients:
                assert await client.wait_count("news", 1) == [{"n": 1}]
        (topic,) = await admin.describe_topics([f"{channel}.sessions"])
    finally:
        for client in clients:
            await client.close()
        await admin.close()
    assert len(topic["partitions"]) == (existing or KafkaOptions().sessions_partitions)
    assert first.manager.store.partitions == len(topic["partitions"])


def test_retention_shorter_than_the_window_is_refused(kafka_url: str) -> None:
    manager = AsyncKafkaManager(kafka_url, options=KafkaOptions(retention_ms=60_000))
    with pytest.raises(ConfigError, match="shorter than the recovery window"):
        RecoveringAsyncServer(
            client_manager=manager, connection_state_recovery={"max_disconnection_duration": 120}
        )


def test_recovery_needs_the_kafka_manager() -> None:
    with pytest.raises(ConfigError):
        RecoveringAsyncServer(client_manager=socketio.AsyncManager(), connection_state_recovery={})


class AuthProbe:
    """A connect handler that keeps what it was handed as ``auth``, on any server."""

    def __init__(self, sio: socketio.AsyncServer) -> None:
        self.sio = sio
        self.auths: list[Any] = []
        sio.on("connect", self.on_connect)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        self.auths.append(auth)
        await self.sio.enter_room(sid, "room")  # for the recovered socket to miss an event

    async def handed(self, url: str, auth: Any) -> Any:
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(url, transports=["websocket"], auth=auth)
        await client.disconnect()
        return self.auths[-1]


async def test_the_connect_handler_gets_the_auth_python_socketio_hands_it(
    kafka_url: str, channel: str
) -> None:
    # python-socketio hands the handler None for an empty auth, `{}` included (its client
    # sends `{}` when given none): the recovery fields taken off, a claim is no different.
    auths = [None, {}, {"token": "t"}]
    plain = AuthProbe(socketio.AsyncServer(async_mode="asgi"))
    manager = AsyncKafkaManager(kafka_url, channel=channel)
    recovering = AuthProbe(
        RecoveringAsyncServer(
            client_manager=manager,
            async_mode="asgi",
            connection_state_recovery={"skip_middlewares": False},
        )
    )
    client = RecoveringRecorder()
    async with manager, run_server(socketio.ASGIApp(plain.sio)) as plain_url:
        expected = [await plain.handed(plain_url, auth) for auth in auths]
        async with run_server(socketio.ASGIApp(recovering.sio)) as url:
            assert [await recovering.handed(url, auth) for auth in auths] == expected
            try:
                await client.client.connect(url, transports=["websocket"], auth={})
                await client.drop_transport()
                await recovering.sio.emit("news", {"n": 1}, to="room")
                await client.client.connect(url, transports=["websocket"], auth={})
                assert client.client.recovered["/"] is True
                assert recovering.auths[-1] == expected[1] is None
            finally:
                await client.close()


async def test_a_legacy_connect_handler_runs_on_a_recovered_socket(
    kafka_url: str, channel: str
) -> None:
    manager = AsyncKafkaManager(kafka_url, channel=channel)
    sio = RecoveringAsyncServer(
        client_manager=manager,
        async_mode="asgi",
        connection_state_recovery={"skip_middlewares": False},
    )
    connects: list[str] = []

    async def on_connect(sid: str, environ: dict[str, Any]) -> None:  # no auth argument
        connects.append(sid)
        await sio.enter_room(sid, "room")

    sio.on("connect", on_connect)
    client = RecoveringRecorder()
    async with manager, run_server(socketio.ASGIApp(sio)) as url:
        try:
            await client.connect(url)
            await client.drop_transport()
            await sio.emit("news", {"n": 1}, to="room")
            await client.client.connect(url, transports=["websocket"])
            assert client.client.recovered["/"] is True
            assert connects == [client.sid, client.sid]
            assert await client.wait_count("news", 1) == [{"n": 1}]
        finally:
            await client.close()


def test_a_negative_save_wait_or_session_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="save_wait"):
        RecoveryOptions(save_wait=-1)
    with pytest.raises(ConfigError, match="max_session_bytes"):
        RecoveryOptions(max_session_bytes=-1)


async def test_a_session_too_large_to_keep_loses_its_data_or_ends_and_no_other_waits(
    kafka_url: str, channel: str
) -> None:
    """A session record Kafka would refuse was once retried forever, the records written
    with it never written: data too large is dropped (the session recovers without it);
    rooms too many for a record end the session (its client gets a fresh one)."""
    limit = 16 * 1024
    over = limit + 128 * 1024  # past what Kafka takes: a batch's allowance too
    app = App(
        kafka_url,
        channel,
        skip_middlewares=True,
        options=KafkaOptions(max_record_bytes=limit),
        max_session_bytes=2 * over,
    )

    async def hoard(sid: str) -> None:
        await app.sio.save_session(sid, {"user": "x" * over})

    async def crowd(sid: str) -> None:
        for n in range(over // 20):
            await app.sio.enter_room(sid, f"crowded-room-{n:06}")

    app.sio.on("hoard", hoard)
    app.sio.on("crowd", crowd)
    async with app.manager, run_server(app.asgi) as url:
        alice, bob, carol = (RecoveringRecorder({"token": name}) for name in ("a", "b", "c"))
        try:
            for client in (alice, bob, carol):
                await client.connect(url)
            bob_sid = bob.sid
            await asyncio.gather(alice.client.call("hoard"), bob.client.call("crowd"))
            assert all([await app.sio.session_saved(c.sid) for c in (alice, bob, carol)])
            assert app.sio.unsaved_sessions == 0
            for client in (alice, bob, carol):
                await client.drop_transport()
            await app.sio.emit("news", {"n": 1}, to="room")
            for client in (alice, bob, carol):
                await client.connect(url)
            assert alice.client.recovered["/"] is True
            assert await alice.wait_count("news", 1) == [{"n": 1}]
            assert await alice.client.call("whoami") == {"user": None, "recovered": True}
            assert await carol.wait_count("news", 1) == [{"n": 1}]
            assert await carol.client.call("whoami") == {"user": "c", "recovered": True}
            assert bob.client.recovered["/"] is False
            assert bob.sid != bob_sid
            assert app.manager.stats.session_data_dropped >= 1
            assert app.manager.stats.sessions_too_large >= 1
        finally:
            for client in (alice, bob, carol):
                await client.close()


@pytest.mark.parametrize(
    ("data", "dropped"), [(float("nan"), False), (float("inf"), False), ("\ud800", True)]
)
async def test_session_data_json_cannot_carry_does_not_stop_the_session_recovering(
    kafka_url: str, channel: str, data: Any, dropped: bool
) -> None:
    """NaN, Infinity or a lone surrogate in a socket's data: its session records were
    written, then skipped by every node, and the client was refused recovery. NaN and
    Infinity are kept as null, as JavaScript writes them; the surrogate's data is dropped."""
    app = App(kafka_url, channel, skip_middlewares=True)

    async def keep(sid: str) -> None:
        await app.sio.save_session(sid, {"user": data})

    app.sio.on("keep", keep)
    async with app.manager, run_server(app.asgi) as url:
        client = RecoveringRecorder({"token": "a"})
        try:
            await client.connect(url)
            await client.client.call("keep")
            assert await app.sio.session_saved(client.sid)
            await client.drop_transport()
            await app.sio.emit("news", {"n": 1}, to="room")
            await client.connect(url)
            assert client.client.recovered["/"] is True
            assert await client.wait_count("news", 1) == [{"n": 1}]
            assert await client.client.call("whoami") == {"user": None, "recovered": True}
            assert (app.manager.stats.session_data_dropped > 0) is dropped
            assert app.manager.stats.session_records_skipped == 0
        finally:
            await client.close()


async def test_a_replay_reads_only_the_partitions_its_rooms_were_written_to(
    kafka_url: str, channel: str
) -> None:
    """The live consumer saw where each room was written: a replay skips the partitions of
    its sid and its namespace's broadcasts when nothing went there, and reads its room's
    only up to its last event; what does go to its sid or to everyone is still replayed."""
    partitions = 6
    # No history: the replay reads Kafka, which is what is counted.
    options = KafkaOptions(partitions=6, replay_history_bytes=0)
    manager = AsyncKafkaManager(kafka_url, channel=channel, options=options)
    # Ten records a fetch: what a replay reads past its end is less than one fetch.
    sio = RecoveringAsyncServer(
        client_manager=manager, async_mode="asgi", connection_state_recovery={"replay_batch": 10}
    )

    @sio.on("join")  # type: ignore[misc]
    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    def partition(room: str | None) -> int:
        key = codec.record_key({"method": "emit", "namespace": "/", "room": room})
        return partition_of(key, partitions)

    client = RecoveringRecorder()
    async with manager, run_server(socketio.ASGIApp(sio)) as url:
        try:
            await client.connect(url)
            sid = client.sid
            assert await client.client.call("join", "mine") is True
            await client.drop_transport()
            others = [f"other-{n}" for n in range(60)]
            for n in range(10):
                await asyncio.gather(*(sio.emit("news", n, to=room) for room in others))
                await sio.emit("own", n, to="mine")
            for room in others * 2:  # after its last event: not read
                await sio.emit("news", 0, to=room)
            read_before = manager.stats.replay_records_read
            await client.client.connect(url, transports=["websocket"])
            assert (client.client.recovered["/"], client.sid) == (True, sid)
            assert await client.wait_count("own", 10) == list(range(10))

            others_beside = sum(partition(room) == partition("mine") for room in others)
            read = manager.stats.replay_records_read - read_before
            assert 10 * (others_beside + 1) <= read < 10 * (others_beside + 1) + 10
            audience = Audience.of("/", sid, ["mine"]).partitions(partitions)
            assert manager.stats.replay_partitions_skipped == len(audience) - 1

            await client.drop_transport()
            await sio.emit("to-me", 1, to=sid)
            await sio.emit("to-all", 2)
            await client.client.connect(url, transports=["websocket"])
            assert client.client.recovered["/"] is True
            assert await client.wait_count("to-me", 1) == [1]
            assert await client.wait_count("to-all", 1) == [2]
        finally:
            await client.close()


@pytest.mark.parametrize("history", [True, False])
async def test_a_short_drop_is_replayed_from_the_nodes_history_without_asking_kafka(
    kafka_url: str, channel: str, monkeypatch: pytest.MonkeyPatch, history: bool
) -> None:
    options = KafkaOptions(replay_history_bytes=KafkaOptions().replay_history_bytes * history)
    app = App(kafka_url, channel, skip_middlewares=True, options=options)
    asked: list[object] = []
    bounds = app.manager.bounds

    async def counted() -> object:
        asked.append(None)
        return await bounds()

    async with app.manager, run_server(app.asgi) as url:
        monkeypatch.setattr(app.manager, "bounds", counted)
        client = RecoveringRecorder()
        await client.client.connect(url, transports=["websocket"], auth={"token": "alice"})
        try:
            read, reused = (
                app.manager.stats.replay_records_read,
                app.manager.stats.replay_records_reused,
            )
            await _away_and_back(app, url, client)
            assert client.client.recovered["/"] is True
            assert await client.wait_count("news", 1) == [{"n": 1}]
            stats = app.manager.stats
            if history:  # its record from memory; its start checked against what it holds
                assert (stats.replay_records_read - read, stats.replay_records_reused - reused) == (
                    0,
                    1,
                )
                assert asked == []
            else:  # Kafka's bounds, then its record read back
                assert stats.replay_records_read - read >= 1
                assert len(asked) == 1
        finally:
            await client.close()


async def test_a_node_forgets_the_sockets_that_declined_recovery_once_they_leave(
    kafka_url: str, channel: str
) -> None:
    """A socket without a session (recovery declined) is marked so that its events carry
    no offset; leaving by itself, it kept its mark: one entry for each such connection,
    for the node's life."""
    manager = AsyncKafkaManager(kafka_url, channel=channel)
    sio = RecoveringAsyncServer(
        client_manager=manager, async_mode="asgi", connection_state_recovery={}
    )
    leaving, dropping = (RecoveringRecorder({"recovery": False}) for _ in range(2))
    async with manager, run_server(socketio.ASGIApp(sio)) as url:
        try:
            for client in (leaving, dropping):
                await client.connect(url)
            sids = {leaving.sid, dropping.sid}
            assert manager.plain_sids == sids
            await leaving.client.disconnect()
            await dropping.drop_transport()
            await wait_until(
                lambda: not any(manager.is_connected(sid, "/") for sid in sids),
                10,
                "both sockets gone",
            )
            assert manager.plain_sids == set()
        finally:
            for client in (leaving, dropping):
                await client.close()


async def test_a_node_gone_for_good_is_forgotten_once_its_sessions_have_ended(
    kafka_bootstrap: str, kafka_url: str, channel: str
) -> None:
    """Every start of a node is a node of its own: the sessions topic kept a heartbeat per
    start for good, and every node held them all. A node gone past the window loses its
    heartbeat, but only after its sessions: a session whose node was never heard of
    counts as alive, and would never expire."""
    manager = AsyncKafkaManager(kafka_url, channel=channel)
    manager.enable_recovery(1)
    topic = f"{channel}.sessions"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    async with manager:
        await producer.start()
        try:
            hour_ago = int((time.time() - 3600) * 1000)
            orphan = Session("pid-o", "sid-o", "/", ("r",), None, (0,) * 6, manager.epoch, "owner")
            for key, value in [
                (NODE_PREFIX + b"idle", b"{}"),
                (NODE_PREFIX + b"owner", b"{}"),
                (b"pid-o", encode_session(orphan)),
            ]:
                await producer.send_and_wait(topic, value, key=key, timestamp_ms=hour_ago)
        finally:
            await producer.stop()
        heartbeats = manager.store.table.heartbeats
        await wait_until(lambda: "owner" in heartbeats, 10, "the records read")
        await wait_until(lambda: heartbeats.keys() == {manager.host_id}, 30, "both forgotten")
        assert "pid-o" not in manager.store.table.sessions
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        records = [r for rs in (await consumer.getmany(timeout_ms=5000)).values() for r in rs]
    finally:
        await consumer.stop()
    tombstones = [r.key for r in records if r.value is None]
    assert set(tombstones) == {b"pid-o", NODE_PREFIX + b"idle", NODE_PREFIX + b"owner"}
    assert tombstones.index(b"pid-o") < tombstones.index(NODE_PREFIX + b"owner")
