"""The bridge benchmark's quick form (benchmarks/bridge.py), on real Kafka: it runs end to
end, every record reaches its room's client once, and its figures are there. The figures'
size is the benchmark's to report, not a test's to judge."""

from __future__ import annotations

import pytest

from benchmarks.bridge import QUICK, measure

pytestmark = [pytest.mark.kafka]


@pytest.mark.timeout(120)
async def test_quick_bridge_benchmark_delivers_every_record_once(kafka_bootstrap: str) -> None:
    result = await measure(kafka_bootstrap, QUICK)

    latency_records = int(QUICK.rate * QUICK.seconds)
    sent = {"backlog": QUICK.backlog, "bridged": latency_records, "emitted": latency_records}
    for kind, count in sent.items():
        delivery = result["delivery"][kind]
        assert delivery == {
            "sent": count,
            "received": count,
            "lost": 0,
            "duplicated": 0,
            "out_of_order": 0,
        }, kind
    throughput = result["throughput"]
    for figure in ("startup_s", "records_per_s", "records_per_s_from_start", "drain_bridge_cpu_s"):
        assert throughput[figure] > 0, figure
    for path in ("bridged", "emitted"):
        figures = result["latency"][path]
        assert figures["samples"] == latency_records
        assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"], path
    assert result["latency"]["bridged"]["bridge_cpu_s"] > 0
    assert 0 < throughput["transactions"] <= QUICK.backlog
    assert 0 < result["latency"]["bridged"]["bridge_transactions"] <= latency_records
    assert len(result["load"]["loadavg_before"]) == 3
