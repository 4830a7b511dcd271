"""The bridges file: what it accepts, and errors that name the line or key."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from socketio_kafka.adapter import KafkaOptions
from socketio_kafka.gateway import bridge
from socketio_kafka.gateway.bridge import BridgeConfigError, load, parse
from socketio_kafka.gateway.bridge.config import Field, Payload
from socketio_kafka.gateway.cli import main

GOOD = """
[kafka]
url = "kafka://broker:9092"
channel = "app"

[[inbound]]
name = "orders"
topics = ["orders", "orders-eu"]
room = "user:{key}/{header.x-region}/{value.customer.id}"
event = "{header.type}"
payload = "value.body"
namespace = "/shop"
tombstone = "order-deleted"
dead_letter = "orders.dead"

[[inbound]]
name = "notes"
topics = "notes"
room = "{{literal}}:{key}"
event = "note"
payload = "bytes"
"""


def test_a_full_file_parses_into_typed_bridges() -> None:
    config = parse(GOOD)
    assert (config.url, config.channel, config.events_topic) == (
        "kafka://broker:9092",
        "app",
        "app.events",
    )
    orders, notes = config.inbound
    assert orders.topics == ("orders", "orders-eu")
    assert orders.room.parts == (
        "user:",
        Field("key"),
        "/",
        Field("header", ("x-region",)),
        "/",
        Field("value", ("customer", "id")),
    )
    assert orders.event.parts == (Field("header", ("type",)),)
    assert orders.payload == Payload("value", ("body",))
    assert (orders.namespace, orders.tombstone, orders.dead_letter) == (
        "/shop",
        "order-deleted",
        "orders.dead",
    )
    assert orders.group == "socketio-kafka-bridge.orders"
    assert notes.topics == ("notes",)
    assert notes.room.parts == ("{literal}:", Field("key"))
    assert (notes.payload, notes.tombstone, notes.namespace) == (Payload("bytes"), None, "/")
    assert not notes.needs_value
    assert orders.needs_value


_MINIMAL = '[[inbound]]\nname = "b"\ntopics = ["t"]\nroom = "r:{key}"\nevent = "e"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[inbound]]\nname = "b"\nroom = "r:{key\n', "at line 3"),
        ("", "at least one [[inbound]]"),
        ("[[other]]\n", "other: unknown key"),
        (_MINIMAL.replace('room = "r:{key}"', 'room = "r:{valu.x}"'), "inbound[0].room: unknown"),
        (_MINIMAL.replace('room = "r:{key}"', 'room = "r:{key"'), "inbound[0].room"),
        (_MINIMAL.replace('room = "r:{key}"', 'room = "{key!r}"'), "no format spec"),
        (_MINIMAL.replace('room = "r:{key}"', 'room = "{value}"'), "inbound[0].room: unknown"),
        (_MINIMAL.replace('room = "r:{key}"', ""), "inbound[0].room: missing"),
        (_MINIMAL.replace('topics = ["t"]', "topics = []"), "inbound[0].topics"),
        (_MINIMAL.replace('topics = ["t"]', 'topics = ["a b"]'), "is no Kafka name"),
        (_MINIMAL.replace('event = "e"', "event = 3"), "inbound[0].event: a string, not int"),
        (_MINIMAL + 'payload = "json"\n', "inbound[0].payload"),
        (_MINIMAL + 'payload = "bytes.x"\n', "inbound[0].payload"),
        (_MINIMAL + 'namespace = "shop"\n', "inbound[0].namespace: must start with '/'"),
        (_MINIMAL + 'start = "middle"\n', "inbound[0].start"),
        (_MINIMAL + "max_room_length = 0\n", "inbound[0].max_room_length"),
        (_MINIMAL + 'tombstone = ""\n', "inbound[0].tombstone"),
        (_MINIMAL + 'rooms = "x"\n', "inbound[0].rooms: unknown key"),
        (_MINIMAL + _MINIMAL, "names must differ"),
        (_MINIMAL + 'dead_letter = "t"\n', "inbound[0].dead_letter: 't' is a topic it reads"),
        (
            '[[outbound]]\nname = "o"\ntopic = "o"\nrooms = "*"\ndead_letter = "socketio.events"\n',
            "outbound[0].dead_letter: 'socketio.events' is a topic it reads",
        ),
        ('[kafka]\nchannel = "a b"\n' + _MINIMAL, "kafka.channel"),
    ],
)
def test_mistakes_are_refused_naming_the_line_or_key(text: str, message: str) -> None:
    with pytest.raises(BridgeConfigError) as refused:
        parse(text)
    assert message in str(refused.value)


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bridges.toml"
    path.write_text(_MINIMAL.replace("{key}", "{nope}"))
    with pytest.raises(BridgeConfigError, match=r"bridges\.toml: inbound\[0\]\.room"):
        load(path)
    with pytest.raises(BridgeConfigError, match="cannot be read"):
        load(tmp_path / "missing.toml")
    path.write_text(_MINIMAL)
    assert load(path).inbound[0].name == "b"


def test_the_cli_reports_a_bad_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bridges.toml"
    path.write_text(_MINIMAL + "payload = 5\n")
    assert main(["bridge", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"socketio-kafka: {path}: inbound[0].payload: a string, not int\n"
    )


def test_the_cli_reports_a_metrics_port_in_use_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bridges.toml"
    path.write_text(_MINIMAL)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["bridge", str(path), "--metrics-port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"socketio-kafka: --metrics-port {port}: ")
    assert err.count("\n") == 1


def test_nodes_read_the_events_topic_read_committed() -> None:
    """Else a SIGKILLed bridge's aborted transaction reached clients (tests/test_bridge.py)."""
    assert KafkaOptions().consumer_kwargs(["b:1"])["isolation_level"] == "read_committed"


def test_bridge_exports() -> None:
    assert sorted(bridge.__all__) == [
        "BadRecord",
        "BridgeConfigError",
        "BridgeStats",
        "BridgesConfig",
        "InboundBridge",
        "Mapper",
        "OutboundPump",
        "OutboundRoute",
        "Pump",
        "load",
        "parse",
        "publish_record",
        "run_bridges",
    ]
