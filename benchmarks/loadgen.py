"""Runs the Node load generator (``peers/loadgen``) for one workload and follows its report.

The load generator drives the official socket.io-client from its own process (receivers on
worker threads); each line it prints is JSON: progress (shown as a bar), marks (where the
CPU of every process is sampled) and, last, the result.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from .contestants import PEERS
from .cpu import CpuSample, sample
from .services import BenchmarkError, log_tail, require_tool

__all__ = ["Json", "LoadgenRun", "run_loadgen"]

Json = dict[str, Any]

_MAIN = PEERS / "loadgen" / "main.js"


@dataclass(frozen=True, slots=True)
class LoadgenRun:
    result: Json
    marks: Mapping[str, CpuSample]  # CPU of each group (and "loadgen") at each mark


def run_loadgen(
    spec: Json, *, groups: Mapping[str, Sequence[int]], label: str, log: Path, timeout: float
) -> LoadgenRun:
    """Run one workload; CPU of ``groups`` (name -> pids) is sampled at every mark."""
    node = require_tool("node", "Node.js 18+, e.g. apt-get install nodejs npm")
    if not (PEERS / "node_modules").is_dir():
        raise BenchmarkError(f"the Node peers are not installed: npm ci --prefix {PEERS}")
    with log.open("ab") as stderr:
        process = subprocess.Popen(
            [node, str(_MAIN), json.dumps(spec)],
            cwd=PEERS,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    assert process.stdout is not None
    lines, reader = _lines_of(process.stdout)
    try:
        # disable=None: a bar on a terminal, nothing in a CI log.
        with tqdm(desc=label, leave=False, unit="", dynamic_ncols=True, disable=None) as bar:
            watched = {**groups, "loadgen": [process.pid]}
            return _follow(lines, watched, bar, time.monotonic() + timeout, log)
    finally:
        _end(process)
        reader.join(10)  # the pipe ends with the process
        process.stdout.close()


def _follow(
    lines: queue.Queue[str | None],
    groups: Mapping[str, Sequence[int]],
    bar: tqdm[Any],
    deadline: float,
    log: Path,
) -> LoadgenRun:
    marks: dict[str, CpuSample] = {}
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise BenchmarkError(f"the load generator timed out:\n{log_tail(log)}") from None
        if line is None:
            raise BenchmarkError(f"the load generator ended without a result:\n{log_tail(log)}")
        message = json.loads(line)
        kind = message["type"]
        if kind == "mark":
            marks[message["name"]] = sample(groups)
        elif kind == "progress":
            bar.total = message["total"]
            bar.n = message["done"]
            bar.refresh()
        elif kind == "result":
            return LoadgenRun(message["result"], marks)
        else:
            raise BenchmarkError(f"load generator: {message.get('message')}\n{log_tail(log)}")


def _lines_of(stream: IO[bytes]) -> tuple[queue.Queue[str | None], threading.Thread]:
    """Lines of ``stream`` as they come, read by a thread; None once it ends."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for raw in stream:
            lines.put(raw.decode())
        lines.put(None)

    reader = threading.Thread(target=read, name="loadgen-stdout", daemon=True)
    reader.start()
    return lines, reader


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
