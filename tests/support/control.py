"""A gateway extension for tests: a ``/control`` namespace that runs server-side operations.

Loaded into real gateway processes with ``--extension tests.support.control:install``,
so a test can ask node A to act (emit, enter_room, call, ...) on sockets of node B.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import socketio

from socketio_kafka.gateway import protocol

CONTROL = "/control"
OTHER = "/other"


def install(sio: socketio.AsyncServer) -> None:
    sio.namespaces = [*sio.namespaces, CONTROL, OTHER]
    protocol.register(sio, OTHER)
    manager = sio.manager
    connects: list[str] = []

    async def on_connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        connects.append(sid)

    sio.on("connect", on_connect)

    async def emit(_: str, req: dict[str, Any]) -> dict[str, Any]:
        await sio.emit(
            req["event"],
            req.get("data"),
            to=req.get("room"),
            skip_sid=req.get("skip_sid"),
            namespace=req.get("namespace", "/"),
        )
        return {"ok": True}

    async def burst(_: str, req: dict[str, Any]) -> dict[str, Any]:
        for seq in range(req["count"]):
            await sio.emit(req["event"], {"tag": req["tag"], "seq": seq}, to=req.get("room"))
        return {"ok": True}

    async def call(_: str, req: dict[str, Any]) -> dict[str, Any]:
        reply = await sio.call(
            req["event"],
            req.get("data"),
            to=req["sid"],
            namespace=req.get("namespace", "/"),
            timeout=req.get("timeout", 10),
        )
        return {"ok": True, "reply": reply}

    async def emit_with_ack(_: str, req: dict[str, Any]) -> dict[str, Any]:
        """An emit that asks for an ack, not waited for: never stored for recovery."""
        await sio.emit(req["event"], req.get("data"), to=req["sid"], callback=lambda *_: None)
        return {"ok": True}

    async def enter_room(_: str, req: dict[str, Any]) -> dict[str, Any]:
        await sio.enter_room(req["sid"], req["room"], namespace=req.get("namespace", "/"))
        return {"ok": True}

    async def leave_room(_: str, req: dict[str, Any]) -> dict[str, Any]:
        await sio.leave_room(req["sid"], req["room"], namespace=req.get("namespace", "/"))
        return {"ok": True}

    async def close_room(_: str, req: dict[str, Any]) -> dict[str, Any]:
        await sio.close_room(req["room"], namespace=req.get("namespace", "/"))
        return {"ok": True}

    # Not "disconnect": a reserved event name, which a client may not emit.
    async def disconnect_sid(_: str, req: dict[str, Any]) -> dict[str, Any]:
        await sio.disconnect(req["sid"], namespace=req.get("namespace", "/"))
        return {"ok": True}

    async def rooms(_: str, req: dict[str, Any]) -> dict[str, Any]:
        namespace = req.get("namespace", "/")
        if not manager.is_connected(req["sid"], namespace):
            return {"ok": False, "rooms": []}
        return {"ok": True, "rooms": sorted(sio.rooms(req["sid"], namespace=namespace))}

    async def stats(_: str, *__: Any) -> dict[str, Any]:
        return {"ok": True, "connects": connects, **dataclasses.asdict(manager.stats)}

    async def recovered(_: str, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "recovered": sio.is_recovered(req["sid"])}

    for handler in (
        emit,
        burst,
        call,
        emit_with_ack,
        enter_room,
        leave_room,
        close_room,
        disconnect_sid,
        rooms,
        stats,
        recovered,
    ):
        sio.on(handler.__name__, handler, namespace=CONTROL)
