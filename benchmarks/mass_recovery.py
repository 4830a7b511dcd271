"""Mass recovery (issue 10): the clients of a SIGKILLed node reconnect to the survivors.

Three gateway processes share a channel. ``--clients`` python recovering clients connect
to node 0, each joining a room of its own; node 0 is SIGKILLed; while they are away an
external producer writes ``--others`` events to ``--rooms`` other rooms with ``--own``
events to each client's room spread among them (routing headers included, as
docs/wire-format.md describes). Then every client reconnects at once, alternately to the
two survivors. Reported, per run:

- ``last_recovered_s``: from the reconnects to the last client holding all it missed;
- ``lost`` and ``duplicated``: missed events not received, or received twice, over all
  clients (``out_of_order``: clients whose events came out of order);
- the survivors' replay counters (records read, decoded; cursor passes where the
  adapter has them) and their CPU seconds during the recovery.

It runs any version of the adapter installed in the running interpreter (the gateways are
started with it), so a venv of an older commit measures "before"::

    python -m benchmarks.mass_recovery --kafka 127.0.0.1:19092 --clients 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import time
import uuid
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import socketio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from socketio_kafka.adapter import AsyncRecoveringClient
from socketio_kafka.adapter.sessions import decode_session
from tests.support.cluster import GatewayProcess, gateway_cluster
from tests.support.control import CONTROL

from .services import wait_until

_CHUNK = 5_000
_CONNECTS_AT_ONCE = 50
_CONNECT_TRIES = 10
#: The JS client's default: a claim the node closed for a retry is not noticed sooner.
_CONNECT_TIMEOUT_S = 20
_TICK = os.sysconf("SC_CLK_TCK")


def _record(room: str, event: str, seq: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    value = {"v": 1, "method": "emit", "event": event, "data": [{"seq": seq}], "room": room}
    headers = [("sio.v", b"1"), ("sio.method", b"emit"), ("sio.ns", b"/")]
    return f"/#{room}".encode(), json.dumps(value).encode(), [*headers, ("sio.room", room.encode())]


async def _produce(bootstrap: str, topic: str, own_rooms: list[str], own: int, args: Any) -> int:
    """The gap: ``own`` events to each own room, spread evenly among the others."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        every = max(1, args.others // own)
        pending: list[Any] = []
        written = 0
        for n in range(args.others):
            records = [_record(f"other-{n % args.rooms}", "other", n)]
            if n % every == 0 and (seq := n // every) < own:
                records += [_record(room, "own", seq) for room in own_rooms]
            for key, value, headers in records:
                pending.append(await producer.send(topic, value, key=key, headers=headers))
            written += len(records)
            if len(pending) >= _CHUNK:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return written
    finally:
        await producer.stop()


class _Client:
    def __init__(self, room: str) -> None:
        self.room = room
        self.client = AsyncRecoveringClient(reconnection=False)
        self.own: list[int] = []
        self.other = 0
        self.done_at: float | None = None
        self.retries = 0
        self.client.on("own", self._own)
        self.client.on("other", self._other)

    async def _own(self, data: dict[str, Any]) -> None:
        self.own.append(data["seq"])

    async def _other(self, data: Any) -> None:
        self.other += 1


async def sessions_saved(bootstrap: str, channel: str, rooms: dict[str, str]) -> None:
    """Wait until the sessions topic holds each sid's session in its room (``rooms``: sid
    to room, emptied as found): a node killed before it wrote a session leaves nothing to
    recover."""
    consumer = AIOKafkaConsumer(
        f"{channel}.sessions", bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async for record in consumer:
            if record.value and not record.key.startswith(b"__"):
                session = decode_session(record.value)
                if rooms.get(session.sid) in session.rooms:
                    del rooms[session.sid]
                    if not rooms:
                        return
    finally:
        await consumer.stop()


async def _stats(controls: list[socketio.AsyncClient]) -> list[dict[str, Any]]:
    replies = await asyncio.gather(
        *(c.call("stats", {}, namespace=CONTROL, timeout=60) for c in controls)
    )
    return list(replies)


def _cpu_s(gateway: GatewayProcess) -> float:
    assert gateway.process is not None
    fields = Path(f"/proc/{gateway.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


async def measure(bootstrap: str, args: Any) -> dict[str, Any]:
    channel = f"mass-{uuid.uuid4().hex[:8]}"
    # Every client here comes from one address: a per-address limit would pace them.
    unlimited = ["--connect-rate", "1000000"] if find_spec("socketio_kafka.gateway.limits") else []
    async with gateway_cluster(bootstrap, channel, 3, unlimited) as gateways:
        controls = []
        for gateway in gateways[1:]:
            control = socketio.AsyncClient()
            await control.connect(gateway.url, namespaces=[CONTROL], transports=["websocket"])
            controls.append(control)
        clients = [_Client(f"own-{n}") for n in range(args.clients)]
        try:
            for at in range(0, len(clients), _CONNECTS_AT_ONCE):
                chunk = clients[at : at + _CONNECTS_AT_ONCE]
                await asyncio.gather(*(_connect(c, gateways[0].url) for c in chunk))
                await asyncio.gather(*(c.client.call("join", {"room": c.room}) for c in chunk))
            rooms = {str(c.client.get_sid("/")): c.room for c in clients}
            async with asyncio.timeout(120):
                await sessions_saved(bootstrap, channel, rooms)
            gateways[0].stop(signal.SIGKILL)
            await wait_until(lambda: not any(c.client.connected for c in clients), 30, "the drops")

            for client in clients:
                client.retries = 0
            before = await _stats(controls)
            topic = f"{channel}.events"
            own_rooms = [c.room for c in clients]
            written = await _produce(bootstrap, topic, own_rooms, args.own, args)
            await _wait_consumed(controls, before, written)
            before = await _stats(controls)
            cpu = [_cpu_s(g) for g in gateways[1:]]

            started = time.perf_counter()
            urls = [g.url for g in gateways[1:]]
            await asyncio.gather(
                *(_recover(c, urls[n % 2], args.own, started) for n, c in enumerate(clients))
            )
            last = max(c.done_at or 0.0 for c in clients)
            cpu = [_cpu_s(g) - c for g, c in zip(gateways[1:], cpu, strict=True)]
            after = await _stats(controls)
            warnings = _warnings(gateways[1:])
        finally:
            await asyncio.gather(
                *(c.client.disconnect() for c in clients if c.client.connected),
                *(c.disconnect() for c in controls),
                return_exceptions=True,
            )

    def delta(name: str) -> int:
        return sum(a.get(name, -1) - b.get(name, -1) for a, b in zip(after, before, strict=True))

    expected = list(range(args.own))
    return {
        "clients": args.clients,
        "others": args.others,
        "first_recovered_s": round(min(c.done_at or last for c in clients), 3),
        "p50_p90_recovered_s": _quantiles([c.done_at for c in clients if c.done_at is not None]),
        "last_recovered_s": round(last, 3),
        "recovered_all": sum(1 for c in clients if c.done_at is not None),
        "not_recovered": sum(1 for c in clients if c.client.recovered.get("/") is not True),
        "connect_retries": sum(c.retries for c in clients),
        "lost": sum(len(set(expected) - set(c.own)) for c in clients),
        "duplicated": sum(len(c.own) - len(set(c.own)) for c in clients),
        "out_of_order": sum(1 for c in clients if c.own != sorted(c.own)),
        "others_received": sum(c.other for c in clients),
        "replay_records_read": delta("replay_records_read"),
        "replay_records_decoded": delta("replay_records_decoded"),
        "replay_passes": delta("replay_passes") if "replay_passes" in after[0] else None,
        "survivors_cpu_s": [round(c, 2) for c in cpu],
        "survivors_warnings": warnings,
    }


def _quantiles(values: list[float]) -> list[float]:
    ordered = sorted(values) or [0.0]
    return [round(ordered[int(q * (len(ordered) - 1))], 3) for q in (0.5, 0.9)]


def _warnings(gateways: list[GatewayProcess]) -> dict[str, int]:
    """The survivors' warnings and errors, by message (without times and ids)."""
    seen: dict[str, int] = {}
    for gateway in gateways:
        assert gateway.log_path is not None
        for line in gateway.log_path.read_text(errors="replace").splitlines():
            if " WARNING " in line or " ERROR " in line:
                message = re.sub(r"sid \S+", "sid *", " ".join(line.split()[2:]))[:120]
                seen[message] = seen.get(message, 0) + 1
    return seen


async def _wait_consumed(
    controls: list[socketio.AsyncClient], before: list[dict[str, Any]], written: int
) -> None:
    deadline = time.monotonic() + 600
    while True:
        now = await _stats(controls)
        if all(
            n["records_consumed"] + n["records_skipped"]
            >= b["records_consumed"] + b["records_skipped"] + written
            for n, b in zip(now, before, strict=True)
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the survivors did not read the gap")
        await asyncio.sleep(0.2)


async def _connect(client: _Client, url: str) -> None:
    for _ in range(_CONNECT_TRIES - 1):
        try:
            await client.client.connect(
                url, transports=["websocket"], wait_timeout=_CONNECT_TIMEOUT_S
            )
        except socketio.exceptions.ConnectionError:
            client.retries += 1  # as a client with reconnection on would, a moment later
            await asyncio.sleep(0.5)
        else:
            return
    await client.client.connect(url, transports=["websocket"], wait_timeout=_CONNECT_TIMEOUT_S)


async def _recover(client: _Client, url: str, own: int, started: float) -> None:
    await _connect(client, url)
    try:
        await wait_until(lambda: len(client.own) >= own, 120, f"{client.room}'s replay")
    except TimeoutError:
        return  # counted as lost
    client.done_at = time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    parser.add_argument("--kafka", default=default_kafka)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--own", type=int, default=20, help="events to each client's room")
    parser.add_argument("--others", type=int, default=50_000, help="events to other rooms")
    parser.add_argument("--rooms", type=int, default=5_000, help="other rooms")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.runs):
        print(json.dumps(asyncio.run(measure(args.kafka, args))), flush=True)


if __name__ == "__main__":
    main()
