"""Real gateway processes on loopback ports, started and stopped around a test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.services import free_port

REPO = Path(__file__).resolve().parents[2]
CONTROL_EXTENSION = "tests.support.control:install"
#: For a test whose one socket publishes hundreds of events a second: it checks delivery,
#: not the per-socket limit (100/s by default; tests/test_limits.py checks the limit).
FAST_PUBLISHER = ("--event-rate", "100000")
#: For a test whose clients, all from 127.0.0.1, stand for a crowd connecting at once: it
#: checks what they get, not the per-address limit (10/s by default; tests/test_limits.py).
CROWD = ("--connect-rate", "100000")


@dataclass
class GatewayProcess:
    """One ``socketio-kafka serve`` process; its output goes to a log file we can show."""

    kafka: str
    channel: str
    port: int = field(default_factory=free_port)
    extra_args: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process; a restart appends to the same log file (one file to remove)."""
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"gateway-{self.port}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "socketio_kafka.gateway", "serve"),
                    *("--port", str(self.port), "--kafka", self.kafka, "--channel", self.channel),
                    *("--extension", CONTROL_EXTENSION, "--log-level", "warning"),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"gateway exited early:\n{self.log()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{self.url}/readyz", timeout=2)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise AssertionError(f"gateway on {self.port} not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path else ""

    def remove_log(self) -> None:
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.asynccontextmanager
async def gateway_cluster(
    kafka: str, channel: str, nodes: int = 3, extra_args: Sequence[str] = ()
) -> AsyncIterator[list[GatewayProcess]]:
    """Start ``nodes`` gateways sharing ``channel``, wait until all are ready, stop them after."""
    gateways = [GatewayProcess(kafka, channel, extra_args=extra_args) for _ in range(nodes)]
    try:
        for gateway in gateways:
            gateway.start()
        await asyncio.gather(*(g.wait_ready() for g in gateways))
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()
        for gateway in gateways:
            gateway.remove_log()
