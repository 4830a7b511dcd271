"""A real single-node Apache Kafka (KRaft) on 127.0.0.1, for development and tests.

The jars come from Maven Central once and are cached; the broker runs in the background, in
its own session, and keeps its data between runs::

    kafka = LocalKafka()
    bootstrap = kafka.start()  # "127.0.0.1:<port>"; reuses the broker already running
    ...
    kafka.stop()
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ._process import (
    HOST,
    LocalService,
    ServiceStatus,
    cache_root,
    choose_port,
    locked,
    state_root,
)
from .errors import FetchFailed, JavaNotFound, MavenNotFound, ServiceStartFailed

__all__ = ["KAFKA_VERSION", "LocalKafka", "ServiceStatus"]

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"

_POM = """\
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local</groupId>
  <artifactId>socketio-kafka-broker</artifactId>
  <version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
    <!-- The slf4j 1.x binding: Kafka pulls slf4j-api 1.7. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

# log4j's own shutdown hook would stop logging before Kafka's hook has logged its shutdown.
_LOG4J2 = """\
status = warn
shutdownHook = disable
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = STDOUT
"""

_PROBE_TIMEOUT = 3.0


class LocalKafka(LocalService):
    """One KRaft broker-and-controller whose files live in ``data_dir``.

    ``start()`` reuses the broker this data dir already runs (from any process), so every
    command on a machine shares one broker; ``stop()`` ends only that broker.
    """

    name = "Kafka"
    config_name = "server.properties"
    log_name = "broker.log"

    def __init__(
        self,
        data_dir: Path | None = None,
        port: int | None = None,
        *,
        version: str = KAFKA_VERSION,
        cache_dir: Path | None = None,
        heap: str = "512m",
    ) -> None:
        if not re.fullmatch(r"\d+[kKmMgG]?", heap):
            raise ValueError(f"heap must look like 512m or 2g, not {heap!r}")
        super().__init__(data_dir or state_root() / "kafka", port)
        self.version = version
        self.cache_dir = (cache_dir or cache_root()).expanduser().resolve()
        self.heap = heap

    @property
    def libs_dir(self) -> Path:
        return self.cache_dir / f"kafka-{self.version}" / "libs"

    def start(self, timeout: float = 120.0) -> str:
        """Start the broker (or reuse the running one); return ``127.0.0.1:<port>``."""
        return super().start(timeout)

    def ensure_jars(self) -> Path:
        """Fetch Kafka's jars with Maven on first use; return the directory that holds them."""
        stamp = self.libs_dir.parent / "complete"
        if stamp.exists():
            return self.libs_dir
        self.libs_dir.parent.mkdir(parents=True, exist_ok=True)
        with locked(self.libs_dir.parent / "fetch.lock"):
            if not stamp.exists():  # another process may have fetched them while we waited
                self._fetch_jars()
                stamp.write_text(f"{len(list(self.libs_dir.glob('*.jar')))} jars\n")
        return self.libs_dir

    def _fetch_jars(self) -> None:
        mvn = shutil.which("mvn")
        if mvn is None:
            raise MavenNotFound(
                f"Maven (mvn) is needed once to fetch the Kafka {self.version} jars"
                " (e.g. apt-get install maven)"
            )
        shutil.rmtree(self.libs_dir, ignore_errors=True)  # what a failed fetch left
        with tempfile.TemporaryDirectory(prefix="socketio-kafka-pom-") as work:
            pom = Path(work) / "pom.xml"
            pom.write_text(_POM.format(kafka=self.version, log4j=LOG4J_VERSION))
            command = [
                mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                "-DincludeScope=runtime", f"-DoutputDirectory={self.libs_dir}",
            ]  # fmt: skip
            try:
                _run_tool(command, cwd=Path(work), timeout=900)
            except subprocess.SubprocessError as exc:
                raise FetchFailed(
                    f"mvn could not fetch the Kafka {self.version} jars ({_reason(exc)}):\n"
                    + _output(exc)
                ) from exc
        if not list(self.libs_dir.glob("kafka_2.13-*.jar")):
            raise FetchFailed(f"mvn finished but left no Kafka jar in {self.libs_dir}")

    def _launch(self, timeout: float) -> str:
        java = _java()
        previous_port, previous_controller = _previous_ports(self.config_path)
        port = choose_port(self.port, previous_port)
        # The controller keeps its port when it can: the quorum's voter record names it.
        controller = choose_port(None, previous_controller, avoid={port})
        libs = self.ensure_jars()
        self.config_path.write_text(_server_properties(self.data_dir, port, controller))
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2)
        runtime = [java, "-cp", f"{libs}/*", f"-Dlog4j2.configurationFile={log4j}"]
        if not (self.data_dir / "logs" / "meta.properties").exists():
            self._format(runtime)
        # A JVM crash report goes to the working directory unless told otherwise.
        crash = f"-XX:ErrorFile={self.data_dir}/hs_err_pid%p.log"
        broker = [*runtime, f"-Xmx{self.heap}", crash, "-Djava.awt.headless=true"]
        argv = [*broker, "kafka.Kafka", str(self.config_path)]
        ports = {"client": port, "controller": controller}
        return self._run(argv, f"{HOST}:{port}", ports, self.version, timeout)

    def _format(self, runtime: Sequence[str]) -> None:
        """Give the new log dir a cluster id and this node as the quorum's only voter."""
        command = [
            *runtime, "kafka.tools.StorageTool", "format", "-t", _cluster_id(),
            "-c", str(self.config_path), "--standalone",
        ]  # fmt: skip
        try:
            _run_tool(command, cwd=self.data_dir, timeout=120)
        except subprocess.SubprocessError as exc:
            raise ServiceStartFailed(
                f"formatting {self.data_dir / 'logs'} failed ({_reason(exc)})", _output(exc)
            ) from exc

    def _answers(self, address: str) -> bool:
        port = int(address.rpartition(":")[2])
        # A refused connection is cheap to see; aiokafka would log it as an error.
        return _accepts(port) and _metadata_answers(address)


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home:
        java = Path(home) / "bin" / "java"
        if not os.access(java, os.X_OK):
            raise JavaNotFound(f"JAVA_HOME is {home}, but {java} is not an executable")
        return str(java)
    found = shutil.which("java")
    if found is None:
        raise JavaNotFound(
            "Kafka needs Java 17 or newer: no java on PATH and JAVA_HOME is unset"
            " (e.g. apt-get install openjdk-17-jre-headless)"
        )
    return found


def _previous_ports(config: Path) -> tuple[int | None, int | None]:
    """The broker and controller ports of the last run, from the config it left."""
    try:
        lines = config.read_text().splitlines()
    except FileNotFoundError:
        return None, None
    listeners = next(
        (line[len("listeners=") :] for line in lines if line.startswith("listeners=")), ""
    )
    found = dict(re.findall(r"(\w+)://[^,]*:(\d+)", listeners))
    broker, controller = found.get("PLAINTEXT"), found.get("CONTROLLER")
    return (int(broker) if broker else None), (int(controller) if controller else None)


def _server_properties(data_dir: Path, port: int, controller: int) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{HOST}:{controller}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / "logs").replace("\\", "\\\\"),
        "num.partitions": "1",
        # One node: every internal topic gets one replica, or it could never be created.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # No other member will join a new group: do not wait 3 s for one.
        "group.initial.rebalance.delay.ms": "0",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def _cluster_id() -> str:
    """A Kafka-style id: 16 random bytes, base64url; never starting with '-' (read as a flag)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _run_tool(command: Sequence[str], *, cwd: Path, timeout: float) -> None:
    """Run a tool to its end; raise CalledProcessError or TimeoutExpired, with its output."""
    subprocess.run(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=True,
    )


def _reason(exc: subprocess.SubprocessError) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        return f"exit status {exc.returncode}"
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"still running after {exc.timeout:g}s"
    return str(exc)


def _output(exc: subprocess.SubprocessError, lines: int = 40) -> str:
    """The last lines the tool printed."""
    output = getattr(exc, "output", None) or b""
    text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # Maven colours some lines even in batch mode
    return "".join(text.splitlines(keepends=True)[-lines:])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def _metadata_answers(bootstrap: str) -> bool:
    """One metadata round trip, on a thread with its own event loop.

    ``start()`` is a plain function, and may be called from code that runs an event loop.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-kafka-probe") as pool:
        return pool.submit(lambda: asyncio.run(_list_topics(bootstrap))).result()


async def _list_topics(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(_PROBE_TIMEOUT * 1000)
    )
    try:
        # aiokafka's own timeout ends each request; this one bounds the whole probe.
        async with asyncio.timeout(2 * _PROBE_TIMEOUT):
            await admin.start()
            await admin.list_topics()
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await admin.close()
    return True
