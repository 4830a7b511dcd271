"""``python -m benchmarks``: run the whole comparison, write its JSON, plots and tables.

python -m benchmarks --quick            # CI: small sizes, checks the harness, asserts no speed
python -m benchmarks                    # the full run RESULTS.md is written from
python -m benchmarks --only kafka,redis --out /tmp/bench
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from . import floor, plots, report, runner, scale
from .contestants import CONTESTANTS, Contestant, available
from .loadgen import Json
from .speed import SpeedProbe
from .workloads import FULL, QUICK

# Their names among the run's speeds, beside the contestants'.
FLOOR = "Kafka alone"
SCALE = "recovery at scale"
_OUT = Path(__file__).resolve().parent / "out"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    plan = QUICK if args.quick else FULL
    contestants = _select(args.only)
    _exit_on_termination()
    doc = report.new_document(plan, contestants, argv)
    started = time.monotonic()
    try:
        runner.run(plan, contestants, doc)
        if any(c.broker == "kafka" for c in contestants):
            print("measuring Kafka alone (benchmarks/floor.py)", file=sys.stderr)
            with SpeedProbe() as probe:
                doc["kafka_floor"] = floor.measure(
                    plan.floor_rate, plan.floor_s, plan.warm_up_passes
                )
            doc["speeds"][FLOOR] = probe.speeds
            print("measuring recovery at scale (benchmarks/scale.py)", file=sys.stderr)
            doc["scale"] = scale.measure(scale.QUICK if args.quick else scale.FULL)
            doc["speeds"][SCALE] = doc["scale"].pop("speeds")
    except KeyboardInterrupt:
        print("interrupted: every service it started is stopped", file=sys.stderr)
        return 130
    finally:
        doc["duration_s"] = round(time.monotonic() - started, 1)
        path = report.write(doc, args.out)
        print(f"results: {path}", file=sys.stderr)
    _write_reports(doc, args.out)
    found = report.problems(doc)
    for problem in found:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if found else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes (CI)")
    parser.add_argument("--out", type=Path, default=_OUT, help=f"default: {_OUT}")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated contestants: " + ", ".join(c.name for c in CONTESTANTS),
    )
    return parser


def _select(only: str | None) -> list[Contestant]:
    names = only.split(",") if only else [c.name for c in CONTESTANTS]
    unknown = set(names) - {c.name for c in CONTESTANTS}
    if unknown:
        raise SystemExit(f"unknown contestants: {', '.join(sorted(unknown))}")
    chosen = [c for c in CONTESTANTS if c.name in names]
    for contestant in chosen:
        if not available(contestant):
            print(f"skipping {contestant.name}: the gateway has no --recovery yet", file=sys.stderr)
    return [c for c in chosen if available(c)]


def _write_reports(doc: Json, out: Path) -> None:
    summary = out / f"{doc['run_id']}.md"
    summary.write_text(report.summary_markdown(doc))
    for path in [summary, *plots.render(doc, out / doc["run_id"])]:
        print(f"wrote {path}", file=sys.stderr)
    print(report.headline_table(doc))


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _exit_on_termination() -> None:
    """Ctrl-C, SIGTERM and SIGHUP end the run; every service is stopped on the way out, and a
    second signal does not cut that short."""

    def stop(signum: int, _: FrameType | None) -> None:
        for each in _SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    for each in _SIGNALS:
        signal.signal(each, stop)


if __name__ == "__main__":
    sys.exit(main())
