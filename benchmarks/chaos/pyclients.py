"""The Python side of the chaos harness's receivers: `AsyncRecoveringClient` members of
rooms, in their own process and speaking the same line protocol as ``chaos.mjs`` (the
commands ``nodes``, ``drop`` and ``settle``; the reports ``ready``, ``nodes``, ``dropped``
and ``result``).

    python -m benchmarks.chaos.pyclients '<spec as JSON>'
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

from socketio_kafka.adapter import AsyncRecoveringClient

_CONNECT_TIMEOUT_S = 30.0
_JOIN_TIMEOUT_S = 20.0


class _Balancer:
    """Round-robin over the nodes up: where a reconnection goes."""

    def __init__(self, urls: list[str]) -> None:
        self.up = list(urls)
        self._turn = 0

    def pick(self) -> str:
        self._turn += 1
        return self.up[self._turn % len(self.up)]


class _Client(AsyncRecoveringClient):
    """Reconnects wherever the balancer says, as a client behind a load balancer does."""

    def __init__(self, balancer: _Balancer) -> None:
        super().__init__(reconnection_delay=0.3, reconnection_delay_max=1.0)
        self._balancer = balancer

    async def connect(self, *args: Any, wait_timeout: float = 10, **kwargs: Any) -> None:
        if self._reconnect_task is not None:  # python-socketio's reconnection loop
            args = (self._balancer.pick(), *args[1:])
        await super().connect(*args, wait_timeout=wait_timeout, **kwargs)


class _Receiver:
    def __init__(self, index: int, url: str, room: str, balancer: _Balancer) -> None:
        self.index, self.url, self.room = index, url, room
        self.got: dict[str, list[int]] = {}
        self._seen: dict[str, set[int]] = {}
        self.reconnects: list[dict[str, Any]] = []
        self.drops = 0
        self._joined = False
        self._rejoins: set[asyncio.Task[None]] = set()
        self.client = _Client(balancer)
        self.client.on("m", self._event)
        self.client.on("connect", self._connected)

    async def _event(self, data: dict[str, int]) -> None:
        p, s = str(data["p"]), data["s"]
        self.got.setdefault(p, []).append(s)
        self._seen.setdefault(p, set()).add(s)

    async def _connected(self) -> None:
        if not self._joined:
            return
        recovered = self.client.recovered.get("/", False)
        self.reconnects.append(
            {"t": time.time(), "recovered": recovered, "url": self.client.connection_url}
        )
        if not recovered:  # the handler runs on the read loop: the join's ack needs it free
            task = asyncio.create_task(self._join())
            self._rejoins.add(task)
            task.add_done_callback(self._rejoins.discard)

    async def start(self) -> None:
        await self.client.connect(
            self.url, transports=["websocket"], wait_timeout=_CONNECT_TIMEOUT_S
        )
        await self._join()
        self._joined = True

    async def _join(self) -> None:
        reply = await self.client.call("join", {"room": self.room}, timeout=_JOIN_TIMEOUT_S)
        if not reply.get("ok"):
            raise RuntimeError(f"join {self.room}: {reply}")

    async def drop(self) -> None:
        """Lose the transport without a goodbye; the client reconnects by itself."""
        self.drops += 1
        ws = self.client.eio.ws
        if ws is not None:
            await ws.close()

    def has(self, last: dict[str, int]) -> bool:
        return all(s in self._seen.get(p, ()) for p, s in last.items())

    def result(self) -> dict[str, Any]:
        return {
            "client": f"py-{self.index}",
            "room": self.room,
            "url": self.url,
            "got": self.got,
            "reconnects": self.reconnects,
            "drops": self.drops,
        }

    async def close(self) -> None:
        await self.client.disconnect()
        await self.client.shutdown()


def _report(kind: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"t": time.time(), "type": kind, **fields}) + "\n")
    sys.stdout.flush()


async def _lines() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _settle(receivers: list[_Receiver], last: dict[str, Any], timeout_s: float) -> bool:
    """Whether every receiver got its room's last acked events within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s

    def done() -> bool:
        return all(r.has(last.get(r.room, {})) for r in receivers)

    while not done() and time.monotonic() < deadline:  # noqa: ASYNC110  # a poll, as in JS
        await asyncio.sleep(0.05)
    return done()


async def _serve(spec: dict[str, Any]) -> None:
    balancer = _Balancer(spec["urls"])
    receivers = [
        _Receiver(i, spec["urls"][r["node"]], r["room"], balancer)
        for i, r in enumerate(spec["receivers"])
    ]
    await asyncio.gather(*(r.start() for r in receivers))
    _report("ready")
    dropped = 0
    reader = await _lines()
    while line := await reader.readline():
        command = json.loads(line)
        cmd = command.pop("cmd")
        if cmd == "status":
            where = Counter(r.client.connection_url for r in receivers if r.client.connected)
            down = sum(not r.client.connected for r in receivers)
            _report("status", disconnected=down, where=where)
        elif cmd == "nodes":
            balancer.up = command["up"]
            _report("nodes")
        elif cmd == "drop":
            picked = [receivers[(dropped + k) % len(receivers)] for k in range(command["n"])]
            dropped += len(picked)
            await asyncio.gather(*(r.drop() for r in picked))
            _report("dropped", clients=[r.index for r in picked])
        elif cmd == "settle":
            settled = await _settle(receivers, command["last"], command["timeoutMs"] / 1000)
            _report("result", settled=settled, receivers=[r.result() for r in receivers])
            break
    await asyncio.gather(*(r.close() for r in receivers), return_exceptions=True)


def main() -> None:
    try:
        asyncio.run(_serve(json.loads(sys.argv[1])))
    except Exception as exc:  # the harness reads every failure as one report
        _report("error", message=repr(exc))
        raise


if __name__ == "__main__":
    main()
