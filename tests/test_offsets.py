"""The offset string clients hold, and the CONNECT auth claim: without a broker."""

from __future__ import annotations

import pytest

from socketio_kafka.adapter import OffsetError, offsets
from socketio_kafka.adapter.recovery import _Claim


def test_round_trip() -> None:
    mark = offsets.encode("ab12", [0, 35, 36, 10**12])
    assert mark == "ab12~0.z.10.cre66i9s"
    assert offsets.decode(mark, "ab12", 4).offsets == (0, 35, 36, 10**12)


@pytest.mark.parametrize(
    "value",
    [
        None,
        12,
        ["ab12~0.1"],
        "",
        "ab12",
        "ab12~",
        "ab12~0",  # one partition, the topic has two
        "ab12~0.1.2",
        "other~0.1",  # another epoch: the topic was recreated, or another cluster
        "ab12~0.-1",
        "ab12~0.+1",
        "ab12~0. 1",
        "ab12~0.1_0",
        "AB!2~0.1",
        "ab12~" + "1." * 5000 + "1",
    ],
)
def test_anything_else_is_refused(value: object) -> None:
    with pytest.raises(OffsetError):
        offsets.decode(value, "ab12", 2)


def test_a_position_never_goes_behind_a_floor() -> None:
    position = offsets.Position("e", (5, 1, 9)).at_least(offsets.Position("e", (3, 4, 9)))
    assert position.offsets == (5, 4, 9)


@pytest.mark.parametrize(
    ("auth", "pid", "offset", "opt_out", "rest"),
    [
        ({"pid": "p1", "offset": "o", "token": "t"}, "p1", "o", False, {"token": "t"}),
        ({"pid": "p1"}, "p1", None, False, None),
        ({"recovery": False, "token": "t"}, None, None, True, {"token": "t"}),
        ({"pid": 5}, None, None, False, None),
        ({"pid": "x" * 65}, None, None, False, None),
        ("a-token", None, None, False, "a-token"),
        (None, None, None, False, None),
    ],
)
def test_claims_are_taken_out_of_the_apps_auth(
    auth: object, pid: str | None, offset: str | None, opt_out: bool, rest: object
) -> None:
    claim = _Claim.parse(auth)
    assert (claim.pid, claim.offset, claim.opt_out, claim.auth) == (pid, offset, opt_out, rest)


def test_marker_matches_a_full_encoding_as_partitions_move() -> None:
    position = [0, 35, 36, 7]
    marker = offsets.Marker("ep", tuple(position))
    for partition, offset in [(1, 36), (3, 8), (1, 1_000_000), (0, 1)]:
        position[partition] = offset
        assert marker.advance(partition, offset) == offsets.encode("ep", position)
    assert offsets.decode(marker.advance(2, 37), "ep", 4).offsets == (1, 1_000_000, 37, 8)


def test_a_live_marker_matches_a_full_encoding_whatever_moved() -> None:
    """Live delivery re-encodes only the partitions that moved since its last mark."""
    position = [0, 35, 36, 7]
    marker = offsets.Marker("ep", tuple(position))
    for moves in [{}, {1: 36}, {0: 1, 3: 8}, {2: 1_000_000}, {0: 2, 1: 37, 2: 1_000_001, 3: 9}]:
        for partition, offset in moves.items():
            position[partition] = offset
        assert marker.at(position) == offsets.encode("ep", position)
    assert marker.advance(1, 40) == offsets.encode("ep", [2, 40, 1_000_001, 9])
    assert marker.at([2, 40, 1_000_001, 9]) == offsets.encode("ep", [2, 40, 1_000_001, 9])
