"""Recovery at scale (issue 10): our gateway alone, on a Kafka of its own, after the contestants.

- busy-topic recovery: one client that missed ``own`` events among ``others`` to other rooms,
  per partition count of the events topic (`benchmarks/busy_topic.py`, in a process of its
  own, so its CPU figures are that node's alone);
- irrelevant traffic: from the same runs, the node's CPU per 1,000 records none of its
  sockets wants against its CPU per 1,000 events it delivers;
- mass recovery: the clients of a SIGKILLed node recover on the two survivors at once
  (`benchmarks/mass_recovery.py`, official JS clients), against one client's replay alone;
  twice: replays served by the survivors' history, then read from Kafka (history off, as on
  survivors whose history no longer holds the gap);
- memory per connection (`benchmarks/memory.py`): one node's RSS for idle connections, and
  with 2 rooms each.

Each part that fails is recorded in ``errors`` and the next one runs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from . import mass_recovery, memory
from .cpu import await_quiet
from .loadgen import Json
from .services import BenchmarkError, Brokers
from .speed import COLUMN as SPEED_COLUMN
from .speed import SpeedProbe
from .workloads import Mode

__all__ = ["FULL", "QUICK", "ScalePlan", "measure", "problems", "sections"]

_MISSING = "—"
#: Errors a part ends with when the harness, not the gateway's speed, is at fault.
_FAILURES = (BenchmarkError, TimeoutError, AssertionError, OSError, subprocess.SubprocessError)
#: The mass recoveries by their key in the run's JSON: where their replays read, and the
#: survivors' history in MiB (None: the gateway's default; 0: none, every replay reads Kafka).
MASS_RECOVERIES = {"mass_recovery": ("history", None), "mass_recovery_from_kafka": ("Kafka", 0)}


@dataclass(frozen=True, slots=True)
class ScalePlan:
    mode: Mode
    busy_others: int
    busy_own: int
    busy_rooms: int
    busy_delivered: int  # events to the client, for the CPU per 1,000 delivered
    busy_partitions: tuple[int, ...]
    mass: mass_recovery.Sizes
    memory_connections: int
    memory_shared_rooms: int
    memory_idle_s: float  # the node's CPU sampled this long with the clients idle

    def as_json(self) -> Json:
        return asdict(self)

    def masses(self) -> dict[str, mass_recovery.Sizes]:
        """Each mass recovery's sizes, by its key in `MASS_RECOVERIES`."""
        return {key: replace(self.mass, history_mb=mb) for key, (_, mb) in MASS_RECOVERIES.items()}


QUICK = ScalePlan(
    mode="quick",
    busy_others=5_000,
    busy_own=50,
    busy_rooms=500,
    busy_delivered=1_000,
    busy_partitions=(48, 6),
    mass=mass_recovery.Sizes(clients=20, own=20, others=2_000, rooms=200),
    memory_connections=200,
    memory_shared_rooms=20,
    memory_idle_s=5.0,
)

FULL = ScalePlan(
    mode="full",
    busy_others=1_000_000,
    busy_own=100,
    busy_rooms=5_000,
    busy_delivered=20_000,
    busy_partitions=(48, 6),
    mass=mass_recovery.Sizes(),  # the issue's: 500 clients, 20 each, 50,000 to 5,000 rooms
    memory_connections=5_000,
    memory_shared_rooms=50,
    memory_idle_s=60.0,
)


def measure(plan: ScalePlan) -> Json:
    """Every part of ``plan`` on a broker started here and stopped at the end (``speeds``:
    the host's, sampled all through them, `benchmarks/speed.py`)."""
    doc: Json = {"plan": plan.as_json(), "busy_topic": [], "errors": [], "speeds": []}
    with tempfile.TemporaryDirectory(prefix="socketio-kafka-scale-") as scratch:
        brokers = Brokers(Path(scratch))
        try:
            address = brokers.url("kafka").removeprefix("kafka://")
            broker_pid = brokers.pid("kafka")
            doc["kafka"] = brokers.version("kafka")
            # A full run's figures are worth a quiet machine; a quick one only checks.
            doc["quiet_wait_s"] = await_quiet(cores=0.4) if plan.mode == "full" else None
            doc["load_1m"] = round(os.getloadavg()[0], 2)
            for partitions in plan.busy_partitions:
                run = functools.partial(_busy, plan, address, partitions)
                _part(doc, f"busy topic, {partitions} partitions", run, into=doc["busy_topic"])
            for key, sizes in plan.masses().items():
                run = functools.partial(_mass_recovery, address, sizes, broker_pid)
                _part(doc, _mass_label(key), run, key=key)
            work = Path(scratch) / "memory"
            work.mkdir()
            sizes = (plan.memory_connections, plan.memory_shared_rooms)
            run = functools.partial(
                memory.measure, address, *sizes, work, flags=[], idle_s=plan.memory_idle_s
            )
            _part(doc, "memory", run, key="memory")
        finally:
            brokers.close()
    return doc


def _part(
    doc: Json,
    label: str,
    run: Callable[[], Json],
    *,
    key: str | None = None,
    into: list[Json] | None = None,
) -> None:
    print(f"recovery at scale: {label}", file=sys.stderr)
    pace = SpeedProbe()
    try:
        with pace:
            result = run()
    except _FAILURES as exc:
        doc["errors"].append(f"{label}: {exc!r}"[:2000])
        print(f"recovery at scale: {label} failed: {exc!r}", file=sys.stderr)
        return
    finally:
        doc["speeds"] += pace.speeds
    result["core_speed"] = pace.median
    if into is not None:
        into.append(result)
    if key is not None:
        doc[key] = result


def _mass_label(key: str) -> str:
    return f"mass recovery, replays from {MASS_RECOVERIES[key][0]}"


def _mass_recovery(address: str, sizes: mass_recovery.Sizes, broker_pid: int) -> Json:
    return asyncio.run(mass_recovery.measure(address, sizes, broker_pid))


def _busy(plan: ScalePlan, address: str, partitions: int) -> Json:
    argv = [
        sys.executable, "-m", "benchmarks.busy_topic", f"--kafka={address}",
        f"--others={plan.busy_others}", f"--own={plan.busy_own}", f"--rooms={plan.busy_rooms}",
        f"--delivered={plan.busy_delivered}", f"--partitions={partitions}",
    ]  # fmt: skip
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60 + plan.busy_others / 200, check=False
    )
    if done.returncode != 0:
        raise BenchmarkError(f"busy_topic exited {done.returncode}:\n{done.stderr[-3000:]}")
    figures: Json = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "partitions": partitions,
        "others": plan.busy_others,
        "own": plan.busy_own,
        "delivered": plan.busy_delivered,
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()},
    }


# -- the run's summary -------------------------------------------------------------------


def _fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return _MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return " / ".join(_fmt(v, digits) for v in value)
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def sections(scale: Json) -> list[str]:
    """The "recovery at scale" headings and tables of the run's Markdown summary."""
    out = [
        "## Recovery at scale: our gateway alone (`benchmarks/scale.py`, issue 10)",
        f"Load average at the start: {_fmt(scale.get('load_1m'), 2)}; Kafka"
        f" {scale.get('kafka') or _MISSING}, a broker of its own.",
    ]
    if scale["busy_topic"]:
        out += [
            "### Busy-topic recovery (goal: under 0.2 s)",
            _busy_table(scale["busy_topic"]),
            "### Irrelevant traffic: the node's CPU per record",
            _irrelevant_table(scale["busy_topic"]),
        ]
    for key in MASS_RECOVERIES:
        if mass := scale.get(key):
            label = _mass_label(key)
            heading = f"### {label[0].upper()}{label[1:]} (goals: all within 3 s; CPU under 3x"
            out += [f"{heading} one replay)", _mass(mass)]
    if mem := scale.get("memory"):
        out += ["### Memory per connection (goal: under 30 KB)", _memory_table(mem)]
    if scale["errors"]:
        out += ["### Errors", "\n".join(f"- {e}" for e in scale["errors"])]
    return out


def _busy_table(busy: list[Json]) -> str:
    # The host speed (benchmarks/speed.py): none in runs before session 34.
    header = ["partitions", "others", "own", "s to last missed", "records read", "decoded"]
    header += [SPEED_COLUMN]
    keys = ["partitions", "others", "own", "recovery_s"]
    keys += ["replay_records_read", "replay_records_decoded"]
    rows = [[*(_fmt(b[k], 3) for k in keys), _fmt(b.get("core_speed"))] for b in busy]
    return _table(header, rows)


def _irrelevant_table(busy: list[Json]) -> str:
    header = ["partitions", "ms per 1,000 irrelevant", "ms per 1,000 delivered", "ratio"]
    keys = ["partitions", "cpu_ms_per_1000_irrelevant", "cpu_ms_per_1000_delivered"]
    keys += ["irrelevant_to_delivered"]
    return _table(header, [[_fmt(b[k], 3) for k in keys] for b in busy])


def _memory_table(mem: Json) -> str:
    header = ["connections", "KB each, idle", "KB each, 2 rooms", "RSS MiB: idle / rooms"]
    header += ["idle CPU, % of a core per 1,000"]
    rss = mem["rss_mib"]
    row = [
        _fmt(mem["connections"]),
        _fmt(mem["kb_per_connection_idle"]),
        _fmt(mem["kb_per_connection_rooms"]),
        _fmt([rss["idle"], rss["rooms"]]),
        _fmt(mem.get("idle_cpu_percent_per_1000"), 2),  # runs before session 37 had none
    ]
    return _table(header, [row])


def _mass(mass: Json) -> str:
    lone = mass["lone"]
    rows = [
        ["clients x own events", f"{mass['clients']:,} x {mass['own']:,} ({mass['client']})"],
        ["events to other rooms", f"{mass['others']:,} to {mass['rooms']:,} rooms"],
        ["s to recovered: p50 / p90 / last", _fmt([*(mass["p50_p90_recovered_s"] or []),
                                                   mass["last_recovered_s"]], 3)],
        ["every client within 3 s", _fmt(mass["within_3s"])],
        ["lost / duplicated / out of order", _fmt([mass["lost"], mass["duplicated"],
                                                   mass["out_of_order"]])],
        ["not recovered (a fresh session)", _fmt(mass["not_recovered"])],
        ["CPU s: survivors / broker", f"{_fmt(mass['survivors_cpu_s'], 2)} / "
                                      f"{_fmt(mass['broker_cpu_s'], 2)}"],
        ["first on each survivor (waits for node 0 to look dead): s",
         _fmt(mass["warm_up"]["recovery_s"], 3)],
        ["one client alone: s / cluster CPU s", f"{_fmt(lone['recovery_s'], 3)} / "
                                                f"{_fmt(lone['cluster_cpu_s'], 2)}"],
        ["cluster CPU, all / one alone", _fmt(mass["cpu_ratio"])],
        ["cluster CPU per client, ms: recovering / connecting afresh (on node 0)",
         _fmt([_per_client(mass, "cluster_cpu_s"), _per_client(mass, "opened_cluster_cpu_s")])],
        ["replay records read / decoded / taken from memory / passes",
         _fmt([mass["replay_records_read"], mass["replay_records_decoded"],
               mass.get("replay_records_reused"), mass["replay_passes"]])],
    ]  # fmt: skip
    return _table(["figure", "measured"], rows)


def _per_client(mass: Json, cpu: str) -> float | None:
    """CPU ms a client: what a node death costs the cluster per client it held."""
    seconds = mass.get(cpu)
    return None if seconds is None else round(seconds / mass["clients"] * 1000, 1)


def problems(scale: Json) -> Iterator[str]:
    """Behaviour, not speed: a part that failed, a recovery that lost, repeated or reordered
    events, or handed out a fresh session."""
    for error in scale["errors"]:
        yield f"recovery at scale: {error}"
    for key in MASS_RECOVERIES:
        if (mass := scale.get(key)) is None:
            continue
        label = _mass_label(key)
        for who, figures in (
            (label, mass),
            (f"{label}, one alone", mass["lone"]),
            (f"{label}, warm-up", mass["warm_up"]),
        ):
            bad = {k: figures[k] for k in ("lost", "duplicated", "out_of_order", "not_recovered")}
            if any(bad.values()):
                yield f"{who}: {bad}"
        if mass["recovered_all"] != mass["clients"]:
            yield f"{label}: {mass['recovered_all']} of {mass['clients']} got all they missed"
    for busy in scale["busy_topic"]:
        if busy["replay_records_decoded"] not in (-1, busy["own"]):
            yield f"busy topic, {busy['partitions']} partitions: decoded {busy}"
