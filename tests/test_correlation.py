"""A publish's correlation id: returned in its ack, carried by its record as ``sio.cid``,
logged at debug where it is produced and where it is delivered, so that a message can be
followed across nodes."""

from __future__ import annotations

import asyncio
import json
import os
import re

from aiokafka import AIOKafkaConsumer

from .support.clients import Recorder
from .support.cluster import GatewayProcess, gateway_cluster


async def _cids(bootstrap: str, topic: str, count: int) -> dict[str, str]:
    """The ``sio.cid`` headers of the first ``count`` records that have one, by event data."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: dict[str, str] = {}
    try:
        async with asyncio.timeout(30):
            while len(found) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        headers = dict(record.headers)
                        if "sio.cid" in headers and record.value is not None:
                            data = json.loads(record.value)["data"][0]
                            found[data] = headers["sio.cid"].decode()
    finally:
        await consumer.stop()
    return found


async def test_a_publish_carries_its_correlation_id_across_nodes(
    kafka_url: str, kafka_bootstrap: str, channel: str
) -> None:
    debug = ["--log-level", "debug"]
    async with gateway_cluster(kafka_url, channel, nodes=2, extra_args=debug) as nodes:
        sender, receiver = Recorder(nodes[0].url), Recorder(nodes[1].url)
        await sender.connect()
        await receiver.connect()
        assert await receiver.ask("join", {"room": "r"}) == {"ok": True}
        mine = {"room": "r", "event": "said", "data": "mine", "id": "order-42"}
        assert await sender.ask("publish", mine) == {"ok": True, "id": "order-42", "repeat": False}
        made = await sender.ask("publish", {"room": "r", "event": "said", "data": "made"})
        assert made["ok"] is True
        assert re.fullmatch("[0-9a-f]{32}", made["id"])
        for bad in ("", "x" * 65, 42, "tab\there"):
            reply = await sender.ask("publish", {**mine, "id": bad})
            assert reply["ok"] is False
            assert "'id' must be a string" in reply["error"]
        assert await receiver.wait_for("said", 2) == ["mine", "made"]
        assert await _cids(kafka_bootstrap, f"{channel}.events", 2) == {
            "mine": "order-42",
            "made": made["id"],
        }
        for cid in ("order-42", made["id"]):
            assert f"correlation id {cid}" in _full_log(nodes[0])  # produced there
            assert re.search(f"delivering .* correlation id {cid}", _full_log(nodes[1]))
        await sender.close()
        await receiver.close()


def _full_log(node: GatewayProcess) -> str:
    assert node.log_path is not None
    return node.log_path.read_text(errors="replace")


def test_the_ids_a_node_makes_repeat_in_no_process_forked_from_it() -> None:
    from socketio_kafka.gateway import protocol

    def made(count: int) -> list[str]:
        return [protocol._correlation_id({}) for _ in range(count)]

    read, write = os.pipe()
    pid = os.fork()  # both go on from the same count
    if pid == 0:  # the child: its ids, then out without pytest's teardown
        os.write(write, json.dumps(made(1_000)).encode())
        os._exit(0)
    os.close(write)
    parent = made(1_000)
    with os.fdopen(read) as pipe:
        child = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert all(re.fullmatch("[0-9a-f]{32}", cid) for cid in parent + child)
    assert len(set(parent) | set(child)) == 2_000
