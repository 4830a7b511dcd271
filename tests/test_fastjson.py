"""adapter/fastjson.py: what python-socketio and the records get is the JSON they got before."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import socketio
from engineio import packet as eio_packet
from socketio.packet import Packet

from socketio_kafka.adapter import fastjson


@pytest.mark.parametrize(
    "value",
    [
        ["event", {"a": 1, "b": [True, None, 1.5]}, "ünïcode ✓", "ep~0.1"],
        {"nested": {"deep": [[], {}, ""]}},
        "plain",
        2**63 - 1,
        2**80,  # beyond orjson: the standard library writes it
    ],
)
def test_round_trips_and_reads_back_as_the_standard_library_does(value: Any) -> None:
    text = fastjson.dumps(value, separators=(",", ":"))
    assert json.loads(text) == value
    assert fastjson.loads(text) == value
    assert fastjson.loads(text.encode()) == value


def test_non_string_keys_are_written_as_the_standard_library_writes_them() -> None:
    value = {1: "one", 2.5: "x", None: "n", False: "f"}
    assert fastjson.loads(fastjson.dumps(value)) == json.loads(json.dumps(value))


def test_not_json_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="Expecting"):
        fastjson.loads(b"{nope")
    with pytest.raises(ValueError, match="Expecting"):
        fastjson.loads(b"\xff\xfe")


def test_what_only_the_standard_library_reads_is_still_read() -> None:
    assert math.isnan(fastjson.loads("[NaN]")[0])


def test_socketio_packets_encode_and_decode_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Packet, "json", fastjson)
    encoded = Packet(data=["news", {"a": "é"}], namespace="/chat").encode()
    assert encoded == '2/chat,["news",{"a":"é"}]'
    decoded = Packet(encoded_packet=encoded)
    assert (decoded.namespace, decoded.data) == ("/chat", ["news", {"a": "é"}])


def test_a_server_takes_it_as_its_json_module(monkeypatch: pytest.MonkeyPatch) -> None:
    # The server sets both classes' json: the monkeypatch puts them back afterwards.
    monkeypatch.setattr(Packet, "json", Packet.json)
    monkeypatch.setattr(eio_packet.Packet, "json", eio_packet.Packet.json)
    socketio.AsyncServer(json=fastjson)
    assert Packet.json is fastjson
    assert eio_packet.Packet.json is fastjson
