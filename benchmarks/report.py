"""The run's JSON document (machine, versions, command, every figure), its tables, and the
sanity checks that tell a broken harness from a slow contestant."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .contestants import PEERS, Contestant
from .floor import floor_table
from .loadgen import Json
from .scale import problems as scale_problems
from .scale import sections as scale_sections
from .speed import COLUMN as SPEED_COLUMN
from .speed import speed_summary
from .workloads import Plan

__all__ = ["headline_table", "new_document", "problems", "summary_markdown", "write"]

_MISSING = "—"


def new_document(plan: Plan, contestants: Sequence[Contestant], argv: Sequence[str]) -> Json:
    return {
        "schema": 1,
        "run_id": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{plan.mode}",
        "mode": plan.mode,
        "command": [Path(sys.executable).name, "-m", "benchmarks", *argv],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": _machine(),
        "versions": _versions(),
        "plan": plan.as_json(),
        "contestant_order": [c.name for c in contestants],
        "contestants": {},
        "speeds": {},  # each part's samples of one core's speed (benchmarks/speed.py)
    }


def write(doc: Json, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{doc['run_id']}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


# -- what the run knows about the machine ----------------------------------------------


def _machine() -> Json:
    return {
        "platform": platform.platform(),
        "cpu_model": _cpuinfo("model name"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(_meminfo_kib("MemTotal") / 2**20, 1),
    }


def _cpuinfo(key: str) -> str | None:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None


def _meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def _versions() -> Json:
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    lock = json.loads((PEERS / "package-lock.json").read_text())
    return {
        "python": sys.version.split()[0],
        "node": node.stdout.strip() or None,
        "kafka": None,  # filled in once each broker runs
        "redis": None,
        "python_packages": dict(
            sorted((d.metadata["Name"], d.version) for d in importlib.metadata.distributions())
        ),
        "npm_packages": dict(
            sorted(
                (name.rpartition("node_modules/")[2], entry["version"])
                for name, entry in lock["packages"].items()
                if name
            )
        ),
    }


# -- tables ------------------------------------------------------------------------------


def _results(doc: Json) -> Iterator[tuple[str, Json, Json]]:
    for name in doc["contestant_order"]:
        entry = doc["contestants"].get(name)
        if entry is not None:
            yield name, entry, entry["results"]


def _first(results: Json, workload: str, **match: Any) -> Json | None:
    for result in results.get(workload, []):
        if all(result.get(key) == value for key, value in match.items()):
            return dict(result)
    return None


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return _MISSING
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]
    return "\n".join(lines)


def headline_table(doc: Json) -> str:
    """The table a user reads first: one row per contestant."""
    plan = doc["plan"]
    rows = []
    for name, entry, results in _results(doc):
        at_1k = (_first(results, "latency", rate=1000) or {}).get("latency", {})
        saturation = _first(results, "saturation") or {}
        fanout = _first(results, "fanout") or {}
        rows.append(
            [
                f"`{name}`",
                _fmt(at_1k.get("p50_ms"), 2),
                _fmt(at_1k.get("p99_ms"), 2),
                _fmt(saturation.get("plateau_deliveries_per_s")),
                _fmt(saturation.get("server_cpu_s_per_1k"), 4),
                _fmt(fanout.get("time_to_last_ms")),
                _recovery_cell(results, entry["recovers"], _headline_missed(plan)),
                _loss_cell(_first(results, "disconnect")),
            ]
        )
    header = [
        "contestant",
        "p50 ms @1k/s",
        "p99 ms @1k/s",
        "deliveries/s at saturation",
        "server CPU s per 1k",
        f"fan-out to {plan['fanout_sockets']:,}: ms to last",
        f"recovery of {_headline_missed(plan):,}",
        f"{plan['disconnect_phases_s'][1]:g} s drop: lost / dup",
    ]
    return _table(header, rows)


def _headline_missed(plan: Json) -> int:
    """10,000 missed events (the goal's size) when the run has it, else its largest."""
    sizes = plan["recovery_missed"]
    return 10_000 if 10_000 in sizes else max(sizes)


def _recovery_cell(results: Json, recovers: bool, missed: int) -> str:
    result = _first(results, "recovery", missed=missed)
    if result is None and not recovers and results.get("recovery"):
        result = results["recovery"][0]  # a contestant that loses sessions ran one size
    if result is None:
        return _MISSING
    if result["recovered"] and result["recovery_ms"] is not None:
        lost = f", lost {result['lost']:,}" if result["lost"] else ""
        return f"{result['recovery_ms'] / 1000:.2f} s{lost}"
    return f"none: lost {result['lost']:,} of {result['missed']:,}"


def _loss_cell(result: Json | None) -> str:
    if result is None:
        return _MISSING
    return f"{result['lost']:,} / {result['duplicates']:,} of {result['sent']:,}"


def latency_table(doc: Json) -> str:
    rows = []
    for name, _, results in _results(doc):
        for result in results.get("latency", []):
            summary = result["latency"]
            rows.append(
                [
                    f"`{name}`",
                    _fmt(result["rate"]),
                    _fmt(summary.get("p50_ms"), 2),
                    _fmt(summary.get("p95_ms"), 2),
                    _fmt(summary.get("p99_ms"), 2),
                    _fmt(summary.get("p999_ms"), 2),
                    _fmt(summary.get("max_ms"), 2),
                    _spread(result.get("timeline")),
                    f"{result['delivered']:,} / {result['expected']:,}",
                    "yes" if result["overloaded"] else "no",
                    _fmt((result.get("cpu") or {}).get("server_cores"), 2),
                    _fmt((result.get("cpu") or {}).get("other_cores"), 2),
                    _fmt(result.get("core_speed")),
                ]
            )
    header = [
        "contestant", "events/s", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "max ms",
        "p99 of each 0.5 s, ms", "delivered / expected", "overloaded", "server cores busy",
        "other processes' cores", SPEED_COLUMN,
    ]  # fmt: skip
    return _table(header, rows)


def _spread(timeline: Sequence[Json] | None) -> str:
    """The best and worst half second's p99: close together, the latency is the load's;
    one far worse, a stall (runs before session 29 did not keep the timeline)."""
    p99s = [bucket["p99_ms"] for bucket in timeline or () if bucket["count"]]
    if not p99s:
        return _MISSING
    return f"{min(p99s):,.1f} to {max(p99s):,.1f}"


def saturation_table(doc: Json) -> str:
    rows = []
    for name, _, results in _results(doc):
        for result in results.get("saturation", []):
            step = result["steps"][result["plateau_step"]]
            cpu = step["cpu"]
            rows.append(
                [
                    f"`{name}`",
                    _fmt(result["plateau_deliveries_per_s"]),
                    _fmt(result["plateau_events_per_s"]),
                    _fmt(result["server_cpu_s_per_1k"], 4),
                    f"{cpu['nodes_cpu_s']:.1f} + {cpu['broker_cpu_s']:.1f}",
                    _fmt(cpu["server_cores"], 2),
                    _fmt(result["loadgen_cpu_s_per_1k"], 4),
                    _fmt(cpu["loadgen_cores"], 2),
                    _fmt(cpu["other_cores"], 2),
                    _fmt(result.get("core_speed")),
                ]
            )
    header = [
        "contestant", "deliveries/s", "events/s published", "server CPU s per 1k deliveries",
        "CPU s: nodes + broker", "server cores busy", "load generator CPU s per 1k",
        "load generator cores busy", "other processes' cores", SPEED_COLUMN,
    ]  # fmt: skip
    return _table(header, rows)


def recovery_table(doc: Json) -> str:
    rows = []
    for name, _, results in _results(doc):
        for result in results.get("recovery", []):
            seconds = result["recovery_ms"] / 1000 if result["recovery_ms"] is not None else None
            rows.append(
                [
                    f"`{name}`",
                    _fmt(result["missed"]),
                    "yes" if result["recovered"] else "no",
                    _fmt(seconds, 3),
                    _fmt(result["distinct"]),
                    _fmt(result["lost"]),
                    _fmt(result["duplicates"]),
                ]
            )
    header = ["contestant", "missed", "recovered", "s to last missed", "got", "lost", "dup"]
    return _table(header, rows)


def disconnect_table(doc: Json) -> str:
    rows = []
    for name, _, results in _results(doc):
        for result in results.get("disconnect", []):
            rows.append(
                [
                    f"`{name}`",
                    _fmt(result["sent"]),
                    "yes" if result["recovered"] else "no",
                    _fmt(result["lost"]),
                    _fmt(result["duplicates"]),
                    _fmt(result["witness"]["lost"]),
                ]
            )
    header = ["contestant", "sent", "recovered", "lost", "duplicated", "lost at the witness"]
    return _table(header, rows)


def fanout_table(doc: Json) -> str:
    rows = []
    for name, _, results in _results(doc):
        for result in results.get("fanout", []):
            p50s = sorted(r["p50_ms"] for r in result["rounds"])
            rows.append(
                [
                    f"`{name}`",
                    _fmt(result["sockets"]),
                    _fmt(p50s[len(p50s) // 2]),
                    _fmt(result["time_to_last_ms"]),
                    _fmt(result["time_to_last_max_ms"]),
                ]
            )
    header = ["contestant", "sockets", "ms to half (median)", "ms to last (median)", "worst"]
    return _table(header, rows)


def summary_markdown(doc: Json) -> str:
    """Every table of the run, with its machine and command."""
    machine = doc["machine"]
    versions = doc["versions"]
    sections = [
        f"# Benchmark run {doc['run_id']}",
        f"`{' '.join(doc['command'])}` on {machine['cpu_model']} ({machine['cpus_usable']}"
        f" CPUs usable, {machine['memory_gib']} GiB); Python {versions['python']},"
        f" Node {versions['node']}, Kafka {versions['kafka']}, Redis {versions['redis']}.",
        speed_summary(doc.get("speeds", {})),
        headline_table(doc),
        "## Latency at fixed rates",
        latency_table(doc),
        "## Saturation",
        saturation_table(doc),
        "## Fan-out",
        fanout_table(doc),
        "## Recovery",
        recovery_table(doc),
        "## Loss under a disconnect",
        disconnect_table(doc),
    ]
    if doc.get("kafka_floor"):
        sections += [
            "## Kafka alone: publish to fetch, no Socket.IO (`benchmarks/floor.py`)",
            floor_table(doc["kafka_floor"]),
        ]
    if doc.get("scale"):
        sections += scale_sections(doc["scale"])
    errors = [f"- `{n}`: {e}" for n, entry, _ in _results(doc) for e in entry["errors"]]
    if errors:
        sections += ["## Errors", "\n".join(errors)]
    return "\n\n".join(sections) + "\n"


# -- sanity ------------------------------------------------------------------------------


def problems(doc: Json) -> list[str]:
    """What says the harness, not a contestant's speed, is wrong: errors, nothing delivered,
    latencies that are not positive and finite, everything lost where nothing should be."""
    found = []
    for name in doc["contestant_order"]:
        entry = doc["contestants"].get(name)
        if entry is None:
            found.append(f"{name}: did not run")
            continue
        found += [f"{name}: {error}" for error in entry["errors"]]
        found += [f"{name}: {p}" for p in _result_problems(entry["results"], entry["recovers"])]
    for row in doc.get("kafka_floor", []):
        if row["received"] != row["sent"]:
            found.append(f"Kafka alone, {row['setting']}: {row['received']} of {row['sent']}")
    if doc.get("scale"):
        found += scale_problems(doc["scale"])
    return found


def _result_problems(results: Json, recovers: bool) -> Iterator[str]:
    for result in results.get("latency", []):
        yield from _latency_problems(f"latency {result['rate']}/s", result)
    for result in results.get("saturation", []):
        if not result["plateau_deliveries_per_s"] > 0:
            yield "saturation delivered nothing"
    for result in results.get("fanout", []):
        if any(r["delivered"] != result["sockets"] for r in result["rounds"]):
            yield f"fan-out did not reach all {result['sockets']} sockets"
    for result in results.get("recovery", []):
        if recovers and result["distinct"] == 0:
            yield f"recovery of {result['missed']}: got none of the missed events"
    for result in results.get("disconnect", []):
        if result["distinct"] == 0:
            yield f"disconnect: the dropped client got none of {result['sent']} events"
        if result["witness"]["lost"]:
            yield f"disconnect: the client that stayed lost {result['witness']['lost']} events"


def _latency_problems(label: str, result: Json) -> Iterator[str]:
    if result["delivered"] == 0:
        yield f"{label}: nothing delivered"
        return
    summary = result["latency"]
    for key in ("p50_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms"):
        value = summary.get(key)
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            yield f"{label}: {key} is {value!r}"
