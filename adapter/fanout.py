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

__all__ = ["Held", "HoldBuffer", "Outrun", "Socket", "event_args", "event_packets"]

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


#: A recovering socket: its sid and namespace. One connection's sockets in other
#: namespaces are not held with it (their replays, if any, are their own).
Socket = tuple[str, str]
#: A held record: its partition, its offset, its encoded packets.
Held = tuple[int, int, list[Any]]


@dataclass(slots=True)
class _Hold:
    """One socket's held records and their bytes; those that ask for an ack apart too."""

    #: The connection the socket's packets go out on.
    eio_sid: str
    records: list[Held] = field(default_factory=list)
    #: Of ``records``, those that ask for an ack (by identity): an outrun keeps them.
    asks: list[Held] = field(default_factory=list)
    bytes: int = 0
    #: Outrun past the bound: what it held was dropped, and what comes is not kept (but
    #: events that ask for an ack).
    outrun: bool = False
    #: Outrun again, by its asks alone: they were dropped too, and the socket is cut.
    lost: bool = False


@dataclass(frozen=True, slots=True)
class Outrun:
    """What a released hold that was outrun leaves its replay to do as it reads on."""

    #: The held events that ask for an ack, in the order they came. A replay never brings
    #: them back (they carry no offset, and no node stores their callbacks), so they are
    #: kept past the outrun, to go out in the read-on at their place in their partition.
    asks: list[Held]
    #: Asks past the bound themselves (or the node's budget), dropped: the socket must be
    #: cut, for its client to see a disconnect rather than a call that never comes.
    lost: bool


class HoldBuffer:
    """Live packets of sockets under recovery, with the record position each came from.

    A hold is a recovering socket's (sid and namespace), not its connection's: a second
    namespace of the connection, connected or recovered already, goes on receiving live.
    Each socket's hold is bounded as its outgoing queue is (``limits``: packets and bytes,
    whichever comes first; a count alone would let a busy room of large records hold
    gigabytes for one socket). A socket whose replay is outrun by more live traffic than
    that has its held packets dropped, and stays held, keeping nothing more: its release
    then says so, and the replay reads on from where it ended (every dropped record is in
    Kafka, or in the node's history). Events that ask for an ack are no replay's, so an
    outrun keeps them (as many as the bound again; past that the socket is to be cut).
    What all holds keep counts against the node's ``budget``, as its queues do; the
    manager outruns the largest holds when it is over.
    """

    def __init__(
        self, limits: OutboxLimits | None = None, budget: MemoryBudget | None = None
    ) -> None:
        self._held: dict[Socket, _Hold] = {}
        #: Every held socket's bytes together (the node's metrics show it).
        self.bytes = 0
        limits = limits or OutboxLimits()
        self._max = (limits.max_packets, limits.max_bytes)
        self.budget = budget or MemoryBudget(limits.node_max_bytes)

    @property
    def holding(self) -> bool:
        """Whether any socket is held: most deliveries ask nothing more of it."""
        return bool(self._held)

    def hold(self, socket: Socket, eio_sid: str) -> None:
        self.drop(socket)
        self._held[socket] = _Hold(eio_sid)

    def add(
        self, socket: Socket, partition: int, offset: int, packets: list[Any], ask: bool = False
    ) -> bool:
        """Keep ``packets`` if ``socket`` is held; return whether it was (kept or not).
        ``ask``: the event asks for an ack."""
        held = self._held.get(socket)
        if held is None:
            return False
        if held.lost or (held.outrun and not ask):
            return True
        record = (partition, offset, packets)
        held.records.append(record)
        if ask:
            held.asks.append(record)
        size = 0
        for pkt in packets:
            pkt_size = packet_size(pkt)
            self.budget.keep(pkt, pkt_size, HELD_RECORD)
            size += pkt_size
        held.bytes += size
        self.bytes += size
        max_records, max_bytes = self._max
        if len(held.records) > max_records or held.bytes > max_bytes:
            self.outrun(socket)
        return True

    def outrun(self, socket: Socket) -> None:
        """Drop what ``socket`` holds but its asks, and keep nothing more for it but asks:
        its replay reads on. Outrun again (its asks alone too many), drop those too."""
        held = self._held.get(socket)
        if held is None:
            return
        if held.outrun:
            held.lost = True
            held.asks = []
        held.outrun = True
        asks = {id(record) for record in held.asks}
        for record in held.records:
            if id(record) not in asks:
                self._free(held, record)
        held.records = list(held.asks)

    def largest(self) -> list[Socket]:
        """The sockets that hold something, the most bytes first."""
        kept = [(held.bytes, socket) for socket, held in self._held.items() if held.records]
        return [socket for _, socket in sorted(kept, reverse=True)]

    def release(self, socket: Socket, replayed_up_to: tuple[int, ...], send: Send) -> Outrun | None:
        """Send what was held, minus what the replay already covered, then stop holding.
        When it was outrun nothing is sent: the replay must read on from ``replayed_up_to``,
        sending the asks returned on its way.

        Nothing awaits here, so no live packet can arrive while the buffer drains.
        """
        held = self._held.pop(socket, None)
        if held is None:
            return None
        if held.outrun:
            outrun = Outrun(held.asks, held.lost)
            self._forget(held)
            return outrun
        for partition, offset, packets in held.records:
            if offset >= replayed_up_to[partition]:
                send(held.eio_sid, packets)
        self._forget(held)
        return None

    def drop(self, socket: Socket) -> None:
        held = self._held.pop(socket, None)
        if held is not None:
            self._forget(held)

    def _forget(self, held: _Hold) -> None:
        """Drop a hold's records, and their bytes from the node's counts."""
        for record in held.records:
            self._free(held, record)
        held.records = []

    def _free(self, held: _Hold, record: Held) -> None:
        for pkt in record[2]:
            size = packet_size(pkt)
            self.budget.free(pkt, size, HELD_RECORD)
            held.bytes -= size
            self.bytes -= size
