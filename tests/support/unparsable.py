"""Writes records that aiokafka's consumer cannot parse: a header key that is not UTF-8.

Kafka stores any bytes there; aiokafka's producer can only write UTF-8, except through its
pure-Python record builder, which encodes a key with the key's own ``encode``. Run as
``AIOKAFKA_NO_EXTENSIONS=1 python -m tests.support.unparsable BOOTSTRAP TOPIC KEY`` (the
builder is chosen at import): writes a good emit to room ``r``, one that cannot be
parsed, and another good one, each in a batch of its own (aiokafka parses a batch from
its start: records after an unparsable one in its batch cannot be read either).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from aiokafka import AIOKafkaProducer


class _NotUtf8(str):
    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe"


def _emit(event: str, seq: int) -> bytes:
    record = {"v": 1, "method": "emit", "event": event, "data": [seq], "room": "r"}
    return json.dumps(record).encode()


async def write_unparsable(bootstrap: str, topic: str, key: str) -> None:
    """Write the three records from a process of its own, as the module docstring says."""
    writer = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", __name__, bootstrap, topic, key),
        cwd=Path(__file__).parents[2],
        env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"},
    )
    assert await asyncio.wait_for(writer.wait(), 60) == 0


async def main(bootstrap: str, topic: str, key: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, _emit("good", 0), key=key)
        await producer.send_and_wait(
            topic, _emit("poison", 0), key=key, headers=[(_NotUtf8(), b"")]
        )
        await producer.send_and_wait(topic, _emit("good", 1), key=key)
    finally:
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3].encode()))
