"""Hostile Engine.IO / Socket.IO packets never hurt a node or its other clients.

A real gateway process takes a fixed corpus of the worst packets we know, then
hypothesis-generated ones, over raw WebSocket and long-polling. Meanwhile two
well-behaved clients sit on the same node. After it all the process is alive and ready,
its memory grew by less than `RSS_BOUND_KB`, the quiet clients were never disconnected
and still talk to each other, and the only tracebacks in its log are per-connection
rejections (a packet the libraries refused), never one from a shared task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from socketio_kafka.adapter import fastjson

from .support.clients import Recorder
from .support.cluster import CROWD, REPO, GatewayProcess, gateway_cluster
from .support.rawclient import (
    CONNECT,
    Frame,
    RawText,
    closed_by_node,
    polling_barrage,
    polling_body,
    websocket_barrage,
    websocket_session,
)
from .support.waiting import wait_until

pytestmark = pytest.mark.timeout(240)

MAX_PAYLOAD = 64 * 1024
#: Every case below holds at most a few payloads' worth at once, and each connection's
#: state goes when it closes; allocator slack and Python's caches stay well under this.
#: A leak per case (the corpus alone opens several hundred connections) or an unbounded
#: buffer (the attachment stream below sends 100 MB) would cross it.
RSS_BOUND_KB = 50 * 1024
#: Binary attachments streamed after a BINARY_EVENT that announced billions of them.
ATTACHMENT_STREAM = 1600

Case = tuple[str, Sequence[Frame]]


def _event(*args: object) -> str:
    return "42" + json.dumps(list(args))


def _raw_publish(room: str, data: str) -> str:
    """A ``publish`` of an ``odd`` event whose data is ``data`` verbatim, valid JSON or not."""
    return f'42["publish",{{"room":{json.dumps(room)},"event":"odd","data":{data}}}]'


def _deep(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


def _corpus(quiet_sid: str, quiet_room: str) -> list[Case]:
    """The fixed worst cases, each sent on its own fresh connection, by class."""
    placeholder = {"_placeholder": True, "num": 0}
    huge_digits = "9" * 5000
    cases: list[Case] = []
    add = cases.append
    # Engine.IO: unknown, empty and malformed packet types (no Socket.IO CONNECT first).
    for frame in ["7", "9", "x", "", "٣", "b!!!", "bAAA=", "5", "6", "2probe", "3", "4", "0"]:
        add(("engineio-type", [frame]))
    add(("engineio-type", [b"\x00\x01binary-before-connect"]))
    add(("engineio-type", ["4" + _deep(100_000)]))  # Engine.IO parses JSON-looking MESSAGEs
    # Socket.IO packet types 0-6 and beyond, bare and with data.
    for kind in [*range(13), -1, "x", "٣", " "]:
        add(("socketio-type", [CONNECT, f"4{kind}"]))
        add(("socketio-type", [CONNECT, f'4{kind}["publish",{{"room":"r","event":"e","data":1}}]']))
    add(("socketio-type", ["41", "41", "40", "40", "40"]))  # disconnect unconnected, re-connect
    # Namespaces: unknown, too long, invalid UTF-8, binary where text belongs.
    for namespace in ["/nope", "/" + "n" * 100_000, "/control?x=1", "/other", "/\u0000", "nope"]:
        add(("namespace", [f"40{namespace},", f'42{namespace},["join",{{"room":"r"}}]']))
    add(("namespace", [RawText(b"40/\xff\xfe\xfd,")]))
    add(("namespace", [CONNECT, RawText(b'42["join",{"room":"\xc3\x28"}]')]))
    add(("namespace", [b"40"]))
    add(("namespace", [CONNECT, b'42["join",{"room":"r"}]']))
    add(("namespace", [RawText("40/\ud800,".encode("utf-8", "surrogatepass"))]))
    # BINARY_EVENT / BINARY_ACK with attachments missing, too many, out of range, forged.
    for header in ["451-", "4599999999-", "459999999999-", "4510000000000-", "461-", "45-1-"]:
        add(("attachments", [CONNECT, header + json.dumps(["publish", placeholder])]))
    add(("attachments", [CONNECT, "451-" + json.dumps(["x", placeholder]), '42["x"]', b"a"]))
    add(("attachments", [CONNECT, "451-" + json.dumps(["x", placeholder]), b"a", b"b", b"c"]))
    for num in [5, -7, "0", None, 10**30, [0]]:
        forged = {"_placeholder": True, "num": num}
        add(("attachments", [CONNECT, "451-" + json.dumps(["x", forged]), b"a", '42["x"]']))
    add(("attachments", [CONNECT, b"a", b"b"]))  # attachments nobody announced
    add(("attachments", [CONNECT, "451-" + _deep(50_000), b"a"]))
    # Ack ids: huge, negative, not numeric, for acks nobody asked for.
    for ack_id in ["9" * 99, "9" * 100, "9" * 200, "-1", "abc", "0" * 99 + "1", huge_digits]:
        add(("ack-id", [CONNECT, f"43{ack_id}[1]"]))
        add(("ack-id", [CONNECT, f'42{ack_id}["join",{{"room":"r"}}]']))
        add(("ack-id", [CONNECT, f"46{ack_id}1-[{json.dumps(placeholder)}]", b"a"]))
    # Deep nesting, in events and in CONNECT auth.
    for depth in [1_000, 1_100, 100_000]:
        add(("nesting", [CONNECT, '42["publish",{"room":"r","event":"e","data":' + _deep(depth)]))
        add(("nesting", [CONNECT, "42" + _deep(depth)]))
        add(("nesting", ["40" + _deep(depth, '{"a":', "}").replace("}", "1}", 1)]))
    # Huge and non-finite numbers, published to the quiet room: its client must cope.
    for number in ["1e400", "-1e400", huge_digits, str(2**70), "NaN", "-Infinity", "1" * 4300]:
        add(("numbers", [CONNECT, _raw_publish(quiet_room, number)]))
        add(("numbers", [CONNECT, f'42["join",{{"room":{number}}}]']))
    # Events the server reserves, and the gateway's own events with wrong shapes.
    for name in ["connect", "disconnect", "connect_error", "disconnecting", "message", "*"]:
        add(("reserved-event", [CONNECT, _event(name), _event(name, {"room": "r"})]))
        add(
            (
                "reserved-event",
                [CONNECT, _event("publish", {"room": "r", "event": name, "data": 1})],
            )
        )
    for args in [
        [],
        [1, 2],
        [None],
        ["r"],
        [{"room": None}],
        [{"room": ""}],
        [{"room": ["a"]}],
        [{"room": "a" * 300}],
        [{"room": quiet_sid}],  # another client's sid room
        [{"room": "/"}],
        [{"room": "\ud800"}],
        [{"room": "r", "event": "e"}],
        [{"room": "r", "event": 7, "data": 1}],
        [{"room": "\udfff", "event": "\ud800", "data": "\ud800"}],
        [{"room": quiet_room, "event": "odd", "data": "\ud800"}],
    ]:
        for event in ["join", "leave", "publish"]:
            add(("protocol-shape", [CONNECT, _event(event, *args)]))
    # Forged connection state recovery claims.
    for auth in [
        {"pid": uuid.uuid4().hex, "offset": "abc~0.0.0"},
        {"pid": uuid.uuid4().hex, "offset": "~~~"},
        {"pid": uuid.uuid4().hex, "offset": "e~" + ".".join(["9" * 30] * 6)},
        {"pid": uuid.uuid4().hex, "offset": {"a": 1}},
        {"pid": uuid.uuid4().hex, "offset": 12},
        {"pid": uuid.uuid4().hex, "offset": [1, 2]},
        {"pid": uuid.uuid4().hex, "offset": None},
        {"pid": "p" * 10_240, "offset": "abc~0.0.0"},
        {"pid": 7, "offset": "x"},
        {"pid": {"$ne": None}},
        {"pid": "", "offset": ""},
        {"pid": "\ud800", "offset": "\ud800"},
        {"recovery": "maybe", "pid": uuid.uuid4().hex},
    ]:
        add(("recovery-auth", ["40" + json.dumps(auth)]))
    add(("recovery-auth", ["40" + json.dumps({"pid": "x", "offset": "1~" + huge_digits})]))
    # Just over the node's payload limit, text and binary.
    add(("oversize", [CONNECT, "42" + json.dumps(["x", "a" * MAX_PAYLOAD])]))
    add(("oversize", [CONNECT, "451-" + json.dumps(["x", placeholder]), b"a" * (MAX_PAYLOAD + 1)]))
    return cases


def _polling_corpus(quiet_room: str) -> list[bytes]:
    """POST bodies: the same classes where polling has its own parser."""
    return [
        b"",
        b"x",
        b"\x1e" * 100,
        b"\xff\xfe\xfd",
        polling_body([CONNECT] * 17),  # more packets than a payload may hold
        polling_body([CONNECT, "4" + _deep(100_000)]),
        polling_body([CONNECT, "451-" + json.dumps(["x", {"_placeholder": True, "num": 0}])]),
        polling_body([CONNECT, '459999999999-["x"]', "ba", "ba", "ba"]),
        polling_body([CONNECT, _raw_publish(quiet_room, "1e400")]),
        b"d=" + b"%ff" * 10,
        b"40" + b"a" * (MAX_PAYLOAD + 1),
    ]


# -- generated cases -------------------------------------------------------------------------

_names = st.sampled_from(["join", "leave", "publish", "connect", "disconnect", "x"]) | st.text(
    max_size=12
)
_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
_payload = st.one_of(
    st.none(),
    _json.map(json.dumps),
    st.tuples(_names, st.lists(_json, max_size=3)).map(lambda a: json.dumps([a[0], *a[1]])),
    st.builds(
        lambda room, event, data: json.dumps(
            ["publish", {"room": room, "event": event, "data": data}]
        ),
        st.text(max_size=300),
        _names,
        _json,
    ),
    st.text(max_size=64),
)
_socketio = st.builds(
    lambda kind, attachments, namespace, ack, payload: (
        "4"
        + kind
        + (attachments or "")
        + (namespace + "," if namespace else "")
        + (ack or "")
        + (payload or "")
    ),
    st.sampled_from([str(k) for k in range(8)]) | st.text(max_size=1),
    st.none() | st.integers(0, 10**11).map(lambda n: f"{n}-"),
    st.none()
    | st.sampled_from(["/", "/nope", "/control", "/other"])
    | st.text(max_size=30).map("/".__add__),
    st.none() | st.integers(-5, 10**120).map(str),
    _payload,
)
_frame: st.SearchStrategy[Frame] = st.one_of(
    _socketio,
    _socketio,
    st.text(max_size=40),
    st.binary(max_size=64),
    st.binary(max_size=32).map(RawText),
)


@dataclass
class Tally:
    """Cases sent, per class, for the report."""

    counts: Counter[str]

    def add(self, kind: str) -> None:
        self.counts[kind] += 1


def _generated_barrage(url: str, alive: Callable[[], bool], tally: Tally) -> None:
    """Hypothesis-driven frames, each example on its own connection; the node must live on."""

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        connect_first=st.booleans(),
        frames=st.lists(_frame, min_size=1, max_size=6),
        polling=st.booleans(),
    )
    def example(connect_first: bool, frames: list[Frame], polling: bool) -> None:
        if polling:
            tally.add("generated-polling")
            sent = [CONNECT, *frames] if connect_first else frames
            asyncio.run(polling_barrage(url, [polling_body(sent)]))
        else:
            tally.add("generated-websocket")
            asyncio.run(websocket_barrage(url, frames, connect=connect_first, read_s=0.01))
        assert alive(), "the gateway process died"

    example()


# -- the test --------------------------------------------------------------------------------


@pytest.fixture
async def node(kafka_url: str, channel: str) -> AsyncIterator[GatewayProcess]:
    # Its hostile clients, all from 127.0.0.1, are many: the per-address rate is not tested here.
    extra = ["--max-payload-bytes", str(MAX_PAYLOAD), *CROWD]
    async with gateway_cluster(kafka_url, channel, nodes=1, extra_args=extra) as [gateway]:
        yield gateway


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


@pytest.mark.kafka
async def test_hostile_packets_leave_the_node_and_its_other_clients_unharmed(
    node: GatewayProcess, caplog: pytest.LogCaptureFixture
) -> None:
    assert node.process is not None
    pid = node.process.pid
    room = f"quiet-{uuid.uuid4().hex[:8]}"
    listener, talker = Recorder(node.url), Recorder(node.url)
    await listener.connect()
    await talker.connect()
    assert await listener.ask("join", {"room": room}) == {"ok": True}
    assert (await talker.ask("publish", {"room": room, "event": "said", "data": 0}))["ok"] is True
    await listener.wait_for("said", 1)
    # Warm the node's parsers and allocator first, so the bound measures growth, not start-up.
    await websocket_barrage(node.url, [_event("join", {"room": "warm"})], connect=True)
    rss_before = _rss_kb(pid)

    tally = Tally(Counter())
    for kind, frames in _corpus(listener.sid(), room):
        tally.add(kind)
        connect = frames[0] == CONNECT
        await websocket_barrage(node.url, frames[connect:], connect=connect)
    for body in _polling_corpus(room):
        tally.add("polling-body")
        await polling_barrage(node.url, [body])
    stream_peak = await _attachment_stream(node.url, pid, rss_before)
    tally.add("attachment-stream")
    await asyncio.to_thread(
        _generated_barrage,
        node.url,
        lambda: node.process is not None and node.process.poll() is None,
        tally,
    )
    rss_after = _rss_kb(pid)
    print(f"cases: {dict(tally.counts)}; RSS kB: {rss_before} before, {stream_peak} at the")
    print(f"attachment stream's peak, {rss_after} after")

    assert node.process.poll() is None, node.log()
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{node.url}/healthz")).status_code == 200
        assert (await http.get(f"{node.url}/readyz")).status_code == 200
    assert (await talker.ask("publish", {"room": room, "event": "said", "data": 1}))["ok"] is True
    assert await listener.wait_for("said", 2) == [0, 1]
    assert listener.client.connected
    assert talker.client.connected
    unexpected = set(listener.received) - {("/", "said"), ("/", "odd")}
    assert not unexpected, unexpected
    assert max(stream_peak, rss_after) - rss_before < RSS_BOUND_KB, (
        rss_before,
        stream_peak,
        rss_after,
    )
    _assert_only_rejections_logged(node.log_path)
    # The quiet clients run in this process: an error there is one a hostile client caused.
    client_errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not client_errors, client_errors
    await listener.close()
    await talker.close()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('["publish",{"room":"\\ud800","event":"e","data":1}]', "surrogate"),
        ('["x","\\udfff"]', "surrogate"),
        ("[" + "9" * 4300 + "]", "digits"),
    ],
)
def test_the_packet_parser_refuses_what_no_client_could_take_further(text: str, why: str) -> None:
    """Packets go through fastjson, and the standard library it falls back on takes these.

    (Before: a lone surrogate as a room crashed the publish handler's task on encoding the
    Kafka key; a 4,300-digit integer went to the quiet client, whose python-socketio
    refuses integers over 100 digits, so it lost the packet.)
    """
    with pytest.raises(ValueError, match=why):
        fastjson.loads(text)


async def _attachment_stream(url: str, pid: int, rss_before: int) -> int:
    """A BINARY_EVENT announcing 10^10 attachments, then 100 MB of them; the peak RSS.

    Sent on one connection kept open, until the node closes it, or holds more than the
    bound (python-socketio alone keeps every attachment while it waits for the rest).
    """
    chunk = b"\x00" * (MAX_PAYLOAD - 1024)
    header = "459999999999-" + json.dumps(["x", {"_placeholder": True, "num": 0}])
    peak = rss_before
    with contextlib.suppress(ConnectionClosed):
        async with websocket_session(url, connect=True) as ws:
            await ws.send(header)
            for _ in range(ATTACHMENT_STREAM):
                await ws.send(chunk)

            closed = asyncio.create_task(closed_by_node(ws))

            def settled() -> bool:
                nonlocal peak
                peak = max(peak, _rss_kb(pid))
                return closed.done() or peak - rss_before > RSS_BOUND_KB

            try:
                await wait_until(settled, 20, "the node to close the stream or to grow")
            finally:
                closed.cancel()
    return max(peak, _rss_kb(pid))


def _assert_only_rejections_logged(log_path: Path | None) -> None:
    """Tracebacks of packets the libraries refused are fine (python-socketio logs each one);
    an exception raised in our code, or a task that died unawaited, is not."""
    assert log_path is not None
    log = log_path.read_text(errors="replace")
    assert "Task exception was never retrieved" not in log, _excerpt(log, "Task exception")
    for block in log.split("Traceback (most recent call last):")[1:]:
        raised_at = _FRAME.findall(block)[-1]
        ours = raised_at[0].startswith(_OUR_CODE) and raised_at not in _PARSERS
        assert not ours, block[:3000]


def _excerpt(log: str, marker: str) -> str:
    at = log.index(marker)
    return log[max(0, at - 500) : at + 3000]


_FRAME = re.compile(r'^  File "([^"]+)", line \d+, in (\S+)$', re.MULTILINE)
#: The package; not tests/support/control.py, a test-only remote control for trusted callers.
_OUR_CODE = (str(REPO / "adapter"), str(REPO / "gateway"))
#: Our JSON parser, which refuses what is not JSON by raising: a rejection, not a crash.
_PARSERS = {(str(REPO / "adapter" / "fastjson.py"), f) for f in ("loads", "_bounded_int")}
