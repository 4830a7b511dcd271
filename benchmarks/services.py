"""The services a run starts and stops: Kafka and Redis (the project's launchers, in a scratch
data dir) and each contestant's nodes (subprocesses on loopback ports)."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from socketio_kafka.gateway import _process
from socketio_kafka.gateway.local_kafka import LocalKafka
from socketio_kafka.gateway.local_redis import LocalRedis

__all__ = [
    "BROKERS",
    "BenchmarkError",
    "Broker",
    "Brokers",
    "Cluster",
    "LineProcess",
    "NodeCommand",
    "free_port",
    "log_tail",
    "metric",
    "require_tool",
    "wait_until",
]

Broker = Literal["kafka", "redis"]
BROKERS: tuple[Broker, ...] = ("kafka", "redis")

_STOP_TIMEOUT_S = 15.0


class BenchmarkError(Exception):
    """A service or load generator failed; the message says which and shows its log."""


async def wait_until(condition: Any, within_s: float, what: str, every_s: float = 0.01) -> None:
    """Poll ``condition`` every ``every_s`` until true; `TimeoutError` naming ``what`` after
    ``within_s``."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(every_s)


def metric(url: str, name: str) -> float:
    """One sample of ``name`` from a node's /metrics (the first, whatever its labels)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise BenchmarkError(f"no {name} in {url}/metrics")


#: Every port `free_port` handed out in this process.
_HANDED: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, and never one handed out before in this process: ports
    picked before any is bound (a cluster's nodes) came back twice about once in 16,000
    picks, and two nodes were told the same one."""
    port = _process.free_port(avoid=_HANDED)
    _HANDED.add(port)
    return port


class Brokers:
    """Kafka and Redis in ``data_dir``, each started when first asked for and stopped by
    `stop` (or `close`, which stops both)."""

    def __init__(self, data_dir: Path) -> None:
        self._kafka = LocalKafka(data_dir / "kafka")
        self._redis = LocalRedis(data_dir / "redis")
        self._addresses: dict[Broker, str] = {}

    def url(self, broker: Broker) -> str:
        """The broker's URL (``kafka://...`` or ``redis://...``), starting it if needed."""
        if broker not in self._addresses:
            address = self._service(broker).start()
            self._addresses[broker] = f"kafka://{address}" if broker == "kafka" else address
        return self._addresses[broker]

    def pid(self, broker: Broker) -> int:
        status = self._service(broker).status()
        if status is None:
            raise BenchmarkError(f"{broker} is not running:\n{self._service(broker).log_tail()}")
        return status.pid

    def version(self, broker: Broker) -> str | None:
        status = self._service(broker).status()
        return status.version if status else None

    def stop(self, broker: Broker) -> None:
        if self._addresses.pop(broker, None) is not None:
            self._service(broker).stop()

    def close(self) -> None:
        for broker in BROKERS:
            self._service(broker).stop()
        self._addresses.clear()

    def _service(self, broker: Broker) -> LocalKafka | LocalRedis:
        return self._kafka if broker == "kafka" else self._redis


@dataclass(frozen=True, slots=True)
class NodeCommand:
    """How to run one node: its argv and the environment it adds."""

    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Node:
    port: int
    log: Path
    process: subprocess.Popen[bytes]
    command: NodeCommand

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Cluster:
    """Nodes of one contestant, each its own process (in its own session, so a Ctrl-C at the
    terminal reaches the harness alone, which then stops them in order)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._nodes: list[_Node] = []

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self._nodes]

    @property
    def pids(self) -> list[int]:
        return [node.process.pid for node in self._nodes]

    def start(self, commands: Sequence[tuple[int, NodeCommand]], timeout: float = 90.0) -> None:
        """Start one node per ``(port, command)``; return once every one answers /readyz."""
        for port, command in commands:
            log = self.log_dir / f"node-{port}.log"
            self._nodes.append(_Node(port, log, _spawn(command, log, "wb"), command))
        deadline = time.monotonic() + timeout
        for node in self._nodes:
            _await_ready(node, deadline)

    def signal(self, index: int, signum: signal.Signals) -> None:
        """Send ``signum`` to node ``index`` (SIGKILL: a crash; SIGTERM: a shutdown)."""
        process = self._nodes[index].process
        if process.poll() is None:
            process.send_signal(signum)

    def alive(self, index: int) -> bool:
        return self._nodes[index].process.poll() is None

    def restart(self, index: int, timeout: float = 90.0) -> None:
        """Wait for node ``index`` to exit, start it again with the same command (its log
        goes on in the same file), and return once it answers /readyz."""
        node = self._nodes[index]
        node.process.wait(_STOP_TIMEOUT_S)
        node.process = _spawn(node.command, node.log, "ab")
        _await_ready(node, time.monotonic() + timeout)

    def log_tails(self, lines: int = 15) -> str:
        """Each node's last log lines: why a cluster that started does not pass events."""
        return "\n".join(f"node {n.url}:\n{log_tail(n.log, lines)}" for n in self._nodes)

    def stop(self) -> None:
        """SIGTERM every node, SIGKILL what is left after a grace period. Safe to call twice."""
        for node in self._nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self._nodes:
            try:
                node.process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        self._nodes.clear()


def _spawn(command: NodeCommand, log: Path, mode: Literal["wb", "ab"]) -> subprocess.Popen[bytes]:
    with log.open(mode) as out:
        return subprocess.Popen(
            list(command.argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **command.env},
            start_new_session=True,
        )


def _await_ready(node: _Node, deadline: float) -> None:
    while not _ready(node.url):
        if node.process.poll() is not None:
            raise BenchmarkError(f"node {node.url} exited early:\n{log_tail(node.log)}")
        if time.monotonic() > deadline:
            raise BenchmarkError(f"node {node.url} not ready in time:\n{log_tail(node.log)}")
        time.sleep(0.1)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class LineProcess:
    """A load generator driven line by line: JSON commands on its stdin, one JSON report a
    line on its stdout (read on a thread as they come), its stderr in ``log``."""

    def __init__(self, argv: Sequence[str], log: Path, name: str) -> None:
        self._log = log
        self._name = name
        self._err = log.open("wb")
        self._process = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            start_new_session=True,
        )
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        assert self._process.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._process.stdout,), daemon=True
        )
        self._reader.start()

    def _read(self, stdout: IO[str]) -> None:
        try:
            for line in stdout:
                self._lines.put(json.loads(line))
        finally:
            self._lines.put(None)  # the end, or a line that is not JSON: either is fatal

    def send(self, cmd: str, **fields: Any) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self._process.stdin.flush()

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next report of ``kind``; an error report or the process ending is fatal."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchmarkError(
                    f"no {kind!r} from the {self._name} within {timeout}s"
                ) from None
            if line is None or line.get("type") == "error":
                raise BenchmarkError(f"{self._name} failed: {line}\n{log_tail(self._log)}")
            if line.get("type") == kind:
                return line

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._reader.join(10)  # it reads to the end of the pipe, which closes after it
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()
        self._err.close()


def require_tool(name: str, hint: str) -> str:
    """The path of ``name`` on PATH, or a clear error saying how to get it."""
    found = shutil.which(name)
    if found is None:
        raise BenchmarkError(f"{name} not found on PATH ({hint})")
    return found


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log, to show why a process failed."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "".join(text.splitlines(keepends=True)[-lines:])
