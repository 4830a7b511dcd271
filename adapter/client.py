"""The client side of connection state recovery, for Python consumers of durable delivery."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from typing import Any

import socketio
from socketio import packet

from .errors import PublishError

__all__ = ["AsyncRecoveringClient"]

_FLUSH_TIMEOUT_S = 2.0


@dataclass(slots=True)
class _Unacked:
    """A publish waiting for its ack: what to send again, and who waits."""

    payload: dict[str, Any]
    reply: asyncio.Future[Any]
    #: Handed to a connection: its outcome is unknown until acked.
    sent: bool = False


class AsyncRecoveringClient(socketio.AsyncClient):  # type: ignore[misc]  # untyped base
    """python-socketio's `AsyncClient`, recovering its session the way the JS client does.

    It keeps the ``pid`` of each namespace's session and the offset of the last event,
    sends both when it reconnects, and takes the offset argument off every event, so
    handlers see the event's own arguments only.

    Example::

        client = AsyncRecoveringClient()
        client.on("news", lambda item: print(item))
        await client.connect("http://localhost:8001", transports=["websocket"])
        ...  # after a transport drop and the automatic reconnection:
        client.recovered["/"]  # True: every event missed meanwhile was delivered

    `publish` sends the gateway's ``publish`` event with an id, and sends it again with
    the same id after a recovered reconnection until it is acked: the gateway produces
    each id once per session (``"repeat": true`` in the ack of one already accepted)::

        reply = await client.publish("room-1", "said", {"text": "hi"})
        reply  # {"ok": True, "id": "...", "repeat": False}
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pids: dict[str, str] = {}
        self.offsets: dict[str, str] = {}
        #: Per namespace: whether its last connection recovered the previous session.
        self.recovered: dict[str, bool] = {}
        self._connecting = False
        #: Per namespace, publishes not acked yet, by id, in the order they were made.
        self._unacked: dict[str, dict[str, _Unacked]] = {}

    async def publish(
        self,
        room: str,
        event: str,
        data: Any,
        *,
        id: str | None = None,
        namespace: str = "/",
    ) -> Any:
        """Publish ``data`` as ``event`` to ``room`` through the gateway; its ack.

        The id (a new one unless given) goes with every attempt: one made while
        disconnected is sent once connected; one sent but not acked is sent again after
        the session is recovered. Raises `PublishError` when the session was not
        recovered (a new one cannot tell a repeat: whether it was delivered is unknown)
        or the client disconnected on purpose.
        """
        pub_id = id if id is not None else uuid.uuid4().hex
        payload = {"room": room, "event": event, "data": data, "id": pub_id}
        pending = _Unacked(payload, asyncio.get_running_loop().create_future())
        unacked = self._unacked.setdefault(namespace, {})
        if pub_id in unacked:
            raise ValueError(f"publish id {pub_id!r} is already waiting for its ack")
        unacked[pub_id] = pending
        if namespace in self.namespaces:
            await self._send_publish(namespace, pending)
        return await pending.reply

    async def _send_publish(self, namespace: str, pending: _Unacked) -> None:
        pub_id = pending.payload["id"]

        def acked(reply: Any = None) -> None:
            waiting = self._unacked.get(namespace, {})
            if waiting.get(pub_id) is pending:
                del waiting[pub_id]
            if not pending.reply.done():
                pending.reply.set_result(reply)

        pending.sent = True
        await self.emit("publish", pending.payload, namespace=namespace, callback=acked)

    async def _resend(self, namespace: str, recovered: bool) -> None:
        """After a connection: every publish not acked yet, in order. Without recovery,
        those already sent fail: the new session cannot tell whether they were taken."""
        for pending in list(self._unacked.get(namespace, {}).values()):
            if recovered or not pending.sent:
                await self._send_publish(namespace, pending)
            else:
                self._fail(namespace, pending, "the session was not recovered")

    def _fail(self, namespace: str, pending: _Unacked, why: str) -> None:
        self._unacked.get(namespace, {}).pop(pending.payload["id"], None)
        if not pending.reply.done():
            pending.reply.set_exception(
                PublishError(f"publish {pending.payload['id']!r} unconfirmed: {why}")
            )

    async def connect(self, *args: Any, wait_timeout: float = 10, **kwargs: Any) -> None:
        """python-socketio's `connect`; it waits longer by default (1 s there), as a
        recovery may wait for the old node to say it lost the client.

        The CONNECT reply of a recovered session comes before its replay: this returns
        before the missed events have all arrived. An attempt that fails keeps the
        sessions and offsets, as the JS client does: the next attempt claims them from
        where the events stopped.
        """
        self._connecting = True
        try:
            await super().connect(*args, wait_timeout=wait_timeout, **kwargs)
        finally:
            self._connecting = False

    async def disconnect(self) -> None:
        """Leave on purpose: the server ends the sessions, so forget them here too.

        Unlike python-socketio's, this waits until the DISCONNECT packets are written
        before closing the transport: a server that sees the close first would take it
        for a lost connection and keep the session. (python-socketio's `connect` calls it
        to clean up a failed attempt: that forgets nothing.)
        """
        if not self._connecting:
            self.pids.clear()
            self.offsets.clear()
            for namespace, unacked in list(self._unacked.items()):
                for pending in list(unacked.values()):
                    self._fail(namespace, pending, "the client disconnected")
        for namespace in self.namespaces:
            await self._send_packet(self.packet_class(packet.DISCONNECT, namespace=namespace))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_FLUSH_TIMEOUT_S):
                await self.eio.queue.join()
        await self.eio.disconnect()

    async def _handle_eio_connect(self) -> None:
        self.sid = self.eio.sid
        auth = await self._get_real_value(self.connection_auth)
        for namespace in self.connection_namespaces:
            await self._send_packet(
                self.packet_class(
                    packet.CONNECT, data=self._recovery_auth(auth, namespace), namespace=namespace
                )
            )

    def _recovery_auth(self, auth: Any, namespace: str) -> Any:
        pid = self.pids.get(namespace)
        if pid is None or not (auth is None or isinstance(auth, dict)):
            return auth
        claim = {**(auth or {}), "pid": pid}
        if namespace in self.offsets:
            claim["offset"] = self.offsets[namespace]
        return claim

    async def _handle_connect(self, namespace: str | None, data: Any) -> None:
        namespace = namespace or "/"
        pid = data.get("pid") if isinstance(data, dict) else None
        self.recovered[namespace] = pid is not None and self.pids.get(namespace) == pid
        if not self.recovered[namespace]:
            self.offsets.pop(namespace, None)
        if isinstance(pid, str):
            self.pids[namespace] = pid
        else:
            self.pids.pop(namespace, None)
        await super()._handle_connect(namespace, data)
        if namespace in self.namespaces:  # not refused by the server
            await self._resend(namespace, self.recovered[namespace])

    async def _handle_event(self, namespace: str | None, id: int | None, data: list[Any]) -> None:
        namespace = namespace or "/"
        if id is None and namespace in self.pids and len(data) >= 2 and isinstance(data[-1], str):
            self.offsets[namespace] = data[-1]
            data = data[:-1]
        await super()._handle_event(namespace, id, data)
