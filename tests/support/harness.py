"""A started cluster plus one control client per node, and barriers built on Kafka order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any

from .clients import Recorder, connect_all
from .cluster import GatewayProcess
from .control import CONTROL
from .waiting import wait_until


class Harness:
    """Drives a gateway cluster: control calls on any node, clients spread over nodes."""

    def __init__(self, gateways: list[GatewayProcess]) -> None:
        self.gateways = gateways
        self.controls: list[Recorder] = []
        self.clients: list[Recorder] = []
        self.external_records = 0

    async def __aenter__(self) -> Harness:
        self.controls = await connect_all([Recorder(g.url, [CONTROL]) for g in self.gateways])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(
            *(c.close() for c in [*self.clients, *self.controls]), return_exceptions=True
        )

    async def restart_all(self) -> None:
        """Stop every node (gracefully), start them again on the same ports."""
        for gateway in self.gateways:
            gateway.stop()
        for gateway in self.gateways:
            gateway.start()
        await asyncio.gather(*(g.wait_ready() for g in self.gateways))
        await asyncio.gather(*(c.close() for c in self.controls), return_exceptions=True)
        self.controls = await connect_all([Recorder(g.url, [CONTROL]) for g in self.gateways])

    async def client(self, node: int, namespaces: list[str] | None = None) -> Recorder:
        recorder = await Recorder(self.gateways[node].url, namespaces).connect()
        self.clients.append(recorder)
        return recorder

    async def clients_on(
        self, nodes: Iterable[int], namespaces: list[str] | None = None
    ) -> list[Recorder]:
        return list(await asyncio.gather(*(self.client(n, namespaces) for n in nodes)))

    async def control(self, node: int, op: str, **request: Any) -> dict[str, Any]:
        # A burst of 5,000 awaited emits takes one producer linger plus a round trip each.
        reply = await self.controls[node].ask(op, request, namespace=CONTROL, timeout=120)
        assert isinstance(reply, dict)
        assert reply.get("ok"), f"control {op} on node {node} failed: {reply}"
        return reply

    def live_nodes(self) -> list[int]:
        return [n for n, g in enumerate(self.gateways) if g.process and g.process.poll() is None]

    async def stats(self) -> list[dict[str, Any]]:
        """Counters of every node still running."""
        nodes = self.live_nodes()
        return list(await asyncio.gather(*(self.control(n, "stats") for n in nodes)))

    async def settle(self, timeout: float = 30) -> None:
        """Wait until every node has consumed every record produced so far."""
        stats = await self.stats()
        produced = sum(s["published"] for s in stats) + self.external_records
        deadline = asyncio.get_running_loop().time() + timeout
        while not all(s["records_consumed"] + s["records_skipped"] >= produced for s in stats):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"nodes did not consume {produced} records: {stats}")
            await asyncio.sleep(0.05)
            stats = await self.stats()

    async def wait_gone(self, node: int, sid: str, timeout: float = 15) -> None:
        """Wait until ``node`` has processed the disconnect of socket ``sid``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (await self.controls[node].ask("rooms", {"sid": sid}, namespace=CONTROL))["ok"]:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"node {node} never saw {sid} go")
            await asyncio.sleep(0.05)

    async def gap_traffic(self, node: int, sid: str, room: str, room_count: int = 1000) -> None:
        """What a client misses while away: events to its room, its sid, and everyone."""
        await asyncio.gather(
            self.control(node, "burst", event="room-ev", tag="r", count=room_count, room=room),
            self.control(node, "burst", event="sid-ev", tag="s", count=100, room=sid),
            self.control(node, "burst", event="all-ev", tag="a", count=100),
        )

    async def barrier(self, clients: Iterable[Recorder], namespace: str = "/") -> None:
        """Return once ``clients`` got everything their nodes delivered before this call.

        Every node first consumes all produced records (delivery is enqueued on each
        socket in that order), then a marker sent to each client's sid arrives behind it.
        """
        await self.settle()
        token = uuid.uuid4().hex
        clients = list(clients)
        for recorder in clients:
            await self.control(
                0,
                "emit",
                event="barrier",
                data=token,
                room=recorder.sid(namespace),
                namespace=namespace,
            )
        for recorder in clients:
            await wait_until(
                lambda r=recorder: token in r.events("barrier", namespace),
                15,
                f"barrier at {recorder.url}",
            )
