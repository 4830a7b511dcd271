"""``python -m benchmarks.chaos``: the scenarios asked for (all by default), grouped by the
Kafka they need (one run on a single broker, one on a three-broker cluster), one JSON
summary on stdout and a verdict line per scenario on stderr."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from .docs import stamp, write_docs
from .plan import FULL, QUICK, SCENARIOS, Stack, stack_of
from .run import run_stack

__all__ = ["main"]

Json = dict[str, Any]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos",
        description="Faults under a steady numbered event stream through 3 gateway nodes;"
        " counts lost, duplicated and out-of-order events and unrecovered reconnects.",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run this scenario (repeat for several; default: all, in the listed order)",
    )
    parser.add_argument("--quick", action="store_true", help="small load, few cycles: CI's form")
    parser.add_argument("--cycles", type=int, help="cycles of each scenario asked for")
    parser.add_argument("--keep", type=Path, help="keep the logs and data under this directory")
    parser.add_argument(
        "--write-docs", action="store_true", help="write the table in docs/reliability.md"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    chosen = tuple(name for name in SCENARIOS if name in (args.scenario or SCENARIOS))
    plan = (QUICK if args.quick else FULL).with_scenarios(chosen, args.cycles)
    stacks: dict[Stack, tuple[str, ...]] = {}
    for name in chosen:
        stacks[stack_of(name)] = (*stacks.get(stack_of(name), ()), name)
    runs = []
    for stack, names in stacks.items():
        with tempfile.TemporaryDirectory(prefix=f"chaos-{stack}-") as scratch:
            work = args.keep / stack if args.keep else Path(scratch)
            work.mkdir(parents=True, exist_ok=True)
            runs.append(run_stack(plan, stack, names, work))
    verdicts = {
        name: run["per_scenario"][name]["verdict"] for run in runs for name in run["scenarios"]
    }
    for run in runs:
        if not run["settled"]:
            verdicts[f"{run['stack']}: settle"] = "FAIL: receivers still missing acked events"
    summary = {"plan": plan.json(), **stamp(), "runs": runs, "verdicts": verdicts}
    summary["verdict"] = "PASS" if all(v == "PASS" for v in verdicts.values()) else "FAIL"
    print(json.dumps(summary, indent=1), flush=True)
    for name, verdict in verdicts.items():
        print(f"{name}: {verdict}", file=sys.stderr)
    if args.write_docs:
        write_docs(summary, ["python", "-m", "benchmarks.chaos", *_reproduce(args)])
    return 0 if summary["verdict"] == "PASS" else 1


def _reproduce(args: argparse.Namespace) -> list[str]:
    """The options that shaped the run (not where its logs went), for the docs."""
    chosen = [arg for name in args.scenario or () for arg in ("--scenario", name)]
    cycles = ["--cycles", str(args.cycles)] if args.cycles is not None else []
    return [*chosen, *(["--quick"] if args.quick else []), *cycles, "--write-docs"]
