"""Fan-out of one consumed emit to this node's sockets.

A packet is encoded once per variant (with the offset argument, and without it for
sockets that opted out of recovery) and queued on each socket in turn: no task per
recipient. Sockets being recovered get their live packets held until their replay is
done, so nothing overtakes the replay and nothing is delivered twice at the seam.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engineio import packet as eio_packet
from socketio import packet
from socketio.packet import Packet

from . import codec
from .budget import HELD_RECORD, MemoryBudget, packet_size
from .codec import Message
from .outbox import OutboxLimits

__all__ = ["HoldBuffer", "event_args", "event_packets"]

Send = Callable[[str, list[Any]], None]


def event_args(message: Message) -> list[Any]:
    """The emit's arguments as a list, binary attachments put back in place."""
    data: list[Any] = message["data"]
    return codec.unpacked(data) if message.get("binary") else data


def event_packets(
    packet_class: type[Packet], message: Message, offset: str | None, ack_id: int | None = None
) -> list[Any]:
    """The Engine.IO packets of one emit record's EVENT, the offset (if any) appended as
    the last argument; one that asks for an ack carries ``ack_id``.

    Whether it is binary comes from the record, so python-socketio need not search the
    data for bytes. A text EVENT of the stock packet class is written here, as its
    ``encode`` writes it, without the packet object (pinned by tests/test_fanout.py).
    """
    args = event_args(message)
    data = [message["event"], *args] if offset is None else [message["event"], *args, offset]
    namespace = message["namespace"]
    binary = bool(message.get("binary"))
    if packet_class.encode is Packet.encode and not binary and ack_id is None:
        prefix = "2" if namespace == "/" else f"2{namespace},"
        text = prefix + packet_class.json.dumps(data, separators=(",", ":"))
        return [eio_packet.Packet(eio_packet.MESSAGE, text)]
    pkt = packet_class(packet.EVENT, namespace=namespace, data=data, id=ack_id, binary=binary)
    encoded = pkt.encode()
    parts = encoded if isinstance(encoded, list) else [encoded]
    return [eio_packet.Packet(eio_packet.MESSAGE, part) for part in parts]


@dataclass(slots=True)
class _Hold:
    """One socket's held records, as (partition, offset, packets), and their bytes."""

    records: list[tuple[int, int, list[Any]]] = field(default_factory=list)
    bytes: int = 0
    #: Outrun past the bound: what it held was dropped, and what comes is not kept.
    outrun: bool = False


class HoldBuffer:
    """Live packets of sockets under recovery, with the record position each came from.

    Each socket's hold is bounded as its outgoing queue is (``limits``: packets and bytes,
    whichever comes first; a count alone would let a busy room of large records hold
    gigabytes for one socket). A socket whose replay is outrun by more live traffic than
    that has its held packets dropped, and stays held, keeping nothing more: its release
    then says so, and the replay reads on from where it ended (every dropped record is in
    Kafka, or in the node's history). What all holds keep counts against the node's
    ``budget``, as its queues do; the manager outruns the largest holds when it is over.
    """

    def __init__(
        self, limits: OutboxLimits | None = None, budget: MemoryBudget | None = None
    ) -> None:
        self._held: dict[str, _Hold] = {}
        #: Every held socket's bytes together (the node's metrics show it).
        self.bytes = 0
        limits = limits or OutboxLimits()
        self._max = (limits.max_packets, limits.max_bytes)
        self.budget = budget or MemoryBudget(limits.node_max_bytes)

    def hold(self, eio_sid: str) -> None:
        self.drop(eio_sid)
        self._held[eio_sid] = _Hold()

    def add(self, eio_sid: str, partition: int, offset: int, packets: list[Any]) -> bool:
        """Keep ``packets`` if ``eio_sid`` is held; return whether it was (kept or not)."""
        held = self._held.get(eio_sid)
        if held is None:
            return False
        if held.outrun:
            return True
        held.records.append((partition, offset, packets))
        size = 0
        for pkt in packets:
            pkt_size = packet_size(pkt)
            self.budget.keep(pkt, pkt_size, HELD_RECORD)
            size += pkt_size
        held.bytes += size
        self.bytes += size
        max_records, max_bytes = self._max
        if len(held.records) > max_records or held.bytes > max_bytes:
            self.outrun(eio_sid)
        return True

    def outrun(self, eio_sid: str) -> None:
        """Drop what ``eio_sid`` holds, and keep nothing more for it: its replay reads on."""
        held = self._held.get(eio_sid)
        if held is not None:
            self._forget(held)
            held.outrun = True

    def largest(self) -> list[str]:
        """The sockets that hold something, the most bytes first."""
        kept = [(held.bytes, eio_sid) for eio_sid, held in self._held.items() if held.records]
        return [eio_sid for _, eio_sid in sorted(kept, reverse=True)]

    def release(self, eio_sid: str, replayed_up_to: tuple[int, ...], send: Send) -> bool:
        """Send what was held, minus what the replay already covered, then stop holding.
        False when it was outrun: nothing is sent, and the replay must read on from
        ``replayed_up_to``.

        Nothing awaits here, so no live packet can arrive while the buffer drains.
        """
        held = self._held.pop(eio_sid, None)
        if held is None:
            return True
        if held.outrun:
            return False
        for partition, offset, packets in held.records:
            if offset >= replayed_up_to[partition]:
                send(eio_sid, packets)
        self._forget(held)
        return True

    def drop(self, eio_sid: str) -> None:
        held = self._held.pop(eio_sid, None)
        if held is not None:
            self._forget(held)

    def _forget(self, held: _Hold) -> None:
        """Drop a hold's records, and their bytes from the node's counts."""
        for _, _, packets in held.records:
            for pkt in packets:
                self.budget.free(pkt, packet_size(pkt), HELD_RECORD)
        self.bytes -= held.bytes
        held.records, held.bytes = [], 0
