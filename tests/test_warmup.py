"""The benchmarks' warm-up: passes until the broker's CPU stops falling."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from benchmarks.warmup import until_settled


def _passes(cpu: Iterable[float]) -> Callable[[], float]:
    return iter(cpu).__next__


def test_a_compiling_broker_is_warmed_until_two_passes_cost_what_the_ones_before_did() -> None:
    session_17 = [1.30, 1.20, 1.04, 0.89, 0.61, 0.57, 0.53, 0.55, 0.53, 0.56, 0.53]
    assert until_settled(_passes(session_17), 12) == session_17[:9]
    early_level = [1.30, 1.27, 1.10, 0.90, 0.70, 0.60, 0.61, 0.60]  # one level pass, early
    assert until_settled(_passes(early_level), 12) == early_level


def test_a_level_broker_takes_three_passes_and_a_bounded_one_no_more_than_asked() -> None:
    assert until_settled(_passes([0.2, 0.21, 0.2, 0.2]), 8) == [0.2, 0.21, 0.2]
    assert until_settled(_passes([4.0, 3.0, 2.0, 1.0, 0.5]), 3) == [4.0, 3.0, 2.0]
    assert until_settled(_passes([0.3]), 1) == [0.3]
