"""The record format and the key choice, without a broker."""

from __future__ import annotations

import enum
import json
from typing import Any

import pytest
from socketio.packet import Packet

from socketio_kafka.adapter import AsyncKafkaManager, PayloadError, RecordDecodeError, codec


def _emit(**overrides: object) -> codec.Message:
    fields: dict[str, object] = {
        "namespace": "/",
        "room": None,
        "skip_sid": None,
        "callback": None,
        "host_id": "h1",
    }
    fields.update(overrides)
    data = fields.pop("data", {"a": 1})
    return codec.emit_message("news", data, **fields)  # type: ignore[arg-type]


def test_emit_round_trips_through_json() -> None:
    message = _emit(room="r", skip_sid=["s1"], callback=("sid", "/", 7))
    decoded = codec.decode(codec.encode(message))
    assert decoded == {**message, "v": codec.FORMAT_VERSION}
    assert decoded["callback"] == ["sid", "/", 7]


def test_tuple_data_becomes_several_arguments() -> None:
    assert _emit(data=(1, "two", None))["data"] == [1, "two", None]
    assert _emit(data=[1, 2])["data"] == [[1, 2]]


@pytest.mark.parametrize(("data", "args"), [((), []), (None, []), ((None,), [None])])
def test_no_argument_travels_as_python_socketio_sends_it(data: object, args: list[object]) -> None:
    """``emit("e")`` and ``emit("e", ())`` have no argument; ``emit("e", (None,))`` has one."""
    assert codec.decode(codec.encode(_emit(data=data)))["data"] == args


def test_integers_beyond_64_bits_stay_exact() -> None:
    """orjson reads them as floats: ``2**64`` would reach clients as 1.8446744073709552e+19."""
    numbers = [2**64, -(2**63) - 1, 10**30, 2**63 - 1, 1.5e19]
    assert codec.decode(codec.encode(_emit(data=tuple(numbers))))["data"] == numbers


def test_binary_parts_travel_as_base64_attachments() -> None:
    message = _emit(data={"raw": b"\x00\xff", "n": 1})
    assert message["binary"] is True
    value = codec.encode(message)
    json.loads(value)  # the record stays plain JSON
    placeholder, attachment = codec.decode(value)["data"]
    assert placeholder == [{"raw": {"_placeholder": True, "num": 0}, "n": 1}]
    assert attachment == "AP8="


@pytest.mark.parametrize(
    "data",
    [
        {"text": "x", "n": [1, 2.5, None, True]},
        {"raw": [1, {"deep": bytearray(b"y")}]},
        (b"a", "b"),
        [(b"in a tuple",)],  # python-socketio's walk does not look into tuples
        {1: b"a non-string key"},
        {1: "a non-string key"},
        object(),
        [[[[]]]],
        None,
    ],
)
def test_binary_is_told_as_python_socketio_tells_it(data: Any) -> None:
    """orjson answers first (it refuses bytes); what it refuses is walked as before."""
    args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
    assert _emit(data=data)["binary"] is Packet.data_is_binary(args)


@pytest.mark.parametrize(
    ("message", "key"),
    [
        ({"method": "emit", "namespace": "/", "room": None}, b"/"),
        ({"method": "emit", "namespace": "/chat", "room": "lobby"}, b"/chat#lobby"),
        ({"method": "enter_room", "namespace": "/", "room": "lobby", "sid": "s1"}, b"/#lobby"),
        ({"method": "leave_room", "namespace": "/", "room": "lobby", "sid": "s1"}, b"/#lobby"),
        ({"method": "close_room", "namespace": "/", "room": "lobby"}, b"/#lobby"),
        ({"method": "disconnect", "namespace": "/", "sid": "s1"}, b"/#s1"),
        ({"method": "callback", "namespace": "/", "sid": "s1"}, b"/#s1"),
        ({"method": "emit", "namespace": "/", "room": ["lobby"]}, b"/#lobby"),
        # Several rooms: a broadcast's key, on a partition every replay of "/" reads.
        ({"method": "emit", "namespace": "/", "room": ["lobby", "vip"]}, b"/"),
    ],
)
def test_record_key_follows_the_target(message: codec.Message, key: bytes) -> None:
    assert codec.record_key(message) == key


def test_room_operations_share_the_key_of_the_room_emits() -> None:
    """A join must not overtake, or be overtaken by, emits to the same room."""
    join = {"method": "enter_room", "namespace": "/", "room": "r", "sid": "s"}
    assert codec.record_key(join) == codec.record_key(_emit(room="r"))


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"\xff\xfe",
        b"[]",
        b'"text"',
        b'{"method": "emit"}',
        b'{"v": 2, "method": "emit", "event": "e", "data": [1]}',
        b'{"v": 1, "method": "explode"}',
        b'{"v": 1, "method": "emit", "event": 5, "data": [1]}',
        b'{"v": 1, "method": "emit", "event": "e", "data": {"a": 1}}',
        b'{"v": 1, "method": "emit", "event": "e", "data": [1], "room": 3}',
        b'{"v": 1, "method": "emit", "event": "e", "data": [1], "callback": [1, 2]}',
        b'{"v": 1, "method": "emit", "event": "e", "data": [1, 2], "binary": true}',
        b'{"v": 1, "method": "callback", "sid": "s", "id": true, "args": [], "host_id": "h"}',
        b'{"v": 1, "method": "disconnect"}',
    ],
)
def test_malformed_records_raise_decode_error(value: bytes | None) -> None:
    with pytest.raises(RecordDecodeError):
        codec.decode(value)


def _raw_emit(**fields: object) -> bytes:
    return json.dumps({"v": 1, "method": "emit", "event": "e", "data": [1], **fields}).encode()


def _nested(depth: int) -> bytes:
    """An emit record nested ``depth`` levels deep: the record is 1, its data 2."""
    return (
        b'{"v":1,"method":"emit","event":"e","data":'
        + b"[" * (depth - 1)
        + b"]" * (depth - 1)
        + b"}"
    )


@pytest.mark.parametrize(
    "value",
    [
        _nested(5_000),  # the stdlib json fallback recursed into RecursionError
        _nested(codec.MAX_DEPTH + 1),
        _raw_emit(data=[float("nan")]),  # json.dumps writes NaN: not JSON
        _raw_emit(data=[float("inf")]),
        b'{"v":1,"method":"emit","event":"e","data":[1e400]}',
        # Lone surrogates, escaped or as UTF-8 bytes: no key or text frame can carry them.
        b'{"v":1,"method":"emit","event":"e","data":[1],"room":"\\ud800"}',
        b'{"v":1,"method":"emit","event":"e","data":[1],"room":"\xed\xa0\x80"}',
        _raw_emit(data=[[{"_placeholder": True, "num": 0}], "not base64!"], binary=True),
        _raw_emit(data=[[{"_placeholder": True, "num": 1}], "AA=="], binary=True),
        _raw_emit(data=[[{"_placeholder": True, "num": "0"}], "AA=="], binary=True),
        _raw_emit(data=[[{"_placeholder": True, "num": 10**30}], "AA=="], binary=True),
        _raw_emit(data=[{"_placeholder": True, "num": 0}, "AA=="], binary=True),
        _raw_emit(data=[[1], "é"], binary=True),
        _raw_emit(data=[], binary=True),
        _raw_emit(room=[]),
        _raw_emit(room=[{"a": 1}]),
        _raw_emit(skip_sid=[["s"]]),
        _raw_emit(callback=["r", "/", True]),
    ],
)
def test_records_the_fan_out_could_not_deliver_are_refused(value: bytes) -> None:
    with pytest.raises(RecordDecodeError):
        codec.decode(value)


def test_nesting_up_to_the_limit_is_delivered() -> None:
    assert codec.decode(_nested(codec.MAX_DEPTH))["event"] == "e"


def test_a_minimal_record_from_another_language_decodes() -> None:
    value = b'{"v":1,"method":"emit","event":"news","data":["hello"],"room":"lobby"}'
    message = codec.decode(value)
    assert message["namespace"] == "/"
    assert message["room"] == "lobby"


def _nested_data(depth: int) -> list[Any]:
    """Lists ``depth`` deep: an emit's record holds them two levels down."""
    data: list[Any] = []
    for _ in range(depth - 1):
        data = [data]
    return data


@pytest.mark.parametrize(
    "data",
    [
        "caf\udce9",  # a lone surrogate: os.fsdecode of latin-1 bytes
        [float("nan"), 2**70],  # orjson refuses the integer; the standard library wrote NaN
        [float("inf"), 2**70],
        _nested_data(codec.MAX_DEPTH),
    ],
    ids=["lone-surrogate", "nan-beside-a-long-integer", "infinity", "too-deep"],
)
def test_data_no_node_could_read_back_is_refused_before_it_is_written(data: Any) -> None:
    """Such a record was written and acknowledged, then every node skipped it: the emit
    told success and nobody got the event."""
    message = codec.emit_message(
        "e", data, namespace="/", room=None, skip_sid=None, callback=None, host_id="h"
    )
    with pytest.raises(PayloadError):
        codec.encode(message)


def test_what_encodes_decodes() -> None:
    for data in (float("nan"), [2**70, 1.5], "é\u2028", _nested_data(codec.MAX_DEPTH - 2)):
        message = codec.emit_message(
            "e", data, namespace="/", room=None, skip_sid=None, callback=None, host_id="h"
        )
        codec.decode(codec.encode(message))


def test_an_acks_answer_with_bytes_travels_as_an_emits_binary_parts() -> None:
    args = [b"\x00", {"raw": b"\x01", "n": 1}]
    message = codec.decode(codec.encode(codec.callback_message("h", "sid", "/", 3, args)))
    assert message["binary"] is True
    assert codec.unpacked(message["args"]) == args
    plain = codec.decode(codec.encode(codec.callback_message("h", "sid", "/", 4, ["pong"])))
    assert (plain["args"], "binary" in plain) == (["pong"], False)
    broken = json.dumps({"v": 1, **plain, "args": [[{"_placeholder": True, "num": 1}]]})
    with pytest.raises(RecordDecodeError):
        codec.decode(json.dumps({**json.loads(broken), "binary": True}).encode())


@pytest.mark.parametrize("room", [42, [42], ["a", 7], ("a", 7)])
async def test_rooms_that_are_not_strings_are_refused_before_anything_is_written(
    room: Any,
) -> None:
    """python-socketio takes a room ``42``: an emit to it raised an unclear error, or went
    out as a record every node skipped."""
    manager = AsyncKafkaManager("kafka://127.0.0.1:1", "never-started")
    with pytest.raises(TypeError, match="rooms and sids travel as strings"):
        await manager.emit("e", 1, room=room)
    await manager.emit("e", 1, room=())  # to nobody: nothing written, as nobody gets it
    assert manager.stats.published == 0


def test_rooms_of_a_str_subclass_and_skipped_sids_in_a_tuple_go_as_plain_strings() -> None:
    class Room(enum.StrEnum):
        LOBBY = "lobby"

    message = codec.emit_message(
        "e", 1, namespace="/", room=[Room.LOBBY, "x"], skip_sid=None, callback=None, host_id="h"
    )
    message["skip_sid"] = ("s1",)
    codec.plain_targets(message)
    assert (message["room"], message["skip_sid"]) == (["lobby", "x"], ["s1"])
    assert type(message["room"][0]) is str
    assert codec.decode(codec.encode(message))["room"] == ["lobby", "x"]
