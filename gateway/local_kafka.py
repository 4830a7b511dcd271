"""A real single-node Apache Kafka (KRaft) on 127.0.0.1, for development and tests.

The jars come from Maven Central once and are cached; the broker runs in the background, in
its own session, and keeps its data between runs::

    kafka = LocalKafka()
    bootstrap = kafka.start()  # "127.0.0.1:<port>"; reuses the broker already running
    ...
    kafka.stop()

Two optional listeners, for tests of what a client sees:

- ``relay_port=P``: a second PLAINTEXT listener advertised as ``127.0.0.1:P`` but bound on
  ``relay_target_port``. Kafka's metadata names the advertised address of the listener a
  request came in on, so a client bootstrapping at ``P``, where a TCP proxy forwards to
  ``relay_target_port``, reaches Kafka only through that proxy, which can then cut it.
- ``secure=True``: a SASL_SSL listener at ``secure_address``, with a throwaway CA
  (``ca_file``) and one user (``sasl_username`` / ``sasl_password``) for PLAIN,
  SCRAM-SHA-256 and SCRAM-SHA-512. Brokers and controllers still talk PLAINTEXT.
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
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ._process import (
    HOST,
    LocalService,
    ServiceState,
    ServiceStatus,
    cache_root,
    choose_port,
    locked,
    pid_alive,
    read_state,
    state_root,
    write_private,
)
from .errors import (
    FetchFailed,
    InvalidSettings,
    JavaNotFound,
    MavenNotFound,
    ServiceError,
    ServiceStartFailed,
)
from .local_tls import ensure_tls

__all__ = ["KAFKA_VERSION", "SASL_MECHANISMS", "LocalKafka", "ServiceStatus"]

KAFKA_VERSION = "4.4.0"
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

# Roles of the ports a broker binds, and the listener (and its protocol) each one serves.
_LISTENERS = {
    "client": ("PLAINTEXT", "PLAINTEXT"),
    "controller": ("CONTROLLER", "PLAINTEXT"),
    "relay": ("RELAY", "PLAINTEXT"),
    "secure": ("SASL_SSL", "SASL_SSL"),
}
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
_PLAIN_MODULE = "org.apache.kafka.common.security.plain.PlainLoginModule"


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
        relay_port: int | None = None,
        secure: bool = False,
    ) -> None:
        if not re.fullmatch(r"\d+[kKmMgG]?", heap):
            raise InvalidSettings(f"heap must look like 512m or 2g, not {heap!r}")
        if relay_port is not None and not 0 < relay_port < 65536:
            raise InvalidSettings(f"relay port out of range: {relay_port}")
        super().__init__(data_dir or state_root() / "kafka", port)
        self.version = version
        self.cache_dir = (cache_dir or cache_root()).expanduser().resolve()
        self.heap = heap
        self.relay_port = relay_port
        self.secure = secure
        #: A new storage's password, saved once the storage is formatted with its users.
        self._unsaved_password: str | None = None

    sasl_username = "socketio"

    @property
    def relay_target_port(self) -> int | None:
        """Where the relay listener binds (a proxy at ``relay_port`` forwards here); None
        unless the broker runs with one."""
        return self._running_ports().get("relay")

    @property
    def secure_address(self) -> str | None:
        """``127.0.0.1:<port>`` of the SASL_SSL listener; None unless the broker runs with one."""
        port = self._running_ports().get("secure")
        return None if port is None else f"{HOST}:{port}"

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM) a client trusts to reach the SASL_SSL listener."""
        return self.data_dir / "tls" / "ca.pem"

    @property
    def password_path(self) -> Path:
        return self.data_dir / "tls" / "sasl-password"

    @property
    def sasl_password(self) -> str:
        """The password of ``sasl_username``, made when a secure broker's storage was formatted."""
        if self._unsaved_password is not None:
            return self._unsaved_password
        try:
            return self.password_path.read_text().strip()
        except FileNotFoundError:
            raise ServiceError(
                f"{self.data_dir} has no SASL user: start it with secure=True (--sasl-ssl)"
            ) from None

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
        ports = self._choose_ports(_previous_ports(self.config_path))
        libs = self.ensure_jars()
        formatted = (self.data_dir / "logs" / "meta.properties").exists()
        settings = self._settings(ports)
        if self.secure:
            settings |= self._secure_settings(formatted)
        # A secure broker's holds its user's password and its TLS key.
        write_private(self.config_path, _properties(settings))
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2)
        runtime = [java, "-cp", f"{libs}/*", f"-Dlog4j2.configurationFile={log4j}"]
        if not formatted:
            self._format(runtime)
            self._save_password()
        # A JVM crash report goes to the working directory unless told otherwise.
        crash = f"-XX:ErrorFile={self.data_dir}/hs_err_pid%p.log"
        broker = [*runtime, f"-Xmx{self.heap}", crash, "-Djava.awt.headless=true"]
        argv = [*broker, "kafka.Kafka", str(self.config_path)]
        return self._run(argv, f"{HOST}:{ports['client']}", ports, self.version, timeout)

    def _choose_ports(self, previous: Mapping[str, int]) -> dict[str, int]:
        """The ports of this run, by role: those of the last run where still free."""
        ports = {"client": choose_port(self.port, previous.get("client"))}
        # The controller keeps its port when it can: the quorum's voter record names it.
        ports["controller"] = choose_port(None, previous.get("controller"), avoid={*ports.values()})
        return self._optional_ports(ports, previous)

    def _optional_ports(self, ports: dict[str, int], previous: Mapping[str, int]) -> dict[str, int]:
        """``ports`` plus those of the relay and secure listeners, if asked for."""
        if self.relay_port is not None:
            avoid = {*ports.values(), self.relay_port}
            ports["relay"] = choose_port(None, previous.get("relay"), avoid=avoid)
            ports["relay_advertised"] = self.relay_port
        if self.secure:
            avoid = {*ports.values()}
            ports["secure"] = choose_port(None, previous.get("secure"), avoid=avoid)
        return ports

    def _settings(self, ports: Mapping[str, int]) -> dict[str, str]:
        """The broker's config: one node, the quorum's only voter."""
        return {
            **self._node_settings(ports, node_id=1),
            "controller.quorum.bootstrap.servers": f"{HOST}:{ports['controller']}",
            # One node: every internal topic gets one replica, or it could never be created.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
        }

    def _node_settings(self, ports: Mapping[str, int], node_id: int) -> dict[str, str]:
        """What every node's config holds: its roles, id, listeners and log dir."""
        listeners = [(role, *_LISTENERS[role]) for role in _LISTENERS if role in ports]
        advertised_port = {**ports, "relay": ports.get("relay_advertised")}
        return {
            "process.roles": "broker,controller",
            "node.id": str(node_id),
            "listeners": ",".join(f"{name}://{HOST}:{ports[role]}" for role, name, _ in listeners),
            "advertised.listeners": ",".join(
                f"{name}://{HOST}:{advertised_port[role]}"
                for role, name, _ in listeners
                if role != "controller"
            ),
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": ",".join(
                f"{name}:{protocol}" for _, name, protocol in listeners
            ),
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "1",
            # No other member will join a new group: do not wait 3 s for one.
            "group.initial.rebalance.delay.ms": "0",
        }

    def _secure_settings(self, formatted: bool) -> dict[str, str]:
        """The SASL_SSL listener's certificate and users; the password is made with the storage.

        SCRAM users live in the cluster metadata, written when the storage is formatted;
        the password file, only once they are (`_save_password`): a first secure start cut
        short in its format left the file, and a plain start then formatted the storage
        without users the file promised.
        """
        if not self.password_path.exists():
            if formatted:
                raise ServiceError(
                    f"{self.data_dir} was formatted without SASL users; give a secure broker"
                    " a new data dir"
                )
            self._unsaved_password = secrets.token_urlsafe(18)
        tls = ensure_tls(self.data_dir / "tls")
        prefix = "listener.name.sasl_ssl."
        user = f'user_{self.sasl_username}="{self.sasl_password}"'
        return {
            "sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
            prefix + "plain.sasl.jaas.config": f"{_PLAIN_MODULE} required {user};",
            prefix + "scram-sha-256.sasl.jaas.config": f"{_SCRAM_MODULE} required;",
            prefix + "scram-sha-512.sasl.jaas.config": f"{_SCRAM_MODULE} required;",
            # PEM inline: a PEM key file would need a key password; inline, it may be clear.
            prefix + "ssl.keystore.type": "PEM",
            prefix + "ssl.keystore.certificate.chain": tls.broker_chain.read_text(),
            prefix + "ssl.keystore.key": tls.broker_key.read_text(),
        }

    def _format_options(self) -> list[str]:
        """``kafka-storage format``'s arguments: a new cluster id, this node the only voter."""
        return ["-t", _cluster_id(), "-c", str(self.config_path), "--standalone"]

    def _scram_options(self) -> list[str]:
        if not self.secure:
            return []
        user = f"[name={self.sasl_username},password={self.sasl_password}]"
        return [
            option
            for mechanism in SASL_MECHANISMS
            if mechanism.startswith("SCRAM")
            for option in ("--add-scram", f"{mechanism}={user}")
        ]

    def _reuse(self, state: ServiceState, timeout: float) -> str:
        if self.relay_port is not None and state.ports.get("relay_advertised") != self.relay_port:
            raise ServiceError(
                f"Kafka from {self.data_dir} already runs without a relay listener at"
                f" {self.relay_port} (pid {state.pid}); stop it first"
            )
        if self.secure and "secure" not in state.ports:
            raise ServiceError(
                f"Kafka from {self.data_dir} already runs without a SASL_SSL listener"
                f" (pid {state.pid}); stop it first"
            )
        return super()._reuse(state, timeout)

    def _running_ports(self) -> Mapping[str, int]:
        state = read_state(self.state_path)
        if state is None or not pid_alive(state.pid, str(self.config_path)):
            return {}
        return state.ports

    def _save_password(self) -> None:
        password, self._unsaved_password = self._unsaved_password, None
        if password is None:
            return
        self.password_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")

    def _format(self, runtime: Sequence[str]) -> None:
        """Give the new log dir its cluster id, quorum and SASL users."""
        command = [
            *runtime, "kafka.tools.StorageTool", "format",
            *self._format_options(), *self._scram_options(),
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


def _previous_ports(config: Path) -> dict[str, int]:
    """The ports of the last run by role (``client``, ``controller``...), from its config."""
    try:
        lines = config.read_text().splitlines()
    except FileNotFoundError:
        return {}
    listeners = next(
        (line[len("listeners=") :] for line in lines if line.startswith("listeners=")), ""
    )
    found = dict(re.findall(r"(\w+)://[^,]*:(\d+)", listeners))
    return {role: int(found[name]) for role, (name, _) in _LISTENERS.items() if name in found}


def _properties(settings: Mapping[str, str]) -> str:
    """A Java properties file; values may span lines (PEM) or hold backslashes (paths)."""
    escaped = {
        key: value.replace("\\", "\\\\").replace("\n", "\\n") for key, value in settings.items()
    }
    return "".join(f"{key}={value}\n" for key, value in escaped.items())


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
