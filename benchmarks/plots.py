"""PNG plots of a run: latency CDFs, saturation bars, fan-out, recovery time against N, loss."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from .loadgen import Json

__all__ = ["render"]

_COLORS = {
    "kafka": "#1f77b4",
    "kafka-recovery": "#17becf",
    "kafka-low-latency": "#ff7f0e",
    "redis": "#d62728",
    "node-redis": "#2ca02c",
    "node-redis-streams": "#9467bd",
}


def render(doc: Json, out_dir: Path) -> list[Path]:
    """Write every plot of ``doc`` into ``out_dir``; return their paths."""
    plt.switch_backend("Agg")  # files only, never a display
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "latency_cdf.png": _latency_cdf(doc),
        "saturation.png": _saturation(doc),
        "fanout.png": _fanout(doc),
        "recovery.png": _recovery(doc),
        "disconnect.png": _disconnect(doc),
    }
    paths = []
    for name, figure in figures.items():
        path = out_dir / name
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        paths.append(path)
    return paths


def _entries(doc: Json) -> Iterator[tuple[str, Json]]:
    for name in doc["contestant_order"]:
        if name in doc["contestants"]:
            yield name, doc["contestants"][name]["results"]


def _title(doc: Json, what: str) -> str:
    machine = doc["machine"]
    return f"{what} ({machine['cpus_usable']} CPUs, 3 nodes each, {doc['mode']} run)"


def _latency_cdf(doc: Json) -> Figure:
    rates = doc["plan"]["latency_rates"]
    figure, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 4), sharey=True)
    for ax, rate in zip(axes, rates, strict=True):
        for name, results in _entries(doc):
            for result in results.get("latency", []):
                cdf = result["latency"].get("cdf")
                if result["rate"] == rate and cdf:
                    xs, ys = zip(*cdf, strict=True)
                    ax.plot(xs, ys, label=name, color=_COLORS.get(name))
        ax.set_xscale("log")
        ax.set_xlabel("end-to-end latency, ms (log)")
        ax.set_title(f"{rate:,} events/s")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("fraction of deliveries")
    axes[0].legend(loc="lower right", fontsize="small")
    figure.suptitle(_title(doc, "Latency CDF, one publisher on node 1, receivers on nodes 2-3"))
    return figure


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _bars(ax: Axes, names: list[str], values: list[float], label: str) -> None:
    bars = ax.bar(names, values, color=[_COLORS.get(n, "gray") for n in names])
    ax.bar_label(bars, fmt=_number, fontsize="small")
    ax.set_ylabel(label)
    ax.tick_params(axis="x", rotation=20)


def _saturation(doc: Json) -> Figure:
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = [(n, r["saturation"][0]) for n, r in _entries(doc) if r.get("saturation")]
    names = [n for n, _ in rows]
    _bars(left, names, [s["plateau_deliveries_per_s"] for _, s in rows], "deliveries/s")
    left.set_title("Delivered events/s at saturation")
    server = [s["server_cpu_s_per_1k"] or 0.0 for _, s in rows]
    loadgen = [s["loadgen_cpu_s_per_1k"] or 0.0 for _, s in rows]
    _bars(right, names, server, "CPU seconds per 1,000 deliveries")
    right.scatter(names, loadgen, color="black", marker="_", s=400, label="load generator")
    right.legend(fontsize="small")
    right.set_title("Server CPU (nodes + broker) per 1,000 deliveries")
    figure.suptitle(_title(doc, "Saturation"))
    return figure


def _fanout(doc: Json) -> Figure:
    figure, ax = plt.subplots(figsize=(7, 4.5))
    rows = [(n, r["fanout"][0]) for n, r in _entries(doc) if r.get("fanout")]
    _bars(
        ax, [n for n, _ in rows], [f["time_to_last_ms"] for _, f in rows], "ms to the last socket"
    )
    sockets = doc["plan"]["fanout_sockets"]
    ax.set_title(_title(doc, f"Fan-out: one event to {sockets:,} sockets (median of rounds)"))
    return figure


def _recovery(doc: Json) -> Figure:
    figure, ax = plt.subplots(figsize=(7, 4.5))
    plotted = False
    for name, results in _entries(doc):
        points = [
            (r["missed"], r["recovery_ms"] / 1000)
            for r in results.get("recovery", [])
            if r["recovered"] and r["recovery_ms"] is not None
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=name, color=_COLORS.get(name))
            plotted = True
        elif results.get("recovery"):
            ax.plot(
                [], [], linestyle="none", label=f"{name}: no recovery, loses every missed event"
            )
    if plotted:  # a log axis needs a point
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,g}"))
            axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("missed events")
    ax.set_ylabel("seconds from reconnect to the last missed event")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(_title(doc, "Recovery time"))
    return figure


def _disconnect(doc: Json) -> Figure:
    figure, ax = plt.subplots(figsize=(7, 4.5))
    rows = [(n, r["disconnect"][0]) for n, r in _entries(doc) if r.get("disconnect")]
    names = [n for n, _ in rows]
    positions = range(len(rows))
    lost = ax.bar([p - 0.2 for p in positions], [d["lost"] for _, d in rows], 0.4, label="lost")
    dup = ax.bar([p + 0.2 for p in positions], [d["duplicates"] for _, d in rows], 0.4, label="dup")
    ax.bar_label(lost, fontsize="small")
    ax.bar_label(dup, fontsize="small")
    ax.set_xticks(list(positions), names, rotation=20)
    ax.set_ylabel("events")
    ax.legend(fontsize="small")
    gap = doc["plan"]["disconnect_phases_s"][1]
    ax.set_title(_title(doc, f"Events lost / duplicated, transport dropped for {gap:g} s"))
    return figure
