"""Fan-out pieces: event arguments, packets, the hold buffer: without a broker."""

from __future__ import annotations

from typing import Any

import pytest
from engineio import packet as eio_packet
from socketio.packet import EVENT, Packet

from socketio_kafka.adapter import codec
from socketio_kafka.adapter.fanout import HoldBuffer, Outrun, event_args, event_packets
from socketio_kafka.adapter.outbox import OutboxLimits

S1 = ("s1", "/")  # a recovering socket: its sid and namespace


def _message(data: Any, event: str = "e", namespace: str = "/") -> codec.Message:
    """An emit record as the manager reads it back from Kafka."""
    message = codec.emit_message(
        event, data, namespace=namespace, room=None, skip_sid=None, callback=None, host_id="h"
    )
    return codec.decode(codec.encode(message))


def _args(data: Any) -> list[Any]:
    return event_args(_message(data))


def test_event_args_as_python_socketio_sends_them() -> None:
    assert _args("x") == ["x"]
    assert _args((1, "two")) == [1, "two"]
    assert _args(None) == []
    assert _args({"raw": b"\x00\x01"}) == [{"raw": b"\x00\x01"}]


def test_offset_is_the_last_argument_of_one_encoded_packet() -> None:
    (packet,) = event_packets(Packet, _message({"a": 1}, "news"), "ep~0.3")
    assert packet.data == '2["news",{"a":1},"ep~0.3"]'
    (plain,) = event_packets(Packet, _message(1, "news", "/chat"), None)
    assert plain.data == '2/chat,["news",1]'


@pytest.mark.parametrize("namespace", ["/", "/chat"])
@pytest.mark.parametrize("offset", [None, "ep~0.3"])
@pytest.mark.parametrize("data", ["x", (1, None, [2.5, {"k": "é"}]), None])
def test_text_events_are_encoded_as_python_socketio_encodes_them(
    namespace: str, offset: str | None, data: Any
) -> None:
    """The text path writes the packet itself: it must equal the library's own encoding."""
    message = _message(data, "ev", namespace)
    (packet,) = event_packets(Packet, message, offset)
    args = event_args(message) + ([offset] if offset else [])
    expected = Packet(EVENT, data=["ev", *args], namespace=namespace).encode()
    assert packet.data == expected


class _TaggedPacket(Packet):
    """A server's own packet class (as msgpack's is): its encode must be the one used."""

    def encode(self) -> Any:
        return "tagged:" + str(super().encode())


def test_another_packet_class_encodes_its_own_way() -> None:
    (packet,) = event_packets(_TaggedPacket, _message({"a": 1}, "news"), "ep~0.3")
    assert packet.data == 'tagged:2["news",{"a":1},"ep~0.3"]'


def test_binary_event_packets_carry_attachments() -> None:
    packets = event_packets(Packet, _message(b"\x01\x02", "blob"), "ep~1")
    assert len(packets) == 2
    assert packets[1].data == b"\x01\x02"


def test_hold_buffer_drops_what_the_replay_covered_and_keeps_order() -> None:
    sent: list[tuple[str, list[Any]]] = []

    def send(eio_sid: str, packets: list[Any]) -> None:
        sent.append((eio_sid, packets))

    holds = HoldBuffer()
    assert not holds.add(S1, 0, 1, ["a"])
    holds.hold(S1, "e1")
    assert holds.add(S1, 0, 4, ["replayed-already"])
    assert holds.add(S1, 1, 7, ["live-1"])
    assert holds.add(S1, 0, 5, ["live-0"])
    assert holds.release(S1, replayed_up_to=(5, 7), send=send) is None
    assert sent == [("e1", ["live-1"]), ("e1", ["live-0"])]
    assert not holds.add(S1, 0, 10, ["after"])


def test_a_hold_is_the_recovering_sockets_not_its_connections() -> None:
    """A connection in two namespaces, one of them recovering: the other's live events
    go out at once, and an outrun of the one drops nothing of the other's."""
    holds = HoldBuffer(OutboxLimits(max_packets=2))
    holds.hold(("s1", "/"), "e1")
    assert not holds.add(("s2", "/chat"), 0, 1, ["chat"])  # same connection: not held
    for offset in range(3):
        assert holds.add(("s1", "/"), 0, offset, [offset])
    assert holds.largest() == []  # outrun: nothing kept


def test_a_hold_outrun_past_its_bound_drops_what_it_held_and_keeps_nothing_more() -> None:
    holds = HoldBuffer(OutboxLimits(max_packets=3))
    holds.hold(S1, "e1")
    for offset in range(3):
        assert holds.add(S1, 0, offset, [offset])
    assert holds.add(S1, 0, 3, [3])  # the fourth: over the bound, dropped with the rest
    assert holds.add(S1, 0, 4, [4])  # still held (not delivered live), not kept
    sent: list[Any] = []
    # Outrun: nothing sent, and the replay must read on from where it ended.
    assert holds.release(S1, (0,), lambda sid, packets: sent.extend(packets)) == Outrun([], False)
    assert sent == []
    assert not holds.add(S1, 0, 5, [5])  # no longer held
    holds.hold(S1, "e1")  # held again for the next stretch: kept as before
    assert holds.add(S1, 0, 6, [6])
    assert holds.release(S1, (6,), lambda sid, packets: sent.extend(packets)) is None
    assert sent == [6]


def test_an_outrun_hold_keeps_the_events_that_ask_for_an_ack_up_to_its_bound() -> None:
    holds = HoldBuffer(OutboxLimits(max_packets=2))
    holds.hold(S1, "e1")
    assert holds.add(S1, 0, 0, ["ask-0"], ask=True)
    for offset in (1, 2):  # the third record: over the bound, outrun
        assert holds.add(S1, 0, offset, [offset])
    assert holds.add(S1, 1, 3, ["ask-3"], ask=True)
    assert holds.add(S1, 0, 4, [4])  # not kept
    assert holds.bytes == 2  # the asks' (a packet without data counts 1)
    assert holds.release(S1, (0, 0), lambda sid, packets: None) == Outrun(
        [(0, 0, ["ask-0"]), (1, 3, ["ask-3"])], False
    )
    assert holds.bytes == 0
    # Past the bound by asks alone, they are dropped too: the socket is to be cut.
    holds.hold(S1, "e1")
    for offset in range(4):
        assert holds.add(S1, 0, offset, [offset], ask=True)
    assert holds.add(S1, 0, 9, [9], ask=True)
    assert holds.release(S1, (0,), lambda sid, packets: None) == Outrun([], True)
    assert holds.bytes == 0


def test_a_hold_of_large_records_is_outrun_by_its_bytes_before_its_count() -> None:
    holds = HoldBuffer(OutboxLimits(max_packets=1000, max_bytes=10_000))
    holds.hold(S1, "e1")
    big = [eio_packet.Packet(eio_packet.MESSAGE, "x" * 3_000)]
    for offset in range(3):
        assert holds.add(S1, 0, offset, big)
    assert holds.bytes == 9_003  # 3,000 characters and the packet type each
    assert holds.add(S1, 0, 3, big)  # 12,004: over 10,000 with 4 records of the 1,000
    assert holds.bytes == 0  # dropped
    assert holds.add(S1, 0, 4, big)
    assert holds.bytes == 0  # and nothing more kept
    assert holds.release(S1, (0,), lambda sid, packets: None) == Outrun([], False)
