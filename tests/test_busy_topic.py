"""The busy-topic benchmark runs, and its client recovers exactly its own events."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def test_a_small_busy_topic_run(kafka_bootstrap: str) -> None:
    args = [f"--kafka={kafka_bootstrap}", "--others=3000", "--own=30", "--rooms=300"]
    args.append("--delivered=300")
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.busy_topic", *args],
        capture_output=True,
        text=True,
        timeout=170,
        check=True,
    )
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    # It asserts the order itself; it read part of the topic and decoded its own only.
    assert figures["replay_records_decoded"] == 30
    assert 30 <= figures["replay_records_read"] < 3030
