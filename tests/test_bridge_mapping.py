"""One source record to one events-topic record: the very record the manager's emit writes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from socketio_kafka.adapter import codec, routing
from socketio_kafka.gateway.bridge import BadRecord, Mapper, parse
from socketio_kafka.gateway.bridge.mapping import Out


@dataclass(frozen=True)
class Rec:
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = field(default_factory=list)


def _mapper(**keys: str | int) -> Mapper:
    settings = {"room": "user:{key}", "event": "order", **keys}
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    config = parse('[[inbound]]\nname = "b"\ntopics = ["t"]\n' + "\n".join(lines))
    return Mapper(config.inbound[0], "bridge:b", 1024 * 1024)


def _as_manager_writes(out: Out | None, event: str, data: object, room: str, ns: str = "/") -> None:
    """The record AsyncKafkaManager.emit(event, data, to=room) writes, host aside."""
    message = codec.emit_message(
        event, data, namespace=ns, room=room, skip_sid=None, callback=None, host_id="bridge:b"
    )
    assert out == Out(
        codec.record_key(message), codec.encode(message), routing.headers_for(message)
    )
    decoded = codec.decode(out.value)
    route = routing.read_route(out.headers)
    assert route is not None
    assert route.rooms == (room,)
    assert route.method == "emit"
    assert decoded["event"] == event


def test_json_value_keyed_by_user() -> None:
    out = _mapper().map(Rec(b"42", b'{"seq": 1, "big": 123456789012345678901234567890}'))
    _as_manager_writes(out, "order", {"seq": 1, "big": 123456789012345678901234567890}, "user:42")


def test_a_field_of_the_value_from_header_and_field_templates() -> None:
    mapper = _mapper(
        room="{value.customer.id}/{header.region}", event="{header.type}", payload="value.body"
    )
    record = Rec(
        None,
        b'{"customer": {"id": 7}, "body": [1, null]}',
        [("region", b"eu"), ("type", b"created"), ("type", b"ignored")],
    )
    _as_manager_writes(mapper.map(record), "created", [1, None], "7/eu")


def test_text_and_bytes_payloads_and_a_null_json_value() -> None:
    _as_manager_writes(
        _mapper(payload="text").map(Rec(b"k", b"hello \xc3\xa9")), "order", "hello é", "user:k"
    )
    out = _mapper(payload="bytes").map(Rec(b"k", b"\x00\xff raw"))
    _as_manager_writes(out, "order", b"\x00\xff raw", "user:k")
    assert out is not None
    assert codec.decode(out.value)["binary"] is True
    # JSON null is one argument, null: the client's handler gets (null), not nothing.
    out = _mapper().map(Rec(b"k", b"null"))
    assert out is not None
    assert codec.decode(out.value)["data"] == [None]


def test_tombstones_pass_or_become_an_event_with_the_key() -> None:
    assert _mapper().map(Rec(b"k", None)) is None
    out = _mapper(tombstone="gone").map(Rec(b"k", None))
    _as_manager_writes(out, "gone", "k", "user:k")
    with pytest.raises(BadRecord, match="tombstone has no value"):
        _mapper(room="{value.id}", tombstone="gone").map(Rec(b"k", None))


@pytest.mark.parametrize(
    ("mapper_keys", "record", "kind"),
    [
        ({}, Rec(b"k", b"\xff not json"), "not_json"),
        ({}, Rec(b"k", b'{"a": NaN}'), "not_json"),
        ({}, Rec(b"k", b"[" * 200 + b"]" * 200), "not_json"),
        ({}, Rec(None, b"{}"), "missing"),
        ({}, Rec(b"\xff", b"{}"), "not_utf8"),
        ({}, Rec(b"k" * 300, b"{}"), "room"),
        ({"room": "{value.id}"}, Rec(b"k", b'{"id": {"x": 1}}'), "missing"),
        ({"room": "{value.id}"}, Rec(b"k", b'{"id": true}'), "missing"),
        ({"room": "{value.id}"}, Rec(b"k", b'{"id": ""}'), "room"),
        ({"room": "{value.id}"}, Rec(b"k", b"[1]"), "missing"),
        ({"room": "{header.h}"}, Rec(b"k", b"{}", [("h", None)]), "missing"),
        ({"room": "{header.h}"}, Rec(b"k", b"{}", [("h", b"\xc3")]), "not_utf8"),
        ({"event": "{header.t}"}, Rec(b"k", b"{}", [("t", b"connect")]), "event"),
        ({"payload": "text"}, Rec(b"k", b"\xed\xa0\x80"), "not_utf8"),  # a lone surrogate
        ({"payload": "value.body"}, Rec(b"k", b"{}"), "missing"),
        # JSON the source may hold (128 levels) is deeper than that once in an emit's record.
        ({}, Rec(b"k", b"[" * 128 + b"]" * 128), "not_json"),
    ],
)
def test_bad_records_raise_with_their_kind(
    mapper_keys: dict[str, str], record: Rec, kind: str
) -> None:
    with pytest.raises(BadRecord) as refused:
        _mapper(**mapper_keys).map(record)
    assert refused.value.kind == kind


def test_a_record_mapped_over_the_size_limit_is_bad() -> None:
    config = parse('[[inbound]]\nname = "b"\ntopics = ["t"]\nroom = "r"\nevent = "e"\n')
    mapper = Mapper(config.inbound[0], "bridge:b", 1000)
    assert mapper.map(Rec(None, b'"' + b"x" * 800 + b'"')) is not None
    with pytest.raises(BadRecord) as refused:
        mapper.map(Rec(None, b'"' + b"x" * 1000 + b'"'))
    assert refused.value.kind == "too_large"
