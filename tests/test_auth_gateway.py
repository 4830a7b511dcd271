"""Identities on real gateway processes and Kafka, with real python-socketio and JS clients:
refusals, room permissions, refresh and expiry, and recovery kept to its own subject."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from socketio_kafka.adapter import AsyncRecoveringClient
from socketio_kafka.gateway.app import create_app
from socketio_kafka.gateway.settings import Settings

from .support import authorize
from .support.clients import Recorder
from .support.cluster import GatewayProcess, gateway_cluster
from .support.jsclient import JsClient
from .support.rawclient import engineio_url, websocket_barrage
from .support.recovering import (
    RecoveringRecorder,
    claimed_by_a_connection_that_goes_while_judged,
    first_claim_held,
)
from .support.server import run_server
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

SECRET = "gateway-test-secret-" + "y" * 44  # 64 bytes
AUD, ISS = "chat", "auth.test"
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def mint(
    sub: str | None = "alice",
    ttl: float = 300,
    key: Any = SECRET,
    alg: str = "HS256",
    **claims: Any,
) -> str:
    payload = {"sub": sub, "aud": AUD, "iss": ISS, "exp": time.time() + ttl} | claims
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, alg)


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("jwt")
    (folder / "secret").write_text(SECRET + "\n")
    (folder / "ec.pem").write_bytes(
        EC_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return folder


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(kafka_bootstrap: str, key_files: Path) -> AsyncIterator[GatewayProcess]:
    """HS256 from a secret file, with audience and issuer checks."""
    flags = ["--jwt-secret-file", str(key_files / "secret"), "--jwt-audience", AUD]
    flags += ["--jwt-issuer", ISS]
    async with gateway_cluster(
        f"kafka://{kafka_bootstrap}", f"auth-{uuid.uuid4().hex[:8]}", 1, flags
    ) as [gateway]:
        yield gateway


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hooked(kafka_bootstrap: str, key_files: Path) -> AsyncIterator[GatewayProcess]:
    """ES256 from a public key; rooms decided by the app's hook, not the claims."""
    flags = ["--jwt-public-key", str(key_files / "ec.pem")]
    flags += ["--authorize", "tests.support.authorize:team_rooms"]
    env = f"kafka://{kafka_bootstrap}"
    async with gateway_cluster(env, f"hook-{uuid.uuid4().hex[:8]}", 1, flags) as [gateway]:
        yield gateway


async def client(url: str, token: str | None, **kwargs: Any) -> Recorder:
    recorder = Recorder(url)
    await recorder.client.connect(
        url, transports=["websocket"], auth={"recovery": False, "token": token}, **kwargs
    )
    return recorder


async def refusal(url: str, auth: Any = None, headers: dict[str, str] | None = None) -> Any:
    """The connect error a client gets."""
    sio = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    sio.on("connect_error", errors.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(url, transports=["websocket"], auth=auth, headers=headers or {})
    await sio.shutdown()
    return errors[0]


async def recovering(url: str, token: str) -> AsyncRecoveringClient:
    sio = AsyncRecoveringClient(reconnection=False)
    sio.on("*", lambda *_: None)
    await sio.connect(url, transports=["websocket"], auth={"token": token})
    return sio


def said(received: list[tuple[str, Any]]) -> list[Any]:
    return [data for event, data in received if event == "said"]


async def metrics(url: str) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{url}/metrics", timeout=5)).text


async def test_each_refusal_is_a_connect_error_that_says_why(node: GatewayProcess) -> None:
    cases: dict[str, Any] = {
        "no token": {},
        "malformed token": {"token": "not-a-token"},
        "bad signature": {"token": mint(key="other-" + SECRET)},
        "algorithm not allowed": {"token": mint(alg="HS512")},
        "token expired": {"token": mint(ttl=-30)},
        "token not yet valid": {"token": mint(nbf=time.time() + 60)},
        "wrong audience": {"token": mint(aud="billing")},
        "wrong issuer": {"token": mint(iss="evil.test")},
        "invalid claims": {"token": mint(sub=None)},
    }
    for message, auth in cases.items():
        assert await refusal(node.url, auth) == {"message": message}
    # A second refusal for the same reason from the same address: counted, not logged.
    expired = {"Authorization": f"Bearer {mint(ttl=-30)}"}
    assert await refusal(node.url, headers=expired) == {"message": "token expired"}
    text = await metrics(node.url)
    assert 'socketio_kafka_connect_refusals_total{reason="token_expired"} 2.0' in text
    assert 'socketio_kafka_connect_refusals_total{reason="no_token"} 1.0' in text
    assert node.log().count("refused a connection from 127.0.0.1: token expired") == 1
    assert "Traceback" not in node.log()
    # The Bearer header, for clients that can set one.
    bearer = Recorder(node.url)
    await bearer.client.connect(
        node.url,
        transports=["websocket"],
        auth={"recovery": False},
        headers={"Authorization": f"Bearer {mint()}"},
    )
    assert await bearer.ask("join", {"room": "user:alice"}) == {"ok": True}
    await bearer.close()


async def test_a_connection_flooding_connects_with_bad_tokens_is_cut(node: GatewayProcess) -> None:
    """A CONNECT with a bad token was refused before the event rate counted it: one
    connection's 3,000 were each checked (a signature's cost) and answered, none refused
    for the rate, and the connection was never cut. The rate comes first now."""
    assert await websocket_barrage(node.url, ['40{"token": "a.b.c"}'] * 2000, read_s=1.0) is False
    assert "kept sending CONNECTs far past its rate limit" in node.log()
    served = await client(node.url, mint())
    await served.client.disconnect()


async def test_the_js_client_reads_the_reason(node: GatewayProcess) -> None:
    js = await JsClient().start()
    try:
        await js.send("connect", url=node.url, auth={"token": mint(ttl=-30)}, reconnection=False)
        await wait_until(lambda: bool(_js_errors(js)), 20, "the JS client's connect_error")
        assert _js_errors(js) == ["token expired"]
    finally:
        await js.close()


def _js_errors(js: JsClient) -> list[str]:
    return [r["message"] for r in js.reports if r["type"] == "connect_error"]


async def test_joins_and_publishes_outside_the_claims_are_forbidden(node: GatewayProcess) -> None:
    alice = await client(node.url, mint(rooms=["chat:*"], publish=["chat:general"]))
    admin = await client(node.url, mint("admin", rooms=["*"], publish=["*"]))
    watcher = await client(node.url, mint("watcher", rooms=["*"]))
    try:
        for room in ("chat:general", "chat:other", "secret"):
            assert await watcher.ask("join", {"room": room}) == {"ok": True}
        forbidden = {"ok": False, "error": "forbidden"}
        assert await alice.ask("join", {"room": "secret"}) == forbidden
        assert await alice.ask("join", {"room": "user:bob"}) == forbidden
        assert (await alice.ask("join", {"room": "chat:random"}))["ok"]
        for room in ("secret", "chat:other"):  # chat:other may be joined, not published into
            assert await alice.ask("publish", {"room": room, "event": "said", "data": "x"}) == (
                forbidden
            )
        reply = await alice.ask("publish", {"room": "chat:general", "event": "said", "data": 1})
        assert reply["ok"]
        # Markers after the refused publishes, room by room: nothing came before them.
        for room in ("secret", "chat:other"):
            await admin.ask("publish", {"room": room, "event": "said", "data": "marker"})
        await watcher.wait_for("said", 3)
        assert sorted(map(str, watcher.events("said"))) == ["1", "marker", "marker"]
        # Her own room was joined for her: a message to the user reaches her.
        await admin.ask("publish", {"room": "user:alice", "event": "dm", "data": "hi"})
        assert await alice.wait_for("dm", 1) == ["hi"]
    finally:
        for recorder in (alice, admin, watcher):
            await recorder.close()


async def test_a_hook_replaces_the_claims(hooked: GatewayProcess) -> None:
    def es256(sub: str, **claims: Any) -> str:
        return mint(sub, key=EC_KEY, alg="ES256", aud=None, iss=None, **claims)

    reader = await client(hooked.url, es256("r", team="red", rooms=["*"], publish=["*"]))
    writer = await client(hooked.url, es256("w", team="red", role="writer"))
    try:
        forbidden = {"ok": False, "error": "forbidden"}
        assert await reader.ask("join", {"room": "blue:x"}) == forbidden  # rooms claim ignored
        assert await reader.ask("join", {"room": "red:x"}) == {"ok": True}
        assert await reader.ask("publish", {"room": "red:x", "event": "said", "data": 0}) == (
            forbidden
        )
        assert (await writer.ask("publish", {"room": "red:x", "event": "said", "data": 1}))["ok"]
        assert await reader.wait_for("said", 1) == [1]
        # An HS256 token "signed" with anything: never accepted by an ES256 node.
        assert await refusal(hooked.url, {"token": mint("r", aud=None, iss=None)}) == {
            "message": "algorithm not allowed"
        }
    finally:
        await reader.close()
        await writer.close()


async def test_refresh_rechecks_rooms_and_keeps_the_subject(node: GatewayProcess) -> None:
    alice = await client(node.url, mint(rooms=["a", "b"]))
    admin = await client(node.url, mint("admin", rooms=["*"], publish=["*"]))
    watcher = await client(node.url, mint("watcher", rooms=["b"]))
    try:
        for room in ("a", "b"):
            assert await alice.ask("join", {"room": room}) == {"ok": True}
        assert await watcher.ask("join", {"room": "b"}) == {"ok": True}
        assert await alice.ask("refresh", {"token": mint("bob", rooms=["*"])}) == {
            "ok": False,
            "error": "subject changed",
        }
        assert await alice.ask("refresh", {"token": mint(ttl=-30)}) == {
            "ok": False,
            "error": "token expired",
        }
        fresh = mint(rooms=["a"], ttl=600)
        reply = await alice.ask("refresh", {"token": fresh})
        assert reply == {
            "ok": True,
            "exp": jwt.decode(fresh, options={"verify_signature": False})["exp"],
        }
        assert await alice.ask("join", {"room": "b"}) == {"ok": False, "error": "forbidden"}
        await admin.ask("publish", {"room": "b", "event": "said", "data": "b"})
        await admin.ask("publish", {"room": "a", "event": "said", "data": "a"})
        await watcher.wait_for("said", 1)
        await alice.wait_for("said", 1)
        await alice.ask("leave", {"room": "none"})  # a round trip after both were sent
        assert alice.events("said") == ["a"]
    finally:
        for recorder in (alice, admin, watcher):
            await recorder.close()


async def test_a_token_expires_unless_refreshed_and_its_session_ends(
    node: GatewayProcess,
) -> None:
    # Seconds to spare: PyJWT reads ``exp`` as a whole second, so a token of ttl 2 may be
    # valid for one; bob's refresh must come before.
    bob = await client(node.url, mint("bob", ttl=4))  # his first token expires first
    alice = await recovering(node.url, mint(ttl=4.5))
    reasons: list[str] = []
    alice.on("disconnect", reasons.append)
    try:
        reply = await bob.ask("refresh", {"token": mint("bob", ttl=600)})
        assert reply["ok"]
        pid = alice.pids["/"]
        await wait_until(lambda: not alice.connected, 15, "alice disconnected at expiry")
        assert reasons == [alice.reason.SERVER_DISCONNECT]  # "io server disconnect" in JS
        assert bob.client.connected
        assert await bob.ask("join", {"room": "user:bob"}) == {"ok": True}
        # Expiry ends the session: even the same subject with a new token starts afresh.
        await alice.connect(node.url, transports=["websocket"], auth={"token": mint()})
        assert alice.recovered["/"] is False
        assert alice.pids["/"] != pid
    finally:
        await bob.close()
        await alice.disconnect()
        await alice.shutdown()


async def test_a_refresh_as_the_token_expires_is_refused_not_acked_before_the_cut(
    kafka_url: str, channel: str
) -> None:
    """At expiry the session is ended in Kafka, then the socket disconnected. A refresh
    handled meanwhile was acked (``{"ok": true, "exp": ...}``) and the socket cut all the
    same: told its token was renewed, the client was disconnected by the server, after
    which the JS client does not reconnect by itself. In process, on real Kafka."""
    settings = Settings(channel=channel, jwt_secret=SECRET, jwt_audience=AUD, jwt_issuer=ISS)
    app = create_app(settings, kafka_url)
    manager = app.state.node.manager
    real_write = manager.store.write
    ending, go_on = asyncio.Event(), asyncio.Event()

    async def slow_end(records: dict[str, Any]) -> None:
        if None in records.values():  # the session ended at expiry: Kafka slow to answer
            ending.set()
            await go_on.wait()
        await real_write(records)

    alice = AsyncRecoveringClient(reconnection=False)
    async with manager, run_server(app) as url:
        try:
            # 2: PyJWT reads ``exp`` as a whole second, and a ttl of 1 was at times spent
            # before the CONNECT was judged.
            await alice.connect(url, transports=["websocket"], auth={"token": mint(ttl=2)})
            manager.store.write = slow_end
            await wait_until(ending.is_set, 15, "the session ended at expiry")
            reply = await alice.call("refresh", {"token": mint(ttl=600)})
            assert reply == {"ok": False, "error": "token expired"}
            # Nor may it act meanwhile, even in its own room.
            forbidden = {"ok": False, "error": "forbidden"}
            assert await alice.call("join", {"room": "user:alice"}) == forbidden
            go_on.set()
            await wait_until(lambda: not alice.connected, 15, "alice disconnected")
        finally:
            go_on.set()
            manager.store.write = real_write
            if alice.connected:
                await alice.disconnect()
            await alice.shutdown()


async def test_a_sockets_requests_act_in_the_order_it_sent_them_whatever_the_hook_answers(
    kafka_url: str, channel: str
) -> None:
    """An async ``--authorize`` hook answers in any order: a client's pipelined publishes
    to one room were produced in the order its hook answered, a join then a leave left it
    in the room, and a join authorized under its old token landed after a refresh had
    pruned its rooms. In process, on real Kafka."""
    settings = Settings(
        channel=channel,
        jwt_secret=SECRET,
        jwt_audience=AUD,
        jwt_issuer=ISS,
        authorize="tests.support.authorize:uneven",
    )
    app = create_app(settings, kafka_url)
    node = app.state.node
    alice, bob = Recorder(""), Recorder("")
    async with node.manager, run_server(app) as url:
        try:
            for recorder, sub in ((alice, "alice"), (bob, "bob")):
                await recorder.client.connect(
                    url, transports=["websocket"], auth={"recovery": False, "token": mint(sub)}
                )
            assert await bob.ask("join", {"room": "red:x"}) == {"ok": True}
            published = [
                alice.ask("publish", {"room": "red:x", "event": "said", "data": n})
                for n in range(10)
            ]
            assert all(reply["ok"] for reply in await asyncio.gather(*published))
            assert await bob.wait_for("said", 10) == list(range(10))
            await asyncio.gather(
                alice.ask("join", {"room": "red:slow"}), alice.ask("leave", {"room": "red:slow"})
            )
            assert "red:slow" not in node.sio.rooms(alice.sid())
            banned = mint(banned=["blue:slow"])
            joined, refreshed = await asyncio.gather(
                alice.ask("join", {"room": "blue:slow"}), alice.ask("refresh", {"token": banned})
            )
            assert (joined["ok"], refreshed["ok"]) == (True, True)
            assert "blue:slow" not in node.sio.rooms(alice.sid())
            # Joins still being authorized when their socket goes: none acts for a socket
            # gone (a manager's enter_room for a sid not here tells the other nodes).
            asked, answered = authorize.asked, authorize.answered
            for n in range(20):
                await alice.client.emit("join", {"room": f"gone-{n}:slow"}, callback=print)
            await wait_until(lambda: authorize.asked >= asked + 20, 10, "the joins asked about")
            published = node.manager.stats.published
            await alice.client.eio.ws.close()  # gone as they are authorized
            await wait_until(lambda: authorize.answered >= answered + 20, 10, "the answers")
            for _ in range(20):  # the joins' last steps, were any to act
                await asyncio.sleep(0)
            assert node.manager.stats.published == published
        finally:
            for recorder in (alice, bob):
                await recorder.close()


async def test_a_claim_whose_connection_went_while_judged_leaves_the_session_its_owners(
    kafka_url: str, channel: str
) -> None:
    """A claim won for a connection that closed while it was judged releases the session.
    The gateway's judgment had taken the subject off the session's data for the app, and
    the record released went without it: the owner's next claim was refused as another
    subject's, and what it missed was lost. In process, on real Kafka."""
    settings = Settings(channel=channel, jwt_secret=SECRET, jwt_audience=AUD, jwt_issuer=ISS)
    app = create_app(settings, kafka_url)
    sio, manager = app.state.node.sio, app.state.node.manager
    alice = RecoveringRecorder({"token": mint()})
    async with manager, run_server(app) as url:
        try:
            await alice.connect(url)
            sid = alice.sid
            await alice.drop_transport()
            await claimed_by_a_connection_that_goes_while_judged(sio, url, alice, sid, "user:alice")
        finally:
            await alice.close()


async def test_a_disconnect_sent_while_a_claim_is_judged_ends_the_recovered_socket(
    kafka_url: str, channel: str
) -> None:
    """Over long-polling a connection's packets once were handled at once: a DISCONNECT
    ("41") handled while its recovery CONNECT was judged found no socket, yet forgot the
    connection's token; the socket recovered then had none to expire, and took its rooms'
    events for good. They are handled in order now (adapter/lanes.py): the DISCONNECT
    waits for the CONNECT, then ends the socket it recovered. In process, on real Kafka."""
    settings = Settings(channel=channel, jwt_secret=SECRET, jwt_audience=AUD, jwt_issuer=ISS)
    app = create_app(settings, kafka_url)
    manager = app.state.node.manager
    alice = RecoveringRecorder({"token": mint()})
    async with manager, run_server(app) as url, httpx.AsyncClient(timeout=20) as http:
        try:
            await alice.connect(url)
            sid, pid = alice.sid, alice.client.pids["/"]
            await alice.drop_transport()
            await wait_until(lambda: not manager.is_connected(sid, "/"), 10, "the drop noticed")
            with first_claim_held(manager) as (judging, judged):
                handshake = await http.get(engineio_url(url, "polling"))
                session = engineio_url(url, "polling", json.loads(handshake.text[1:])["sid"])
                # Its token outlives the test: only the DISCONNECT can end the socket.
                connect = "40" + json.dumps({"token": mint(ttl=60), "pid": pid})
                claiming = asyncio.create_task(http.post(session, content=connect))
                await wait_until(judging.is_set, 10, "the claim being judged")
                await http.post(session, content="41")
                assert manager.is_connected(sid, "/") is False  # it waits for the CONNECT
                judged.set()
                await claiming
            sio = app.state.node.sio
            await wait_until(lambda: sio.recoveries["recovered", ""] == 1, 10, "recovered")
            await wait_until(
                lambda: not manager.is_connected(sid, "/"), 10, "then its DISCONNECT handled"
            )
            # Its token forgotten with it, once its session's end is written.
            await wait_until(lambda: sio._identities == {}, 10, "its token forgotten")
        finally:
            await alice.close()


async def test_a_stolen_pid_gets_a_fresh_session_and_its_owner_recovers(
    node: GatewayProcess,
) -> None:
    alice = await recovering(node.url, mint(rooms=["secret"]))
    admin = await client(node.url, mint("admin", rooms=["*"], publish=["*"]))
    alice_said: list[Any] = []
    alice.on("said", alice_said.append)
    try:
        assert await alice.call("join", {"room": "secret"}) == {"ok": True}
        sid, pid = alice.get_sid("/"), alice.pids["/"]
        # Mallory holds alice's pid: while alice is connected, and after she dropped.
        thieves_said: list[Any] = []
        live = await _thief(node.url, pid, thieves_said)
        # The stolen pid did not cut her connection.
        assert await alice.call("leave", {"room": "x"}) == {"ok": True}
        await alice.eio.ws.close()
        await wait_until(lambda: not alice.connected, 15, "alice's transport drop")
        for n in range(3):
            await admin.ask("publish", {"room": "secret", "event": "said", "data": n})
        gone = await _thief(node.url, pid, thieves_said)
        for thief in (live, gone):
            assert thief.recovered["/"] is False
            assert thief.pids["/"] != pid
            assert thief.get_sid("/") != sid
            assert await thief.call("leave", {"room": "x"}) == {"ok": True}  # round trip
            await thief.disconnect()
            await thief.shutdown()
        assert thieves_said == []
        # Her session was left as it was: she recovers it, with what she missed.
        token = mint(rooms=["secret"])
        await alice.connect(node.url, transports=["websocket"], auth={"token": token})
        assert alice.recovered["/"] is True
        assert alice.get_sid("/") == sid
        await wait_until(lambda: alice_said == [0, 1, 2], 15, "alice's missed events")
    finally:
        await admin.close()
        await alice.disconnect()
        await alice.shutdown()


async def _thief(url: str, pid: str, said: list[Any]) -> AsyncRecoveringClient:
    mallory = AsyncRecoveringClient(reconnection=False)
    mallory.on("said", said.append)
    mallory.pids["/"] = pid
    await mallory.connect(
        url, transports=["websocket"], auth={"token": mint("mallory", rooms=["*"])}
    )
    return mallory


async def test_a_recovered_socket_loses_the_rooms_its_claims_no_longer_allow(
    node: GatewayProcess,
) -> None:
    alice = await recovering(node.url, mint(rooms=["keep", "lose"]))
    admin = await client(node.url, mint("admin", rooms=["*"], publish=["*"]))
    watcher = await client(node.url, mint("watcher", rooms=["lose"]))
    got: list[tuple[str, Any]] = []
    alice.on("said", lambda data: got.append(("said", data)))
    try:
        for room in ("keep", "lose"):
            assert await alice.call("join", {"room": room}) == {"ok": True}
        assert await watcher.ask("join", {"room": "lose"}) == {"ok": True}
        await alice.eio.ws.close()
        await wait_until(lambda: not alice.connected, 15, "alice's transport drop")
        for n in range(2):
            for room in ("lose", "keep"):
                await admin.ask("publish", {"room": room, "event": "said", "data": f"{room}{n}"})
        await alice.connect(
            node.url, transports=["websocket"], auth={"token": mint(rooms=["keep"])}
        )
        assert alice.recovered["/"] is True
        await wait_until(lambda: len(got) >= 2, 15, "alice's missed events of 'keep'")
        await admin.ask("publish", {"room": "lose", "event": "said", "data": "after"})
        await watcher.wait_for("said", 3)
        assert await alice.call("leave", {"room": "x"}) == {"ok": True}  # a round trip
        assert said(got) == ["keep0", "keep1"]
    finally:
        await admin.close()
        await watcher.close()
        await alice.disconnect()
        await alice.shutdown()
