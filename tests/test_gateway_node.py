"""One gateway node's behaviour at its edges: no broker, a broker that goes away, bad sizes."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx
import pytest
import socketio

from benchmarks import flood
from socketio_kafka.adapter import AsyncKafkaManager, KafkaOptions, PublishError
from socketio_kafka.gateway.local_kafka import LocalKafka

from .support.clients import Recorder
from .support.cluster import REPO, GatewayProcess, free_port, gateway_cluster
from .support.harness import Harness
from .support.rawclient import close_code
from .support.recovering import RecoveringRecorder
from .support.sockets import free_run
from .support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


@pytest.fixture
async def node(kafka_url: str, channel: str) -> AsyncIterator[GatewayProcess]:
    async with gateway_cluster(kafka_url, channel, nodes=1) as [gateway]:
        yield gateway


async def _status(url: str) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(url, timeout=5)).status_code


async def _ready_gauge(url: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{url}/metrics", timeout=5)).text
    (ready,) = re.findall(r"^socketio_kafka_ready (\S+)$", text, re.MULTILINE)
    return float(ready)


async def test_without_kafka_a_node_is_alive_unready_and_refuses_publishes_clearly(
    channel: str,
) -> None:
    nowhere = f"kafka://127.0.0.1:{free_port()}"
    gateway = GatewayProcess(nowhere, channel, extra_args=["--kafka-timeout-ms", "1500"])
    gateway.start()
    client = Recorder(gateway.url)
    try:
        await wait_until(lambda: gateway.log_path is not None, 5, "log file")
        await _wait_status(f"{gateway.url}/healthz", 200)
        assert await _status(f"{gateway.url}/readyz") == 503
        await client.connect()
        assert await client.ask("join", {"room": "r"}) == {"ok": True}
        reply = await client.ask("publish", {"room": "r", "event": "e", "data": 1})
        assert reply["ok"] is False
        assert "broker" in reply["error"]
        assert gateway.process is not None
        assert gateway.process.poll() is None
        assert "retrying" in gateway.log()
        # Served, but promised no recovery: without Kafka there is no session to keep.
        recovering = await RecoveringRecorder().connect(gateway.url)
        assert recovering.client.pids == {}
        await recovering.close()
    finally:
        await client.close()
        gateway.stop()
        gateway.remove_log()


async def _assert_waits_quietly(gateway: GatewayProcess, seconds: float) -> None:
    """A node whose broker is away retries with backoff: no busy loop, no flood of log lines.

    (aiokafka's producer asks for metadata again the moment an attempt fails while a
    partition has no leader: unchecked, a node spun a core and logged thousands of lines
    a second for as long as the broker was down.)
    """
    cpu_before, lines_before = _cpu_seconds(gateway.process.pid), gateway.log().count("\n")
    await asyncio.sleep(seconds)
    cores = (_cpu_seconds(gateway.process.pid) - cpu_before) / seconds
    lines = gateway.log().count("\n") - lines_before
    assert cores < 0.25, f"{cores:.2f} cores busy while the broker is away"
    assert lines < 50 * seconds, f"{lines} log lines in {seconds} s while the broker is away"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_a_broker_that_goes_away_and_comes_back(tmp_path: Path, channel: str) -> None:
    broker = LocalKafka(tmp_path / "kafka")
    address = await asyncio.to_thread(broker.start)
    gateway = GatewayProcess(
        f"kafka://{address}", channel, extra_args=["--kafka-timeout-ms", "3000"]
    )
    sender, receiver = Recorder(gateway.url), Recorder(gateway.url)
    away = RecoveringRecorder()
    try:
        gateway.start()
        await gateway.wait_ready()
        for client in (sender, receiver):
            await client.connect()
            await client.ask("join", {"room": "r"})
        await away.connect(gateway.url)
        assert await away.client.call("join", {"room": "r"}) == {"ok": True}
        assert (await sender.ask("publish", {"room": "r", "event": "e", "data": 1}))["ok"] is True
        await receiver.wait_for("e", 1)
        await away.wait_count("e", 1)
        # A client drops, misses an event, and is back while the broker is away.
        sid = away.sid
        await away.drop_transport()
        async with Harness([gateway]) as harness:
            await harness.wait_gone(0, sid)
        assert (await sender.ask("publish", {"room": "r", "event": "m", "data": 0}))["ok"] is True

        await asyncio.to_thread(broker.stop)
        await _wait_status(f"{gateway.url}/readyz", 503)
        assert await _status(f"{gateway.url}/healthz") == 200
        # What a balancer's probe (1 s timeout) sees: an answer, and why.
        async with httpx.AsyncClient() as http:
            unready = (await http.get(f"{gateway.url}/readyz", timeout=1)).json()
        assert any(r.startswith("kafka unreachable") for r in unready["reasons"]), unready
        assert await _ready_gauge(gateway.url) == 0.0  # it read 1 through the outage
        reply = await sender.ask("publish", {"room": "r", "event": "e", "data": 2}, timeout=30)
        # Bounded by --kafka-timeout-ms (on the timer every publish shares), not left to hang.
        assert reply["ok"] is False
        assert re.search(r"did not (take|confirm) the record within 3\.0s", reply["error"]), reply
        await _assert_waits_quietly(gateway, seconds=5.0)
        # Its claim cannot be judged: no fresh session (that would lose the event), a retry.
        with pytest.raises(socketio.exceptions.ConnectionError):
            await away.client.connect(
                gateway.url, transports=["websocket"], auth=None, wait_timeout=10
            )

        assert await asyncio.to_thread(broker.start) == address
        await _wait_status(f"{gateway.url}/readyz", 200, timeout=60)
        assert await _ready_gauge(gateway.url) == 1.0
        # The outage reads as two lines of the node's own.
        log = gateway.log()
        assert log.count("kafka unreachable (") == 1, log
        assert log.count("kafka reachable again after") == 1, log
        await away.client.connect(gateway.url, transports=["websocket"], wait_timeout=10)
        assert (away.client.recovered["/"], away.sid) == (True, sid)
        assert await away.wait_count("m", 1) == [0]
        assert receiver.client.connected
        assert (await sender.ask("publish", {"room": "r", "event": "e", "data": 3}))["ok"] is True
        await wait_until(lambda: 3 in receiver.events("e"), 60, "delivery after the outage")
        # The unconfirmed publish may or may not have been written: never twice, never after 3.
        assert receiver.events("e") in ([1, 3], [1, 2, 3])
    finally:
        await asyncio.gather(sender.close(), receiver.close(), away.close())
        gateway.stop()
        gateway.remove_log()
        await asyncio.to_thread(broker.stop)


async def test_serve_without_kafka_starts_the_local_broker(tmp_path: Path, channel: str) -> None:
    env = {**os.environ, "SOCKETIO_KAFKA_DATA_DIR": str(tmp_path)}
    port = free_port()
    command = [sys.executable, "-m", "socketio_kafka.gateway"]
    process = subprocess.Popen(  # noqa: ASYNC220  a child that outlives this await
        [*command, "serve", "--port", str(port), "--channel", channel, "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await _wait_status(f"http://127.0.0.1:{port}/readyz", 200, timeout=120)
        status = await asyncio.to_thread(
            subprocess.run, [*command, "kafka", "status"], env=env, capture_output=True
        )
        assert status.returncode == 0
        assert b"running" in status.stdout
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 30)
        stop = await asyncio.to_thread(
            subprocess.run, [*command, "kafka", "stop"], env=env, capture_output=True
        )
        assert stop.stdout.strip() == b"stopped"


async def test_demo_runs_end_to_end(kafka_url: str, channel: str) -> None:
    base = free_run(2)
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "socketio_kafka.gateway",
            "demo",
            "--once",
            "--kafka",
            kafka_url,
            "--base-port",
            str(base),
            "--nodes",
            "2",
            "--channel",
            channel,
        ],
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "bob received it" in out
    # bob was on the second node: with two, he recovers on the first.
    assert f"bob reconnected to http://127.0.0.1:{base}: recovered=True" in out
    assert "recovered=True, missed messages delivered in order: ['are you there?'" in out


async def test_oversized_records_are_refused_and_the_manager_goes_on(
    kafka_url: str, channel: str
) -> None:
    options = KafkaOptions(max_record_bytes=4096)
    async with AsyncKafkaManager(kafka_url, channel, write_only=True, options=options) as manager:
        with pytest.raises(PublishError, match="exceeds max_record_bytes"):
            await manager.emit("big", "x" * 10_000, room="r")
        await manager.emit("small", "x", room="r")
        assert manager.stats.published == 1
        assert manager.stats.publish_errors == 1


async def test_a_publish_no_node_could_read_back_is_refused_and_its_id_stays_unused(
    node: GatewayProcess,
) -> None:
    """NaN beside a long integer passed the gateway's JSON reader and was written and
    acknowledged ``ok``, then every node skipped the record: nobody got it, and its id
    counted as published. It is refused before it is written now."""
    sender, receiver = Recorder(node.url), Recorder(node.url)
    for client in (sender, receiver):
        await client.connect()
    try:
        assert (await receiver.ask("join", {"room": "r"}))["ok"] is True
        unreadable = {"room": "r", "event": "e", "data": [float("nan"), 2**70], "id": "p-1"}
        reply = await sender.ask("publish", unreadable)
        assert reply["ok"] is False
        assert reply["error"].startswith("emit: data is not JSON a node can read")
        reply = await sender.ask("publish", {"room": "r", "event": "e", "data": 1, "id": "p-1"})
        assert (reply["ok"], reply["repeat"]) == (True, False)
        assert await receiver.wait_for("e", 1) == [1]
    finally:
        for client in (sender, receiver):
            await client.close()


async def test_a_client_sending_more_than_max_payload_is_cut_off_and_others_are_served(
    node: GatewayProcess,
) -> None:
    big, other = Recorder(node.url), Recorder(node.url)
    await big.connect()
    await other.connect()
    try:
        with pytest.raises(Exception):  # noqa: B017, PT011  the transport is closed under it
            await big.ask(
                "publish", {"room": "r", "event": "e", "data": "x" * 2_000_000}, timeout=10
            )
        await wait_until(lambda: not big.client.connected, 15, "oversized sender cut off")
        assert await other.ask("join", {"room": "r"}) == {"ok": True}
    finally:
        await asyncio.gather(big.close(), other.close())


async def test_a_websocket_message_over_max_payload_is_refused_before_it_is_read(
    node: GatewayProcess,
) -> None:
    """A frame that announces more than ``--max-payload-bytes`` closes the connection at its
    header (1009, "message too big"): the node neither waits for nor keeps the rest (it
    kept up to uvicorn's own 16 MiB a connection, then refused it)."""
    up = await flood.upgrade("127.0.0.1", node.port, "127.0.0.1")
    assert up.status == 101
    try:
        up.writer.write(flood.frame_header(10_000_000) + b"4" * 1024)
        assert await close_code(up.reader) == 1009
    finally:
        up.writer.transport.abort()


async def test_serve_logs_at_the_trace_level(kafka_url: str, channel: str) -> None:
    """``--log-level trace``, one of the levels it lists, ended ``serve`` with a traceback:
    Python's logging knew no TRACE level until uvicorn's configuration named it."""
    flags = ["--log-level", "trace"]
    async with gateway_cluster(kafka_url, channel, nodes=1, extra_args=flags) as [gateway]:
        assert await _status(f"{gateway.url}/readyz") == 200
        assert "Traceback" not in gateway.log()


async def test_metrics_and_health_routes(node: GatewayProcess) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{node.url}/healthz")).json() == {"status": "ok"}
        assert (await http.get(f"{node.url}/readyz")).json() == {"ready": True, "reasons": []}
        metrics = (await http.get(f"{node.url}/metrics")).text
    assert "socketio_kafka_ready 1.0" in metrics
    assert "socketio_kafka_records_skipped_total 0.0" in metrics
    # The process beside the node: its memory, and its collector's work and pauses.
    assert re.search(r"^process_resident_memory_bytes [1-9]", metrics, re.M)
    assert re.search(r'^python_gc_collections_total\{generation="0"\} [1-9]', metrics, re.M)
    assert await _young_collection_timed(node.url), "young collections timed"


async def test_an_idle_connection_is_kept_and_a_silent_one_closed_when_due(
    node: GatewayProcess, kafka_url: str, channel: str
) -> None:
    """Clients and proxies reuse idle connections: the node must not close one first, or a
    request sent as it closes is lost. uvicorn's own 5 s did that, rarely, to a polling
    client (a "transport error", then a new session: docs/decisions.md). A connection that
    sends no request is closed at the read timeout, and counted."""
    assert not await _closed_when_idle(node, 6)
    flags = ["--keep-alive-timeout", "1", "--read-timeout", "1"]
    async with gateway_cluster(kafka_url, channel, nodes=1, extra_args=flags) as [short]:
        assert await _closed_when_idle(short, 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", short.port)
        try:
            async with asyncio.timeout(10):
                assert await reader.read() == b""
        finally:
            writer.close()
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{short.url}/metrics")).text
        assert 'socketio_kafka_limit_refusals_total{limit="read_timeout"} 1.0' in metrics


async def _closed_when_idle(gateway: GatewayProcess, seconds: float) -> bool:
    """Whether the node closes a connection left idle after a request, within ``seconds``;
    one it keeps must serve a second request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    request = b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n"

    async def status() -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        assert length is not None, head
        await reader.readexactly(int(length[1]))
        return head.split(b" ", 2)[1]

    try:
        writer.write(request)
        assert await status() == b"200"
        try:
            async with asyncio.timeout(seconds):
                assert await reader.read(1) == b"", "nothing unasked is sent"
                return True
        except TimeoutError:
            writer.write(request)
            assert await status() == b"200"
            return False
    finally:
        writer.close()


async def _young_collection_timed(url: str, batch: int = 10, most: int = 300) -> bool:
    """Whether the node's collector times a young collection once clients bring one about.

    A paced node collects its young objects only once 5,000 more are held than freed
    (`gateway/collector.py`): start-up may or may not get there after the node's registry
    began timing. Clients that connect and join a room each stay, and hold objects there.
    """
    young = re.compile(r'^socketio_kafka_gc_pause_seconds_count\{generation="0"\} [1-9]', re.M)
    clients: list[Recorder] = []
    try:
        async with httpx.AsyncClient() as http:
            while len(clients) <= most:
                if young.search((await http.get(f"{url}/metrics")).text):
                    return True
                for _ in range(batch):
                    client = Recorder(url)
                    clients.append(client)
                    await client.connect()
                    assert await client.ask("join", {"room": f"r{len(clients)}"}) == {"ok": True}
        return False
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def _wait_status(url: str, status: int, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    last: object = None
    async with httpx.AsyncClient() as http:
        while asyncio.get_running_loop().time() < deadline:
            try:
                last = (await http.get(url, timeout=5)).status_code
            except httpx.TransportError as exc:
                last = exc
            if last == status:
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered {status} (last: {last!r})")


async def test_malformed_socketio_packets_do_not_hurt_the_node(node: GatewayProcess) -> None:
    """Raw Engine.IO frames a broken or hostile client could send."""
    url = node.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        assert (await ws.receive_str()).startswith("0{")  # Engine.IO open
        await ws.send_str('40{"recovery":false}')
        assert (await ws.receive_str()).startswith("40")  # Socket.IO connect
        for garbage in ('42["join",{', "4999", "42", '42[5,"x"]', "4-", "x", '451-["a",'):
            await ws.send_str(garbage)
        await ws.send_bytes(b"\x00\xff garbage")
    other = Recorder(node.url)
    await other.connect()
    try:
        assert await other.ask("join", {"room": "r"}) == {"ok": True}
    finally:
        await other.close()
