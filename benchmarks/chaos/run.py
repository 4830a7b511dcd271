"""One chaos run: a stack started, the load on, each scenario's cycles in turn, the load
stopped and every stream counted."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from .plan import Plan, Stack
from .scenarios import RUNNERS, judge
from .stack import Running
from .tally import Window, published_in, tally

__all__ = ["run_stack"]

Json = dict[str, Any]


def run_stack(plan: Plan, stack: Stack, scenarios: tuple[str, ...], work: Path) -> Json:
    """Run ``scenarios`` in order on one ``stack`` in ``work``; the summary of the run."""
    rng = random.Random(plan.seed)
    running = Running(plan, stack, work)
    windows: list[Window] = []
    cycles: dict[str, list[Json]] = {}
    try:
        running.start()
        loaded = time.time()
        time.sleep(plan.warmup_s)  # a timeline: steady load before the first fault
        before, started = running.mark(), time.time()
        windows.append(Window("warmup", {}, before, loaded, started))
        for name in scenarios:
            cycles[name] = RUNNERS[name](running, plan.cycles[name], rng)
            after, ended = running.mark(), time.time()
            windows.append(Window(name, _next(before), after, started, ended))
            before, started = after, ended
        time.sleep(plan.cooldown_s)
        alive = [running.gateways.alive(n) for n in range(len(running.urls))]
        publishers, receivers, settled = running.finish()
        windows.append(Window("cooldown", _next(before), {}, started, time.time() + 1))
    finally:
        running.close()
    counted = tally(publishers, receivers)
    totals = counted.totals(publishers)
    per_scenario = {}
    for window in windows:
        counts = counted.in_window(window)
        entry: Json = {
            "counts": counts,
            "publishes": published_in(window, publishers),
            "seconds": round(window.ended - window.started, 1),
            # Each publisher's numbers in this stretch: where to look for a fault's events.
            "numbers": {"from": window.first, "to": window.last},
        }
        if window.name in cycles:
            entry["cycles"] = cycles[window.name]
            entry |= judge(window.name, counts, cycles[window.name], publishers, plan)
        per_scenario[window.name] = entry
    return {
        "stack": stack,
        "scenarios": list(scenarios),
        "totals": totals,
        "settled": settled,
        "nodes_alive_at_end": alive,
        "per_scenario": per_scenario,
        "per_room": counted.per_room(publishers),
        "clients": counted.clients,
        "publishers": [_publisher_row(p) for p in publishers],
        "examples": counted.examples(),
        "nodes": running.node_logs(),
        "timeline": running.timeline,
    }


def _next(marks: dict[str, int]) -> dict[str, int]:
    return {p: seq + 1 for p, seq in marks.items()}


def _publisher_row(publisher: Json) -> Json:
    return {
        "publisher": publisher["index"],
        "pinned_to_first_node": publisher["pinned"],
        "sent": sum(publisher["sent"].values()),
        "acked": sum(len(v) for v in publisher["acked"].values()),
        "refused": sum(len(v) for v in publisher["refused"].values()),
        "errors": publisher["errors"],
        "unanswered": publisher["pending"],
        "reconnects": len(publisher["reconnects"]) - 1,  # its first connection is not one
    }
