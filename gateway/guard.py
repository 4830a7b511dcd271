"""What the gateway refuses from a client before python-socketio acts on it.

python-socketio 5.18 trusts two things a hostile client controls (tests/test_hostile_packets.py):

- A BINARY_EVENT's header announces how many attachments follow (up to 10^10), and every
  binary frame after it is kept until that many came: one connection streaming frames
  under the payload limit grew a node by 100 MB and more, for as long as it went on.
- An event's name is whatever the packet says: ``["connect", ...]`` or ``["disconnect"]``
  ran the app's own connect and disconnect handlers on a connected socket, and a name that
  is not a string (``[[1]]``) crashed the handler task ("Task exception was never
  retrieved"). Node's socket.io refuses both in its parser.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from socketio import packet

from socketio_kafka.adapter.recovery import RecoveringAsyncServer

from .protocol import RESERVED_EVENTS

__all__ = ["ATTACHMENT_OVERHEAD", "GuardedServer"]

logger = logging.getLogger("socketio_kafka.gateway")

#: What an attachment costs beyond its bytes (its object and list slot), so that a packet
#: of many empty attachments is bounded too.
ATTACHMENT_OVERHEAD = 64
#: Bytes held so far by each half-received binary packet; gone with the packet.
_HELD: weakref.WeakKeyDictionary[packet.Packet, int] = weakref.WeakKeyDictionary()


class GuardedServer(RecoveringAsyncServer):
    """The gateway's server: a packet's attachments together fit one payload
    (``max_http_buffer_size``), and events with a reserved or non-string name are dropped.
    """

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        pending = self._binary_packet.get(eio_sid)
        if pending is not None:
            held = _HELD.get(pending, 0) + len(data) + ATTACHMENT_OVERHEAD
            if held > self.eio.max_http_buffer_size:
                await self._refuse(eio_sid, "binary attachments larger than the payload limit")
                return
            _HELD[pending] = held
        await super()._handle_eio_message(eio_sid, data)
        announced = self._binary_packet.get(eio_sid)
        if (
            announced is not None
            and announced is not pending
            and (announced.attachment_count * ATTACHMENT_OVERHEAD > self.eio.max_http_buffer_size)
        ):
            await self._refuse(eio_sid, "more binary attachments than the payload limit allows")

    async def _handle_event(
        self, eio_sid: str, namespace: str | None, id: int | None, data: Any
    ) -> None:
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            logger.info("dropped an event without a name from %s", eio_sid)
            return
        if data[0] in RESERVED_EVENTS:
            logger.info("dropped an event named %r from %s: reserved", data[0], eio_sid)
            return
        await super()._handle_event(eio_sid, namespace, id, data)

    async def _refuse(self, eio_sid: str, why: str) -> None:
        """Forget the half-received packet and close the connection: its client is broken
        or hostile, and anything it sends next would be read as more attachments."""
        self._binary_packet.pop(eio_sid, None)
        logger.warning("closing connection %s: %s", eio_sid, why)
        await self.eio.disconnect(eio_sid)
