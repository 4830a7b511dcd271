"""The busy-topic benchmark runs, and its client recovers exactly its own events."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def _run(kafka_bootstrap: str, *more: str) -> dict[str, int]:
    args = [f"--kafka={kafka_bootstrap}", "--others=3000", "--own=30", "--rooms=300"]
    args += ["--delivered=300", *more]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.busy_topic", *args],
        capture_output=True,
        text=True,
        timeout=170,
        check=True,
    )
    figures: dict[str, int] = json.loads(run.stdout.strip().splitlines()[-1])
    return figures


def test_a_small_busy_topic_run_reads_part_of_the_topic(kafka_bootstrap: str) -> None:
    figures = _run(kafka_bootstrap, "--history-mb=0")
    # It asserts the order itself; it read part of the topic and decoded its own only.
    assert figures["replay_records_decoded"] == 30
    assert 30 <= figures["replay_records_read"] < 3030


def test_a_gap_the_node_still_holds_is_replayed_without_reading_kafka(
    kafka_bootstrap: str,
) -> None:
    figures = _run(kafka_bootstrap)
    assert figures["replay_records_read"] == 0
    # Its own records, found by the room index: only they were decoded.
    assert figures["replay_records_reused"] == 30
    assert figures["replay_records_decoded"] == 30
