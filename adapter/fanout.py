"""Fan-out of one consumed emit to this node's sockets.

A packet is encoded once per variant (with the offset argument, and without it for
sockets that opted out of recovery) and queued on each socket in turn: no task per
recipient. Sockets being recovered get their live packets held until their replay is
done, so nothing overtakes the replay and nothing is delivered twice at the seam.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from engineio import packet as eio_packet
from socketio import packet
from socketio.packet import Packet

from .codec import Message

__all__ = ["HoldBuffer", "event_args", "event_packets"]

Send = Callable[[str, list[Any]], None]


def event_args(message: Message) -> list[Any]:
    """The emit's arguments as a list, binary attachments put back in place."""
    data: list[Any] = message["data"]
    if message.get("binary"):
        attachments = [base64.b64decode(a) for a in data[1:]]
        data = Packet.reconstruct_binary(data[0], attachments)
    return data


def event_packets(packet_class: type[Packet], message: Message, offset: str | None) -> list[Any]:
    """The Engine.IO packets of one emit record's EVENT, the offset (if any) appended as
    the last argument.

    Whether it is binary comes from the record, so python-socketio need not search the
    data for bytes. A text EVENT of the stock packet class is written here, as its
    ``encode`` writes it, without the packet object (pinned by tests/test_fanout.py).
    """
    args = event_args(message)
    data = [message["event"], *args] if offset is None else [message["event"], *args, offset]
    namespace = message["namespace"]
    binary = bool(message.get("binary"))
    if packet_class.encode is Packet.encode and not binary:
        prefix = "2" if namespace == "/" else f"2{namespace},"
        text = prefix + packet_class.json.dumps(data, separators=(",", ":"))
        return [eio_packet.Packet(eio_packet.MESSAGE, text)]
    pkt = packet_class(packet.EVENT, namespace=namespace, data=data, binary=binary)
    encoded = pkt.encode()
    parts = encoded if isinstance(encoded, list) else [encoded]
    return [eio_packet.Packet(eio_packet.MESSAGE, part) for part in parts]


class HoldBuffer:
    """Live packets of sockets under recovery, with the record position each came from.

    At most ``max_records`` records per socket: a socket whose replay is outrun by more
    live traffic than that is handed to ``overflow`` (which cuts it; it recovers again from
    where its replay got to) and its held packets are dropped, not kept for a client that
    may never read them.
    """

    def __init__(
        self, max_records: int = 50_000, overflow: Callable[[str], object] | None = None
    ) -> None:
        self._held: dict[str, list[tuple[int, int, list[Any]]]] = {}
        self._max_records = max_records
        self._overflow = overflow

    def hold(self, eio_sid: str) -> None:
        self._held[eio_sid] = []

    def add(self, eio_sid: str, partition: int, offset: int, packets: list[Any]) -> bool:
        """Keep ``packets`` if ``eio_sid`` is held; return whether it was (or was cut)."""
        held = self._held.get(eio_sid)
        if held is None:
            return False
        held.append((partition, offset, packets))
        if len(held) > self._max_records:
            del self._held[eio_sid]
            if self._overflow is not None:
                self._overflow(eio_sid)
        return True

    def release(self, eio_sid: str, replayed_up_to: tuple[int, ...], send: Send) -> None:
        """Send what was held, minus what the replay already covered, then stop holding.

        Nothing awaits here, so no live packet can arrive while the buffer drains.
        """
        for partition, offset, packets in self._held.pop(eio_sid, ()):
            if offset >= replayed_up_to[partition]:
                send(eio_sid, packets)

    def drop(self, eio_sid: str) -> None:
        self._held.pop(eio_sid, None)
