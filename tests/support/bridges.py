"""``socketio-kafka bridge`` in a process of its own, for the tests that need one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from .cluster import REPO


class BridgeProcess:
    """One ``socketio-kafka bridge`` process; killed and restarted under the same instance."""

    def __init__(
        self,
        config: Path,
        kafka: str,
        metrics_port: int | None = None,
        instance: str = "bridge-1",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.extra_args = list(extra_args)
        self.instance = instance
        self.kafka = kafka
        self.metrics_port = metrics_port
        self.process: subprocess.Popen[bytes] | None = None
        fd, name = tempfile.mkstemp(prefix="bridge-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)

    def start(self) -> None:
        metrics = ["--metrics-port", str(self.metrics_port)] if self.metrics_port else []
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "socketio_kafka.gateway", "bridge", str(self.config)),
                    *("--kafka", self.kafka, "--instance", self.instance, "--log-level", "warning"),
                    *metrics,
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    @contextlib.contextmanager
    def running(self) -> Iterator[BridgeProcess]:
        """Started; stopped at the end, its log printed if what ran inside failed."""
        self.start()
        try:
            yield self
        except BaseException:
            print(self.log())
            raise
        finally:
            self.stop()
            self.log_path.unlink(missing_ok=True)
